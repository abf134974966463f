"""POST /predict: one row or a batch, as feature lists or named columns."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, status

from ..deps import ModelDep, StateDep
from ..model_store import FloatRows, LoadedModel
from ..schemas import ErrorResponse, PredictRequest, PredictResponse

router = APIRouter(tags=["prediction"])

_UNPROCESSABLE = status.HTTP_422_UNPROCESSABLE_CONTENT


class InputError(HTTPException):
    def __init__(self, message: str, status_code: int = _UNPROCESSABLE) -> None:
        super().__init__(status_code=status_code, detail=message)


def _check_rows(count: int, limit: int) -> None:
    if count == 0:
        raise InputError("empty input: send at least one row")
    if count > limit:
        raise InputError(
            f"batch of {count} rows is over the limit of {limit} rows per request",
            status.HTTP_413_CONTENT_TOO_LARGE,
        )


def rows_from_request(body: PredictRequest, model: LoadedModel, max_rows: int) -> FloatRows:
    """The request as a (rows, features) float64 array in signature order, or a 4xx naming the problem."""
    if (body.features is None) == (body.columns is None):
        raise InputError("send exactly one of 'features' (a row or a list of rows) and 'columns' (named columns)")
    expected = model.describe_features()
    if body.features is not None:
        features: Any = body.features
        rows: list[list[float]] = features if features and isinstance(features[0], list) else [features]
        if features == []:
            rows = []
        _check_rows(len(rows), max_rows)
        for index, row in enumerate(rows):
            if len(row) != model.n_features:
                where = "features" if len(rows) == 1 and rows[0] is features else f"features[{index}]"
                raise InputError(f"{where} has {len(row)} values; model {model.name} expects {expected}")
        return np.asarray(rows, dtype=np.float64)
    columns = body.columns or {}
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
    _check_rows(lengths.pop(), max_rows)
    return np.asarray([as_lists[name] for name in model.feature_names], dtype=np.float64).T.copy()


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses={
        400: {"model": ErrorResponse, "description": "A body that cannot be decoded"},
        413: {"model": ErrorResponse, "description": "More rows than SERVING_MAX_BATCH_ROWS"},
        422: {"model": ErrorResponse, "description": "Input that does not match the model signature"},
        503: {"model": ErrorResponse, "description": "No model loaded yet"},
    },
)
async def predict(body: PredictRequest, model: ModelDep, state: StateDep) -> PredictResponse:
    """Predict with the served model; the response names the version that made the predictions."""
    rows = rows_from_request(body, model, state.settings.max_batch_rows)
    try:
        result = await state.batcher.predict(model, rows)
    except (ValueError, TypeError) as exc:
        # Well-formed numbers the model itself refuses (e.g. beyond float32 for tree models).
        raise InputError(f"the model rejected the input: {exc}") from exc
    return PredictResponse(predictions=result.tolist(), model_name=model.name, model_version=model.version)
