"""Hot swap against a real MLflow registry: polling, /reload, broken versions, registry outages."""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Callable

import mlflow
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import infer_signature

from serving.app import heap
from tests.support.mlflow_server import RegisteredIris, free_port, register_iris_model, use_tracking_uri
from tests.support.serving_app import TOKEN, metric_value, wait_for

pytestmark = pytest.mark.mlflow

SEED = {"features": [5.1, 3.5, 1.4, 0.2]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class AlwaysFails(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("this version is broken on purpose")


def register_failing_version(tracking_uri: str, name: str) -> str:
    """A version that loads but fails its smoke prediction."""
    frame = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=["a", "b", "c", "d"])
    with use_tracking_uri(tracking_uri), mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=AlwaysFails(),
            signature=infer_signature(frame, [0]),
            registered_model_name=name,
            pip_requirements=["mlflow"],
        )
    return str(info.registered_model_version)


def register_unloadable_version(tracking_uri: str, name: str) -> str:
    """A version whose artifacts do not exist."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return str(client.create_model_version(name, source="mlflow-artifacts:/0/missing/artifacts/model").version)


def served_version(client: TestClient) -> str:
    response = client.post("/predict", json=SEED)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [0]
    return str(response.json()["model_version"])


def test_moving_the_alias_swaps_within_a_poll_interval(
    make_app: Callable[..., FastAPI], champion: RegisteredIris, mlflow_tracking_uri: str
) -> None:
    with TestClient(make_app(poll_interval_seconds=0.5)) as client:
        assert served_version(client) == "1"
        second = register_iris_model(mlflow_tracking_uri, champion.name, random_state=2)
        wait_for(lambda: served_version(client) == second.version, 30, "the poll to swap in version 2")
        info = client.get("/model").json()
        assert info["version"] == "2"
        assert info["run_id"] == second.run_id
        assert info["swaps"] == 2
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "serving_model_swaps_total") == 2
        assert metric_value(metrics, "serving_model_version") == 2
        assert f'serving_model_info{{name="{champion.name}",run_id="{second.run_id}",version="2"}} 1.0' in metrics
        assert 'version="1"' not in metrics.split("serving_model_info")[-1].split("\n# ")[0]


def test_after_a_swap_the_old_model_is_freed_and_the_heap_frozen(
    make_app: Callable[..., FastAPI], champion: RegisteredIris, mlflow_tracking_uri: str
) -> None:
    """serving/app/heap.py: the heap alive after a swap leaves the collector's walks (the latency
    tail), and freezing it never keeps a swapped-out model (or anything only it held) alive."""
    with TestClient(make_app()) as client:
        store = client.app.state.serving.store  # type: ignore[attr-defined]
        first = weakref.ref(store.current)
        wait_for(lambda: gc.get_freeze_count() > 0, heap.SETTLE_DELAY_SECONDS + 10, "the heap to be frozen")
        register_iris_model(mlflow_tracking_uri, champion.name, random_state=2)
        assert client.post("/reload", headers=AUTH).json()["outcome"] == "swapped"
        wait_for(lambda: first() is None, heap.SETTLE_DELAY_SECONDS + 10, "the old model to be collected")
        assert served_version(client) == "2"
        assert gc.get_freeze_count() > 0


def test_settling_frees_the_cycles_an_earlier_freeze_kept() -> None:
    """Frozen objects are skipped by every collection: a model that was alive at one freeze and is
    cyclic garbage by the next must go at that next one, or each swap would leak the old model."""

    class Node:
        pass

    node = Node()
    node.self = node  # type: ignore[attr-defined]
    alive = weakref.ref(node)
    try:
        heap.settle()
        del node
        gc.collect()
        assert alive() is not None, "a frozen cycle is not collected"
        heap.settle()
        assert alive() is None
    finally:
        gc.unfreeze()


def test_reload_needs_the_token_and_swaps_at_once(
    make_app: Callable[..., FastAPI], champion: RegisteredIris, mlflow_tracking_uri: str
) -> None:
    with TestClient(make_app()) as client:  # poll interval 1 h: only /reload can swap
        assert client.post("/reload").status_code == 401
        assert client.post("/reload", headers={"Authorization": "Bearer wrong"}).status_code == 403
        unchanged = client.post("/reload", headers=AUTH)
        assert unchanged.status_code == 200, unchanged.text
        assert unchanged.json()["outcome"] == "unchanged"

        second = register_iris_model(mlflow_tracking_uri, champion.name, random_state=2)
        assert served_version(client) == "1"
        swapped = client.post("/reload", headers=AUTH).json()
        assert swapped == {"outcome": "swapped", "serving_version": "2", "target_version": "2", "error": None}
        assert served_version(client) == second.version == "2"

        MlflowClient(mlflow_tracking_uri).set_registered_model_alias(champion.name, "champion", "1")
        assert client.post("/reload", headers=AUTH).json()["serving_version"] == "1"
        assert served_version(client) == "1"


@pytest.mark.parametrize("register_broken", [register_failing_version, register_unloadable_version])
def test_a_broken_version_leaves_the_old_one_serving(
    make_app: Callable[..., FastAPI],
    champion: RegisteredIris,
    mlflow_tracking_uri: str,
    register_broken: Callable[[str, str], str],
) -> None:
    with TestClient(make_app()) as client:
        broken = register_broken(mlflow_tracking_uri, champion.name)
        MlflowClient(mlflow_tracking_uri).set_registered_model_alias(champion.name, "champion", broken)
        result = client.post("/reload", headers=AUTH).json()
        assert result["outcome"] == "load_failed"
        assert result["serving_version"] == "1"
        assert result["target_version"] == broken
        assert served_version(client) == "1"
        assert client.get("/readyz").status_code == 200
        info = client.get("/model").json()
        assert info["version"] == "1"
        assert info["last_error"]["kind"] == "load"
        assert info["last_error"]["version"] == broken
        assert info["last_check_outcome"] == "load_failed"
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "serving_model_swap_failures_total") == 1
        assert metric_value(metrics, "serving_model_version") == 1
        # The next check tries again (and fails again): the failure is not cached.
        assert client.post("/reload", headers=AUTH).json()["outcome"] == "load_failed"
        assert metric_value(client.get("/metrics").text, "serving_model_swap_failures_total") == 2
        # The alias moves back: the error is history (metrics), no longer the current state.
        MlflowClient(mlflow_tracking_uri).set_registered_model_alias(champion.name, "champion", "1")
        assert client.post("/reload", headers=AUTH).json()["outcome"] == "unchanged"
        info = client.get("/model").json()
        assert info["last_error"] is None
        assert info["last_check_outcome"] == "unchanged"
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "serving_model_swap_failures_total") == 2
        assert 'serving_model_last_error_timestamp_seconds{kind="load"}' in metrics


def test_an_unreachable_registry_leaves_the_model_serving(
    make_app: Callable[..., FastAPI],
    champion: RegisteredIris,
    mlflow_tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with TestClient(make_app()) as client:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
        result = client.post("/reload", headers=AUTH).json()
        assert result["outcome"] == "registry_error"
        assert served_version(client) == "1"
        assert client.get("/readyz").status_code == 200
        assert client.get("/model").json()["last_error"]["kind"] == "registry"
        assert metric_value(client.get("/metrics").text, "serving_registry_errors_total") == 1
        # The registry comes back with a new champion: the next check swaps.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
        register_iris_model(mlflow_tracking_uri, champion.name, random_state=2)
        assert client.post("/reload", headers=AUTH).json()["outcome"] == "swapped"
        assert served_version(client) == "2"
        assert client.get("/model").json()["last_error"] is None  # the registry error was fixed
        assert metric_value(client.get("/metrics").text, "serving_registry_errors_total") == 1


def test_not_ready_until_a_model_loads(
    make_app: Callable[..., FastAPI], mlflow_tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with TestClient(make_app()) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        refused = client.post("/predict", json=SEED)
        assert refused.status_code == 503
        assert "no model" in refused.json()["detail"]
        assert client.get("/model").json()["loaded"] is False
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
        assert client.post("/reload", headers=AUTH).json()["outcome"] == "swapped"
        assert client.get("/readyz").status_code == 200


def test_a_stage_uri_still_works_with_a_deprecation_warning(
    make_app: Callable[..., FastAPI], champion: RegisteredIris, mlflow_tracking_uri: str
) -> None:
    client = MlflowClient(mlflow_tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.transition_model_version_stage(champion.name, champion.version, "Production")
    with pytest.warns(DeprecationWarning, match="stages are deprecated"):
        app = make_app(model_uri=f"models:/{champion.name}/Production")
    with TestClient(app) as test_client:
        assert served_version(test_client) == "1"
        assert test_client.get("/model").json()["alias"] == "Production"
