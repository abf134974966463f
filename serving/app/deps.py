"""Typed dependencies: routes receive the app's state and the current model.

All are `async def` and take the Request directly: FastAPI runs plain `def` dependencies in a
thread pool (a thread hop per dependency per request), and every extra level of dependencies
costs a solve per request; both showed in profiles as more than the prediction itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request, status

from .batcher import MicroBatcher
from .cluster import Cluster
from .config import Settings
from .metrics import ServingMetrics
from .model_store import LoadedModel, ModelStore


@dataclass(frozen=True)
class ServingState:
    """What a running app holds (set in create_app and the lifespan)."""

    settings: Settings
    metrics: ServingMetrics
    store: ModelStore
    batcher: MicroBatcher
    cluster: Cluster


async def get_state(request: Request) -> ServingState:
    return cast(ServingState, request.app.state.serving)


async def get_model(request: Request) -> LoadedModel:
    """The model this request uses from start to end (taken once: a swap does not affect it)."""
    model = cast(ServingState, request.app.state.serving).store.current
    if model is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no model is loaded yet; see GET /model")
    return model


StateDep = Annotated[ServingState, Depends(get_state)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
