"""Request and response bodies of the API (they are also its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AllowInfNan, BaseModel, ConfigDict, Discriminator, Field, Strict, Tag

# JSON numbers only (no numeric strings, no booleans), finite (Python's parser accepts NaN).
Number = Annotated[float, Strict(), AllowInfNan(False)]
Row = list[Number]


def _row_or_batch(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "batch"
    return "row"


def _scalar_or_list(value: Any) -> str:
    return "values" if isinstance(value, list) else "value"


Features = Annotated[
    Annotated[Row, Tag("row")] | Annotated[list[Row], Tag("batch")],
    Discriminator(_row_or_batch),
]
ColumnValues = Annotated[
    Annotated[Number, Tag("value")] | Annotated[list[Number], Tag("values")],
    Discriminator(_scalar_or_list),
]


_FEATURES_DESCRIPTION = "One row (a list of numbers, in signature order) or a batch (a list of such lists)"
_COLUMNS_DESCRIPTION = "Named columns matching the model signature: name -> value (one row) or list of values"
_ONE_OF_MESSAGE = "send exactly one of 'features' (a row or a list of rows) and 'columns' (named columns)"


class _PredictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probabilities: Annotated[bool, Strict()] = Field(
        default=False,
        description="Also return each row's class probabilities (`classes` gives their order); classifiers only",
    )
    labels: Annotated[bool, Strict()] = Field(
        default=False,
        description="Also return each prediction's class name (the model's `class_names` metadata, else the class)",
    )


class FeaturesRequest(_PredictOptions):
    """Rows as lists of numbers in signature order."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"features": [5.1, 3.5, 1.4, 0.2]},
                {"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], "probabilities": True, "labels": True},
            ]
        },
    )

    features: Features = Field(description=_FEATURES_DESCRIPTION)


