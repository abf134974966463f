"""Serving fixtures: a registered iris champion, apps built on it, a real uvicorn process."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.app.config import Settings
from serving.app.main import create_app
from tests.support.mlflow_server import MlflowServer, RegisteredIris, register_iris_model
from tests.support.serving_app import TOKEN, UvicornServer


def _settings(model_name: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_name": model_name,
        "reload_token": TOKEN,
        "poll_interval_seconds": 3600,
        "max_batch_rows": 50,
    }
    values.update(overrides)
    return Settings(**values)


def _pin_mlflow_http_env(patch: pytest.MonkeyPatch) -> None:
    """The app sets MLflow client limits with os.environ.setdefault when it starts; setting them
    here first (restored afterwards) keeps that from leaking into other suites' tests."""
    patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    patch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


@pytest.fixture(autouse=True)
def _mlflow_http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    _pin_mlflow_http_env(monkeypatch)


@pytest.fixture
def champion(mlflow_tracking_uri: str, unique_model_name: str) -> RegisteredIris:
    """Version 1 of a registered model of this test alone, alias champion (tests that move it)."""
    return register_iris_model(mlflow_tracking_uri, unique_model_name, random_state=1)


@pytest.fixture
def make_app(champion: RegisteredIris) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        return create_app(_settings(champion.name, **overrides))

    return make


@pytest.fixture(scope="module")
def module_champion(mlflow_server: MlflowServer, request: pytest.FixtureRequest) -> Iterator[RegisteredIris]:
    """Version 1 of a registered model shared by a module's read-only tests, alias champion."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        name = f"{request.module.__name__.rpartition('.')[2]}_{uuid.uuid4().hex[:8]}"
        yield register_iris_model(mlflow_server.url, name, random_state=1)


@pytest.fixture(scope="module")
def client(module_champion: RegisteredIris, mlflow_server: MlflowServer) -> Iterator[TestClient]:
    """A started app (lifespan run) serving the module's champion; do not move its alias."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        _pin_mlflow_http_env(patch)
        with TestClient(create_app(_settings(module_champion.name))) as test_client:
            yield test_client


@pytest.fixture
def uvicorn_server(
    champion: RegisteredIris, mlflow_tracking_uri: str, tmp_path: Path
) -> Iterator[Callable[..., UvicornServer]]:
    started: list[UvicornServer] = []

    def start(**env: str) -> UvicornServer:
        server = UvicornServer(
            {
                "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
                "SERVING_MODEL_NAME": champion.name,
                "SERVING_RELOAD_TOKEN": TOKEN,
                **env,
            },
            tmp_path / f"uvicorn-{len(started)}.log",
        )
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
