"""Model information, the replicas' agreement, token-protected reload, MLflow webhooks, health,
readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import webhooks
from ..cluster import REPLICA
from ..deps import StateDep
from ..model_store import ModelStore
from ..schemas import (
    ErrorResponse,
    LastErrorOut,
    ModelInfo,
    ReloadResult,
    ReplicasView,
    WebhookResult,
)

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
        predictor=model.predictor if model else None,
        classes=list(model.classes) if model and model.classes is not None else None,
        class_labels=list(model.class_labels) if model and model.class_labels is not None else None,
        replica=f"{REPLICA}/{os.getpid()}",
        poll_interval_seconds=store.settings.poll_interval_seconds if store.polls else None,
    )


@router.get("/", tags=["info"])
async def root(state: StateDep) -> dict[str, Any]:
    """What this server is and what it serves."""
    store = state.store
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
    """GET /model under its former name (deprecated)."""
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
    """Readiness: a model is loaded (stays true while a newer version fails or the registry is down)."""
    store = state.store
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
async def reload(
    state: StateDep,
    propagate: Annotated[
        bool, Query(description="Also tell the peer replicas (false: this call comes from a peer)")
    ] = True,
) -> Any:
    """Check the registry now (instead of at the next poll) and swap if the alias moved; the
    other workers of this replica and (unless `propagate=false`) the peer replicas check too."""
    store, settings = state.store, state.settings
    check = store.trigger_check("reload" if propagate else "peer")
    state.cluster.announce("reload", propagate)
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


@router.get("/replicas", response_model=ReplicasView, tags=["info"])
async def replicas(
    state: StateDep,
    scope: Annotated[
        Literal["all", "local"], Query(description="all: every peer replica too; local: this replica's workers")
    ] = "all",
) -> ReplicasView:
    """Which version every worker of every replica serves, and whether they all agree (`agreed`:
    every worker answered, has a model, and all serve `version`)."""
    view = await state.cluster.view(scope)
    return ReplicasView.model_validate(asdict(view))


@router.post(
    "/webhooks/mlflow",
    response_model=WebhookResult,
    status_code=status.HTTP_202_ACCEPTED,
    tags=["info"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookDelivery"}}},
        }
    },
    responses={
        200: {"model": WebhookResult, "description": "Signed, but not a move of the served alias: ignored"},
        400: {"model": ErrorResponse, "description": "Signed, but not an MLflow delivery"},
        401: {"model": ErrorResponse, "description": "Unsigned delivery (missing or malformed headers)"},
        403: {"model": ErrorResponse, "description": "Wrong signature, or a delivery older than the max age"},
        404: {"model": ErrorResponse, "description": "Webhooks are not enabled (no SERVING_WEBHOOK_SECRET)"},
    },
)
async def mlflow_webhook(
    request: Request,
    state: StateDep,
    x_mlflow_delivery_id: Annotated[str | None, Header()] = None,
    x_mlflow_timestamp: Annotated[str | None, Header()] = None,
    x_mlflow_signature: Annotated[str | None, Header()] = None,
) -> Any:
    """MLflow registry webhook (create it for `model_version_alias.created` with the secret of
    SERVING_WEBHOOK_SECRET): a signed move of the served alias starts a check on this worker, its
    siblings and every peer replica, and answers 202 at once; any other event answers 200
    `ignored`."""
    secret = state.settings.webhook_secret
    if secret is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="webhooks are not enabled: set SERVING_WEBHOOK_SECRET")
    body = await request.body()
    try:
        webhooks.verify(
            secret.get_secret_value(),
            body,
            x_mlflow_delivery_id,
            x_mlflow_timestamp,
            x_mlflow_signature,
            state.settings.webhook_max_age_seconds,
        )
        delivery = webhooks.parse(body)
    except webhooks.WebhookRefused as refused:
        state.metrics.webhooks.labels("refused").inc()
        raise HTTPException(refused.status_code, detail=refused.message) from None
    source = state.store.source
    alias = source.ref if source.kind == "alias" else None
    reason = webhooks.champion_moved(delivery, source.name, alias)
    current = state.store.current
    serving = current.version if current else None
    if reason is not None:
        state.metrics.webhooks.labels("ignored").inc()
        ignored = WebhookResult(outcome="ignored", event=delivery.event, reason=reason, serving_version=serving)
        return JSONResponse(ignored.model_dump(), status_code=status.HTTP_200_OK)
    state.metrics.webhooks.labels("accepted").inc()
    state.store.trigger_check("webhook")
    state.cluster.announce("webhook", propagate=True)
    return WebhookResult(
        outcome="accepted",
        event=delivery.event,
        target_version=str(delivery.data.get("version")),
        serving_version=serving,
    )
