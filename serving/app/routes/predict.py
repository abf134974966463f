"""POST /predict: one row or a batch, as feature lists or named columns, optionally with probabilities."""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

from ..deps import ServingState, get_model
from ..model_store import FloatRows, LoadedModel
from ..schemas import ColumnsRequest, ErrorResponse, FeaturesRequest, PredictRequest, PredictResponse

router = APIRouter(tags=["prediction"])
# The body is parsed by pydantic-core straight from bytes, and the route has no FastAPI body or
# dependency parameters: at concurrency 64 a profile showed FastAPI's per-request dependency
# solving (cache keys, scope and security-scheme checks) costing more than the model call.
# The OpenAPI schema still shows PredictRequest (`openapi_extra` here, components in main.py).
PREDICT_REQUEST = TypeAdapter[FeaturesRequest | ColumnsRequest](PredictRequest)
PREDICT_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
}

_UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT
VERSION_HEADER = "X-Model-Version"
# The 200 response of the prediction routes documents the header.
VERSION_HEADER_RESPONSE = {
    "headers": {
        VERSION_HEADER: {"description": "Registry version that made the predictions", "schema": {"type": "string"}}
    }
}


class InputError(HTTPException):
    def __init__(self, message: str, status_code: int = _UNPROCESSABLE) -> None:
        super().__init__(status_code=status_code, detail=message)


def check_row_count(count: int, limit: int) -> None:
    if count == 0:
        raise InputError("empty input: send at least one row")
    if count > limit:
        raise InputError(
            f"batch of {count} rows is over the limit of {limit} rows per request",
            status.HTTP_413_CONTENT_TOO_LARGE,
        )


def rows_from_request(body: FeaturesRequest | ColumnsRequest, model: LoadedModel, max_rows: int) -> FloatRows:
    """The request as a (rows, features) float64 array in signature order, or a 4xx naming the problem."""
    expected = model.describe_features()
    if isinstance(body, FeaturesRequest):
        features: Any = body.features
        rows: list[list[float]] = features if features and isinstance(features[0], list) else [features]
        if features == []:
            rows = []
        check_row_count(len(rows), max_rows)
        for index, row in enumerate(rows):
            if len(row) != model.n_features:
                where = "features" if len(rows) == 1 and rows[0] is features else f"features[{index}]"
                raise InputError(f"{where} has {len(row)} values; model {model.name} expects {expected}")
        return np.asarray(rows, dtype=np.float64)
    columns = body.columns
    if not columns:
        raise InputError("empty input: 'columns' has no columns")
    if model.feature_names is None:
        raise InputError(f"model {model.name} has no column names in its signature; send 'features' ({expected})")
    missing = [name for name in model.feature_names if name not in columns]
    unknown = [name for name in columns if name not in model.feature_names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if unknown:
            parts.append(f"unknown columns {unknown}")
        raise InputError(f"{'; '.join(parts)}; model {model.name} expects {expected}")
    as_lists = {name: value if isinstance(value, list) else [value] for name, value in columns.items()}
    lengths = {len(values) for values in as_lists.values()}
    if len(lengths) != 1:
        raise InputError(f"columns have different lengths {sorted(lengths)}; every column needs one value per row")
    check_row_count(lengths.pop(), max_rows)
    return np.asarray([as_lists[name] for name in model.feature_names], dtype=np.float64).T.copy()


def json_response(content: dict[str, Any], version: str | None, status_code: int = 200) -> Response:
    """JSON bytes straight to the client (no response-model validation pass), with the version header."""
    body = json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
    headers = {VERSION_HEADER: version} if version is not None else None
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


async def parse_body(request: Request) -> FeaturesRequest | ColumnsRequest:
    """The body as a PredictRequest, or the same 422 FastAPI gives for a body parameter."""
    try:
        return PREDICT_REQUEST.validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        for error in errors:
            error["loc"] = ("body", *error["loc"])
        raise RequestValidationError(errors) from None


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
    responses={
        200: VERSION_HEADER_RESPONSE,
        400: {"model": ErrorResponse, "description": "A body that cannot be decoded"},
        413: {"model": ErrorResponse, "description": "Over SERVING_MAX_BATCH_ROWS rows or SERVING_MAX_BODY_BYTES"},
        422: {"model": ErrorResponse, "description": "Input that does not match the model signature"},
        503: {"model": ErrorResponse, "description": "No model loaded yet"},
    },
)  # fmt: skip
async def predict(request: Request) -> Response:
    """Predict with the served model; the response (body and `X-Model-Version` header) names the
    version that made the predictions. `probabilities` and `labels` add class probabilities and
    class names for classifiers."""
    state = cast(ServingState, request.app.state.serving)
    model = await get_model(request)
    body = await parse_body(request)
    rows = rows_from_request(body, model, state.settings.max_batch_rows)
    if body.probabilities and model.predict_proba_rows is None:
        raise InputError(f"model {model.name} version {model.version} has no class probabilities")
    try:
        predictions, probabilities = await state.batcher.predict(model, rows, with_proba=body.probabilities)
    except (ValueError, TypeError) as exc:
        # Well-formed numbers the model itself refuses (e.g. beyond float32 for tree models).
        raise InputError(f"the model rejected the input: {exc}") from exc
    values = predictions.tolist()
    content: dict[str, Any] = {"predictions": values, "model_name": model.name, "model_version": model.version}
    if probabilities is not None:
        content["classes"] = list(model.classes or ())
        content["probabilities"] = probabilities.tolist()
    if body.labels:
        content["labels"] = class_labels(model, values)
    return json_response(content, model.version)


def class_labels(model: LoadedModel, predictions: list[Any]) -> list[str]:
    if model.classes is None or model.class_labels is None:
        return [str(value) for value in predictions]
    names = dict(zip(model.classes, model.class_labels, strict=True))
    return [names.get(value, str(value)) for value in predictions]


# Request bodies parsed by routes themselves, added to the OpenAPI components by main.py.
REQUEST_BODIES: dict[str, TypeAdapter[Any]] = {"PredictRequest": PREDICT_REQUEST}
