"""POST /invocations: the scoring protocol of `mlflow models serve`, so MLflow clients only change the URL.

Same request formats (JSON `dataframe_split`, `dataframe_records`, `instances`, `inputs`, with
optional `params`; `text/csv`), same responses (`{"predictions": [...]}`) and the same errors
(`{"error_code", "message", ...}` with MLflow's HTTP status; 415 in plain text for a content type
it does not take), because the same MLflow functions parse the body, enforce the signature and
encode the predictions; tests/serving/test_invocations.py compares both servers on one model.
Only the model call differs: the enforced rows go through the micro-batcher and the checked fast
path like /predict. Differences: no model yet is a 503, more rows than SERVING_MAX_BATCH_ROWS a
413 (`mlflow models serve` has no limit), a body that is not UTF-8 a 400 (MLflow: 500), and
Parquet bodies need pyarrow, which the serving
image does not install (MLflow's own 400 "Failed to parse input" there).
"""

from __future__ import annotations

import io
import logging
import traceback
from typing import Any, cast

import numpy as np
from fastapi import APIRouter, Request, Response, status

from ..deps import ServingState, get_model
from ..model_store import FloatRows, LoadedModel
from ..schemas import ErrorResponse, InvocationsResponse, MlflowError
from .predict import VERSION_HEADER, VERSION_HEADER_RESPONSE, check_row_count

router = APIRouter(tags=["mlflow scoring protocol"])
log = logging.getLogger("serving.invocations")

_JSON = "application/json"
_CSV = "text/csv"
_REQUEST_BODY = {
    "required": True,
    "content": {
        _JSON: {"schema": {"$ref": "#/components/schemas/InvocationsRequest"}},
        _CSV: {"schema": {"type": "string"}, "example": "a,b,c,d\n5.1,3.5,1.4,0.2\n"},
    },
}  # fmt: skip


class _Refused(Exception):
    """A response MLflow's scoring server gives before any model call (415 and friends)."""

    def __init__(self, message: str, status_code: int = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE) -> None:
        super().__init__(message)
        self.response = Response(message, status_code=status_code, media_type="text/plain")


def _parse(body: bytes, content_type: str | None, model: LoadedModel) -> tuple[Any, dict[str, Any] | None]:
    """MLflow's own parsing of an /invocations body: (data, params)."""
    from mlflow.pyfunc import scoring_server as mlflow_scoring

    scoring_server: Any = mlflow_scoring  # MLflow's functions are untyped
    type_parts = [part.strip() for part in (content_type or "").split(";")]
    mime_type, parameters = type_parts[0], type_parts[1:]
    values = {key: value for pair in parameters for key, _, value in [pair.partition("=")]}
    if values.get("charset", "utf-8").lower() != "utf-8":
        raise _Refused("The scoring server only supports UTF-8")
    if unexpected := set(values).difference({"charset"}):
        info = scoring_server.SCORING_PROTOCOL_CHANGE_INFO
        raise _Refused(f"Unrecognized content type parameters: {', '.join(unexpected)}. {info}")
    input_schema = model.metadata.get_input_schema()
    if mime_type == _CSV:
        return scoring_server.parse_csv_input(io.StringIO(body.decode("utf-8")), schema=input_schema), None
    if mime_type == _JSON:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:  # MLflow's own server answers 500 here; bad input is a 4xx
            from mlflow.utils import proto_json_utils

            invalid: Any = proto_json_utils.MlflowInvalidInputException
            message = f"Ensure that input is a valid JSON formatted string. Error: '{exc!r}'"
            raise invalid(message) from None
        parsed = scoring_server._parse_json_data(body, model.metadata, input_schema)
        return parsed.data, parsed.params
    if mime_type == scoring_server.CONTENT_TYPE_PARQUET:  # needs pyarrow, which the image leaves out
        return scoring_server.parse_parquet_input(io.BytesIO(body)), None
    types = scoring_server.CONTENT_TYPES
    raise _Refused(f"This predictor only supports the following content types: Types: {types}. Got '{content_type}'.")


def _rows(data: Any, params: dict[str, Any] | None, model: LoadedModel) -> FloatRows:
    """The signature enforced as pyfunc's predict does, then the rows in signature order."""
    import pandas as pd
    from mlflow.pyfunc import _validate_prediction_input

    metadata = model.metadata
    flavor = metadata.flavors.get("python_function", {}).get("loader_module")
    enforced, _ = _validate_prediction_input(
        data, params, metadata.get_input_schema(), metadata.get_params_schema(), flavor
    )
    if isinstance(enforced, pd.DataFrame):
        columns = list(model.feature_names) if model.feature_names else list(enforced.columns)
        return np.asarray(enforced[columns].to_numpy(dtype=np.float64))
    return np.asarray(enforced, dtype=np.float64).reshape(len(enforced), -1)


def _unexpected_error() -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    return MlflowException(
        message=(
            "Encountered an unexpected error while evaluating the model. Verify"
            " that the serialized input Dataframe is compatible with the model for"
            " inference."
        ),
        error_code=BAD_REQUEST,
        stack_trace=traceback.format_exc(),
    )


@router.post(
    "/invocations",
    response_model=InvocationsResponse,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        200: VERSION_HEADER_RESPONSE,
        400: {"model": MlflowError, "description": "Input MLflow cannot parse or the model refuses (MLflow's format)"},
        413: {"model": ErrorResponse, "description": "More rows than SERVING_MAX_BATCH_ROWS"},
        415: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Unsupported content type"},
        503: {"model": ErrorResponse, "description": "No model loaded yet"},
    },
)  # fmt: skip
async def invocations(request: Request) -> Response:
    """Score like `mlflow models serve`: `dataframe_split`, `dataframe_records`, `instances` or
    `inputs` (JSON) or CSV in, `{"predictions": [...]}` out."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server as mlflow_scoring

    scoring_server: Any = mlflow_scoring
    state = cast(ServingState, request.app.state.serving)
    model = await get_model(request)
    body = await request.body()
    try:
        try:
            data, params = _parse(body, request.headers.get("content-type"), model)
        except _Refused as refused:
            return refused.response
        try:
            rows = _rows(data, params, model)
        except MlflowException as exc:
            exc.message = f"Failed to predict data '{data}'. \nError: {exc.message}"
            raise
        check_row_count(len(rows) or 1, state.settings.max_batch_rows)
        try:
            if len(rows) == 0:
                raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
            predictions, _ = await state.batcher.predict(model, rows)
        except MlflowException:
            raise
        except Exception:
            raise _unexpected_error() from None
    except MlflowException as exc:
        error: Any = exc
        return Response(error.serialize_as_json(), status_code=error.get_http_status_code(), media_type=_JSON)
    output = io.StringIO()
    scoring_server.predictions_to_json(predictions, output)
    headers = {VERSION_HEADER: model.version} if model.version is not None else None
    return Response(output.getvalue(), media_type=_JSON, headers=headers)
