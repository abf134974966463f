"""Typed dependencies: routes receive the settings, the store, the batcher and the current model."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, HTTPException, Request, status

from .batcher import MicroBatcher
from .config import Settings
from .metrics import ServingMetrics
from .model_store import LoadedModel, ModelStore


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_store(request: Request) -> ModelStore:
    return cast(ModelStore, request.app.state.store)


def get_batcher(request: Request) -> MicroBatcher:
    return cast(MicroBatcher, request.app.state.batcher)


def get_metrics(request: Request) -> ServingMetrics:
    return cast(ServingMetrics, request.app.state.metrics)


def get_model(store: Annotated[ModelStore, Depends(get_store)]) -> LoadedModel:
    """The model this request will use from start to end (taken once: swaps do not affect it)."""
    model = store.current
    if model is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="no model is loaded yet; see GET /model"
        )
    return model


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