class ColumnsRequest(_PredictOptions):
    """Named columns, in any order."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "columns": {
                        "sepal length (cm)": [5.1],
                        "sepal width (cm)": [3.5],
                        "petal length (cm)": [1.4],
                        "petal width (cm)": [0.2],
                    }
                },
            ]
        },
    )

    columns: dict[str, ColumnValues] = Field(description=_COLUMNS_DESCRIPTION)


def _features_or_columns(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    has_features, has_columns = "features" in value, "columns" in value
    if has_features and has_columns:
        return None
    if not has_features and not has_columns:
        # Other keys only (a typo such as "feature"): FeaturesRequest names them as extra inputs.
        return "features" if value else None
    return "features" if has_features else "columns"


# Exactly one of `features` and `columns` (the OpenAPI schema says so with oneOf).
PredictRequest = Annotated[
    Annotated[FeaturesRequest, Tag("features")] | Annotated[ColumnsRequest, Tag("columns")],
    Discriminator(_features_or_columns, custom_error_type="features_or_columns", custom_error_message=_ONE_OF_MESSAGE),
]


class PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per input row, in input order")
    model_name: str
    model_version: str | None = Field(description="Registry version that made these predictions")
    classes: list[Any] | None = Field(
        default=None, description="With `probabilities`: the classes, in the order of each probability list"
    )
    probabilities: list[list[float]] | None = Field(
        default=None, description="With `probabilities`: one list per row, aligned with `classes`"
    )
    labels: list[str] | None = Field(default=None, description="With `labels`: the class name of each prediction")


class ValidationErrorItem(BaseModel):
    loc: str = Field(description="Where: body, body.features[1], query.scope...")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="What is wrong, in one sentence")
    errors: list[ValidationErrorItem] | None = Field(default=None, description="Each validation error (422)")


class LastErrorOut(BaseModel):
    kind: Literal["registry", "load"]
    message: str
    at: datetime
    version: str | None


class ModelInfo(BaseModel):
    loaded: bool
    name: str
    alias: str | None = Field(description="The alias (or stage) watched; null for a fixed version or URI")
    source_uri: str
    version: str | None
    run_id: str | None
    loaded_uri: str | None
    loaded_at: datetime | None
    last_swap_at: datetime | None
    swaps: int
    last_check_at: datetime | None
    last_check_outcome: str | None
    last_error: LastErrorOut | None
    feature_names: list[str] | None
    n_features: int | None
    fast_path: bool | None
    predictor: Literal["forest", "sklearn", "pyfunc"] | None = Field(
        description="What computes predictions: the forest's trees directly, the raw estimator, or pyfunc"
    )
    classes: list[Any] | None = Field(description="Classes whose probabilities can be requested; null if none")
    class_labels: list[str] | None
    poll_interval_seconds: float | None
    replica: str = Field(description="This replica (host name) and worker (process id): HOST/PID")


class ReloadResult(BaseModel):
    outcome: Literal["swapped", "unchanged", "load_failed", "registry_error", "pending"]
    serving_version: str | None
    target_version: str | None = None
    error: str | None = None


class WorkerStateOut(BaseModel):
    replica: str = Field(description="Host name (the pod name in Kubernetes)")
    pid: int = Field(description="Worker process id")
    version: str | None
    loaded: bool
    last_check_at: str | None
    last_check_outcome: str | None
    updated_at: float = Field(description="Unix time this state was written")


class PeerStatusOut(BaseModel):
    url: str
    reachable: bool
    error: str | None = None


class ReplicasView(BaseModel):
    agreed: bool = Field(description="Every worker answered, has a model loaded, and all serve one version")
    version: str | None = Field(description="The version they all serve when they agree, else null")
    versions: dict[str, int] = Field(description="Version ('none': no model) -> number of workers serving it")
    workers: list[WorkerStateOut]
    peers: list[PeerStatusOut] = Field(description="The peer replicas asked (empty with scope=local)")


class WebhookDelivery(BaseModel):
    """What MLflow posts (signed with the X-MLflow-* headers)."""

    entity: str = Field(examples=["model_version_alias"])
    action: str = Field(examples=["created"])
    timestamp: str | None = None
    data: dict[str, Any] = Field(examples=[{"name": "iris_classifier", "alias": "champion", "version": "3"}])


class WebhookResult(BaseModel):
    outcome: Literal["accepted", "ignored"]
    event: str
    reason: str | None = None
    target_version: str | None = None
    serving_version: str | None = None


class _InvocationsBase(BaseModel):
    model_config = ConfigDict(extra="allow")

    # Any JSON value, as MLflow's scoring server takes it: a model without a params schema
    # ignores them (with a warning), one with a schema validates them (400 when they do not fit).
    params: Any = Field(
        default=None,
        description="Inference parameters: validated against the model's params schema; ignored without one",
    )


class DataframeSplit(BaseModel):
    columns: list[str] | None = None
    data: list[Any]
    index: list[Any] | None = None


class DataframeSplitInput(_InvocationsBase):
    """pandas' split orientation: `{"columns": [...], "data": [[...], ...]}`."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "dataframe_split": {
                        "columns": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"],
                        "data": [[5.1, 3.5, 1.4, 0.2]],
                    }
                }
            ]
        },
    )

    dataframe_split: DataframeSplit


class DataframeRecordsInput(_InvocationsBase):
    """pandas' records orientation: one object per row."""

    dataframe_records: list[dict[str, Any]]


class InstancesInput(_InvocationsBase):
    """TF-serving style: a list of rows (or records), or named columns."""

    instances: list[Any] | dict[str, Any]


class InputsInput(_InvocationsBase):
    """TF-serving style columnar or tensor input."""

    inputs: list[Any] | dict[str, Any]


def _invocations_format(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    found = [key for key in ("dataframe_split", "dataframe_records", "instances", "inputs") if key in value]
    return found[0] if len(found) == 1 else None


# One of MLflow's four JSON input formats (MLflow answers 400 for none or several).
InvocationsRequest = Annotated[
    Annotated[DataframeSplitInput, Tag("dataframe_split")]
    | Annotated[DataframeRecordsInput, Tag("dataframe_records")]
    | Annotated[InstancesInput, Tag("instances")]
    | Annotated[InputsInput, Tag("inputs")],
    Discriminator(_invocations_format),
]


class InvocationsResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per input row, as `mlflow models serve` encodes them")


class MlflowError(BaseModel):
    """MLflow's error body."""

    model_config = ConfigDict(extra="allow")

    error_code: str = Field(examples=["BAD_REQUEST"])
    message: str
    stack_trace: str | None = None
    error_class: str | None = None
