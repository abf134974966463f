"""Model information, token-protected reload, health, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import StateDep
from ..model_store import ModelStore
from ..schemas import ErrorResponse, LastErrorOut, ModelInfo, ReloadResult

router = APIRouter()
_bearer = HTTPBearer(auto_error=False, description="SERVING_RELOAD_TOKEN")


def model_info(store: ModelStore) -> ModelInfo:
    model, source = store.current, store.source
    error = store.last_error
    return ModelInfo(
        loaded=model is not None,
        name=model.name if model else (source.name or store.settings.model_name),
        alias=source.ref if source.kind in ("alias", "stage") else None,
        source_uri=source.uri,
        version=model.version if model else None,
        run_id=model.run_id if model else None,
        loaded_uri=model.loaded_uri if model else None,
        loaded_at=model.loaded_at if model else None,
        last_swap_at=store.last_swap_at,
        swaps=store.swaps,
        last_check_at=store.last_check_at,
        last_check_outcome=store.last_check_outcome,
        last_error=LastErrorOut(kind=error.kind, message=error.message, at=error.at, version=error.version)
        if error
        else None,
        feature_names=list(model.feature_names) if model and model.feature_names else None,
        n_features=model.n_features if model else None,
        fast_path=model.fast_path if model else None,
        poll_interval_seconds=store.settings.poll_interval_seconds if store.polls else None,
    )


@router.get("/", tags=["info"])
async def root(state: StateDep) -> dict[str, Any]:
    store = state.store
    """What this server is and what it serves."""
    model = store.current
    return {
        "service": "mlops-lab model server",
        "model": store.source.uri,
        "version": model.version if model else None,
        "docs": "/docs",
    }


@router.get("/model", response_model=ModelInfo, tags=["info"])
async def get_model_info(state: StateDep) -> ModelInfo:
    """Name, alias, version, run id, load and swap times, and the last error of the served model."""
    return model_info(state.store)


@router.get("/model-info", response_model=ModelInfo, tags=["info"], deprecated=True)
async def get_model_info_seed(state: StateDep) -> ModelInfo:
    """The seed's name for GET /model."""
    return model_info(state.store)


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    responses={503: {"model": ErrorResponse, "description": "No model loaded yet"}},
)
async def readyz(state: StateDep) -> dict[str, Any]:
    store = state.store
    """Readiness: a model is loaded (stays true while a newer version fails or the registry is down)."""
    if store.current is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no model loaded yet")
    return {"status": "ready", "version": store.current.version}


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def require_reload_token(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing token: send 'Authorization: Bearer <SERVING_RELOAD_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = state.settings.reload_token.get_secret_value().encode()
    if not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="wrong reload token")


@router.post(
    "/reload",
    response_model=ReloadResult,
    tags=["info"],
    dependencies=[Depends(require_reload_token)],
    responses={
        202: {"model": ReloadResult, "description": "The check is still running; poll GET /model"},
        401: {"model": ErrorResponse, "description": "No token"},
        403: {"model": ErrorResponse, "description": "Wrong token"},
    },
)
async def reload(state: StateDep) -> Any:
    store, settings = state.store, state.settings
    """Check the registry now (instead of at the next poll) and swap if the alias moved."""
    check = store.trigger_check("reload")
    done, _ = await asyncio.wait({check}, timeout=settings.reload_wait_seconds)
    if not done:
        current = store.current
        pending = ReloadResult(outcome="pending", serving_version=current.version if current else None)
        return JSONResponse(pending.model_dump(), status_code=status.HTTP_202_ACCEPTED)
    result = check.result()
    return ReloadResult(
        outcome=result.outcome,
        serving_version=result.serving_version,
        target_version=result.target_version,
        error=result.error,
    )
