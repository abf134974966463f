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


class PredictRequest(BaseModel):
    """Exactly one of `features` and `columns`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"features": [5.1, 3.5, 1.4, 0.2]},
                {"features": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
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

    features: Features | None = Field(
        default=None,
        description="One row (a list of numbers, in signature order) or a batch (a list of such lists)",
    )
    columns: dict[str, ColumnValues] | None = Field(
        default=None,
        description="Named columns matching the model signature: name -> value (one row) or list of values",
    )


class PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per input row, in input order")
    model_name: str
    model_version: str | None = Field(description="Registry version that made these predictions")


class ErrorResponse(BaseModel):
    detail: str
    errors: list[dict[str, Any]] | None = None


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
    poll_interval_seconds: float | None


class ReloadResult(BaseModel):
    outcome: Literal["swapped", "unchanged", "load_failed", "registry_error", "pending"]
    serving_version: str | None
    target_version: str | None = None
    error: str | None = None
