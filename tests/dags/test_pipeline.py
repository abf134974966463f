"""The DAGs' helper package without Airflow: settings, the gate rule, training, registry moves
and the serving client, against a real MLflow server and the real model server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from mlopslab_pipeline.config import (
    ConfigError,
    ConnectionInfo,
    Settings,
    TrainingParams,
    connection_url,
)
from mlopslab_pipeline.registry import RollbackError, decide

# --- settings ----------------------------------------------------------------------------------


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MLOPSLAB_MODEL_NAME": "iris_classifier",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
            "MLOPSLAB_SERVING_URL": "http://127.0.0.1:8000/",
            "MLOPSLAB_SERVING_RELOAD_TOKEN": "t0ken",
            "MLOPSLAB_SERVING_WAIT_SECONDS": "30",
        }
    )
    assert settings.model_name == "iris_classifier"
    assert settings.experiment_name == "iris_classifier"
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    assert settings.serving_url == "http://127.0.0.1:8000"
    assert settings.serving_reload_token == "t0ken"
    assert settings.serving_wait_seconds == 30.0
    assert "t0ken" not in repr(settings)


def test_settings_refuse_a_missing_model_name_or_mlflow() -> None:
    with pytest.raises(ConfigError, match="MLOPSLAB_MODEL_NAME"):
        Settings.from_env({"MLFLOW_TRACKING_URI": "http://x"})
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        Settings.from_env({"MLOPSLAB_MODEL_NAME": "m"})


def test_settings_fall_back_to_airflow_connections() -> None:
    connections = {
        "mlflow_default": ConnectionInfo("http://mlflow.local", "user", "pw"),
        "mlopslab_serving": ConnectionInfo("http://fastapi.local", None, "reload-token"),
    }
    settings = Settings.from_env({"MLOPSLAB_MODEL_NAME": "m", "MLOPSLAB_EXPERIMENT_NAME": "exp"}, connections.get)
    assert settings.experiment_name == "exp"
    assert settings.tracking_uri == "http://mlflow.local"
    assert settings.mlflow_env() == {
        "MLFLOW_TRACKING_URI": "http://mlflow.local",
        "MLFLOW_TRACKING_USERNAME": "user",
        "MLFLOW_TRACKING_PASSWORD": "pw",
    }
    assert (settings.serving_url, settings.serving_reload_token) == ("http://fastapi.local", "reload-token")
    # No serving connection and no URL: notification is skipped, not an error.
    assert Settings.from_env({"MLOPSLAB_MODEL_NAME": "m", "MLFLOW_TRACKING_URI": "x"}).serving_url is None


@pytest.mark.parametrize(
    ("conn_type", "host", "port", "schema", "url"),
    [
        ("http", "mlflow.local", None, None, "http://mlflow.local"),
        ("http", "mlflow-service.mlops-training", 5000, None, "http://mlflow-service.mlops-training:5000"),
        ("https", "mlflow.example.org", None, "", "https://mlflow.example.org"),
        ("http", "http://127.0.0.1", 8000, "http", "http://127.0.0.1:8000"),
        ("http", "https://gw.example.org/", None, "serving", "https://gw.example.org/serving"),
    ],
)
def test_connection_url(conn_type: str, host: str, port: int | None, schema: str | None, url: str) -> None:
    assert connection_url(conn_type, host, port, schema) == url


def test_training_params_are_validated() -> None:
    params = TrainingParams.from_params({"n_estimators": "200", "max_depth": 20, "dataset": "wine"})
    assert (params.n_estimators, params.max_depth, params.dataset) == (200, 20, "wine")
    assert TrainingParams.from_params({"max_depth": None}).max_depth is None
    with pytest.raises(ValueError, match="dataset"):
        TrainingParams(dataset="mnist")
    with pytest.raises(ValueError, match="min_accuracy"):
        TrainingParams(min_accuracy=1.5)


# --- the gate rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "champion", "promote", "why"),
    [
        (0.95, None, True, "no champion yet"),
        (0.85, None, False, "below the minimum"),
        (0.95, 0.95, True, "within"),
        (0.945, 0.95, True, "within"),  # worse, but inside the tolerance
        (0.93, 0.95, False, "worse than champion v7"),
        (0.99, 0.95, True, "within"),
        (0.85, 0.80, False, "below the minimum"),  # better than a weak champion is not enough
    ],
)
def test_gate_rule(candidate: float, champion: float | None, promote: bool, why: str) -> None:
    decision = decide(candidate, champion, min_accuracy=0.9, tolerance=0.01, champion_version="7")
    assert decision.promote is promote
    assert why in decision.reason


def test_heldout_split_is_fixed_and_disjoint() -> None:
    from mlopslab_pipeline.training import load_split

    first, second = load_split("wine"), load_split("wine")
    assert list(first.x_test.index) == list(second.x_test.index)
    assert not set(first.x_train.index) & set(first.x_test.index)
    assert list(first.x_train.columns) == list(load_split("wine").x_test.columns)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("mnist")


# --- training and the registry, against a real MLflow server -----------------------------------


def _settings(tracking_uri: str, model_name: str) -> Settings:
    return Settings.from_env({"MLOPSLAB_MODEL_NAME": model_name, "MLFLOW_TRACKING_URI": tracking_uri})


@pytest.mark.mlflow
def test_training_registers_once_per_airflow_run(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    from mlflow import MlflowClient
    from mlopslab_pipeline.training import SKOPS_TRUSTED_TYPES, train_and_register

    settings = _settings(mlflow_tracking_uri, unique_model_name)
    params = TrainingParams(n_estimators=10, run_name="unit")
    first = train_and_register(settings, params, "manual__retry-me")
    again = train_and_register(settings, params, "manual__retry-me")  # a retried task
    assert again == first
    client = MlflowClient(mlflow_tracking_uri)
    versions = client.search_model_versions(f"name = '{unique_model_name}'")
    assert [v.version for v in versions] == [first.version]
    run = client.get_run(first.run_id)
    assert run.data.params["n_estimators"] == "10"
    assert 0.8 < run.data.metrics["accuracy"] <= 1.0
    assert run.info.run_name == "unit"

    import mlflow

    model_info = mlflow.models.get_model_info(f"models:/{unique_model_name}/{first.version}")
    assert model_info.signature is not None
    assert [c.name for c in model_info.signature.inputs.inputs][:1] == ["sepal length (cm)"]
    assert model_info.saved_input_example_info is not None
    assert model_info.flavors["sklearn"]["skops_trusted_types"] == SKOPS_TRUSTED_TYPES


@pytest.mark.mlflow
def test_gate_promotes_rejects_and_rollback_walks_back(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    from mlflow import MlflowClient
    from mlopslab_pipeline.registry import apply_rollback, gate_and_apply, plan_rollback
    from mlopslab_pipeline.training import train_and_register

    settings = _settings(mlflow_tracking_uri, unique_model_name)
    client = MlflowClient(mlflow_tracking_uri)

    def train_and_gate(run: str, min_accuracy: float = 0.9, **params: object):
        trained = train_and_register(settings, TrainingParams(run_name=run, **params), f"manual__{run}")
        return gate_and_apply(
            client, unique_model_name, version=trained.version, run_id=trained.run_id,
            dataset=trained.dataset, min_accuracy=min_accuracy, tolerance=0.01, who="tester",
            via=f"train_and_promote/manual__{run}",
        )  # fmt: skip

    first = train_and_gate("first", n_estimators=20)
    assert (first.decision, first.version, first.previous_champion) == ("promoted", "1", None)
    v1 = client.get_model_version_by_alias(unique_model_name, "champion")
    assert v1.version == "1"
    assert v1.tags["mlopslab.promoted_by"] == "tester"
    assert v1.tags["mlopslab.previous_champion"] == ""
    assert v1.tags["mlopslab.promotion_run_id"] == client.get_model_version(unique_model_name, "1").run_id

    worse = train_and_gate("worse", min_accuracy=0.99, n_estimators=2, max_depth=1)
    assert worse.decision == "rejected"
    assert "below the minimum 0.9900" in worse.reason
    assert client.get_model_version_by_alias(unique_model_name, "champion").version == "1"
    challenger = client.get_model_version_by_alias(unique_model_name, "challenger")
    assert challenger.version == "2"
    assert challenger.tags["mlopslab.gate_decision"] == "rejected"
    assert challenger.tags["mlopslab.gate_reason"] == worse.reason
    assert client.get_run(challenger.run_id).data.tags["mlopslab.gate_reason"] == worse.reason

    other_data = train_and_gate("wine", dataset="wine", min_accuracy=0.5)
    assert other_data.decision == "rejected"
    assert "iris" in other_data.reason

    good = train_and_gate("good", n_estimators=30)
    assert (good.decision, good.version, good.previous_champion) == ("promoted", "4", "1")
    assert good.champion_accuracy is not None
    assert client.get_model_version(unique_model_name, "4").tags["mlopslab.previous_champion"] == "1"

    plan = plan_rollback(client, unique_model_name)
    assert (plan.from_version, plan.to_version) == ("4", "1")
    assert apply_rollback(client, unique_model_name, plan, who="tester", via="rollback_champion/r1") == "1"
    assert apply_rollback(client, unique_model_name, plan, who="tester", via="rollback_champion/r1") == "1"
    assert client.get_model_version_by_alias(unique_model_name, "champion").version == "1"
    assert client.get_model_version(unique_model_name, "1").tags["mlopslab.rolled_back_from"] == "4"
    assert client.get_model_version(unique_model_name, "4").tags["mlopslab.demoted_by"] == "tester"
    # v1 replaced nobody: a second rollback has nowhere to go, and says so.
    with pytest.raises(RollbackError, match="no previous champion"):
        plan_rollback(client, unique_model_name)
    # A plan made before someone else moved the champion is refused.
    client.set_registered_model_alias(unique_model_name, "champion", "4")
    stale_plan = plan_rollback(client, unique_model_name)
    client.set_registered_model_alias(unique_model_name, "champion", "3")
    with pytest.raises(RollbackError, match="moved to v3"):
        apply_rollback(client, unique_model_name, stale_plan, who="tester", via="rollback_champion/r2")


@pytest.mark.mlflow
def test_rollback_without_a_champion_fails_clearly(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    from mlflow import MlflowClient
    from mlopslab_pipeline.registry import plan_rollback

    with pytest.raises(RollbackError, match="no champion"):
        plan_rollback(MlflowClient(mlflow_tracking_uri), unique_model_name)


# --- the serving client ------------------------------------------------------------------------


class _StaleServing(BaseHTTPRequestHandler):
    """A server that accepts the reload but never changes version (a replica that is stuck)."""

    def do_POST(self) -> None:
        self.send_response(202)
        self.end_headers()

    def do_GET(self) -> None:
        body = b'{"version": "1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stale_serving() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StaleServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wait_is_bounded(stale_serving: str) -> None:
    from mlopslab_pipeline.serving_client import ServingError, reload_and_wait

    with pytest.raises(ServingError, match=r"still reports version 1 after 1s \(expected 2\)"):
        reload_and_wait(stale_serving, "token", "2", timeout=1.0, interval=0.2)
    assert reload_and_wait(stale_serving, "token", "1", timeout=1.0) == "1"


@pytest.mark.mlflow
def test_reload_against_the_model_server(mlflow_tracking_uri: str, unique_model_name: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlopslab_pipeline.serving_client import ServingError, reload_and_wait

    from tests.support.mlflow_server import register_iris_model
    from tests.support.serving_app import TOKEN, UvicornServer

    register_iris_model(mlflow_tracking_uri, unique_model_name, n_estimators=5)
    server = UvicornServer(
        {
            "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
            "SERVING_MODEL_NAME": unique_model_name,
            "SERVING_RELOAD_TOKEN": TOKEN,
            "SERVING_POLL_INTERVAL_SECONDS": "3600",  # only the reload makes it look
        },
        tmp_path / "serving.log",
    )
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/model").json()["version"] == "1"
        second = register_iris_model(mlflow_tracking_uri, unique_model_name, n_estimators=6)
        assert (
            MlflowClient(mlflow_tracking_uri).get_model_version_by_alias(unique_model_name, "champion").version == "2"
        )
        with pytest.raises(ServingError, match="refused"):
            reload_and_wait(server.url, "wrong-token", second.version, timeout=5)
        assert reload_and_wait(server.url, TOKEN, second.version, timeout=60, interval=0.5) == "2"
    finally:
        server.stop()


@pytest.mark.mlflow
def test_the_wait_covers_every_replica(mlflow_tracking_uri: str, unique_model_name: str, tmp_path: Path) -> None:
    """The reload reaches replica a, which tells b; the wait returns once both serve the version,
    and does not return while a peer does not answer."""
    from mlopslab_pipeline.serving_client import ServingError, reload_and_wait

    from tests.support.mlflow_server import free_port, register_iris_model
    from tests.support.serving_app import TOKEN, UvicornServer

    register_iris_model(mlflow_tracking_uri, unique_model_name, n_estimators=5)
    env = {
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "SERVING_MODEL_NAME": unique_model_name,
        "SERVING_RELOAD_TOKEN": TOKEN,
        "SERVING_POLL_INTERVAL_SECONDS": "3600",  # only reloads make them look
    }
    b = UvicornServer(env, tmp_path / "b.log")
    a = UvicornServer({**env, "SERVING_PEER_URLS": b.url}, tmp_path / "a.log")
    lonely = UvicornServer({**env, "SERVING_PEER_URLS": f"http://127.0.0.1:{free_port()}"}, tmp_path / "lonely.log")
    try:
        for server in (a, b, lonely):
            server.wait_ready()
        second = register_iris_model(mlflow_tracking_uri, unique_model_name, n_estimators=6)
        assert reload_and_wait(a.url, TOKEN, second.version, timeout=60, interval=0.2) == "2"
        assert httpx.get(f"{b.url}/model").json()["version"] == "2"  # b was reached through a
        with pytest.raises(ServingError, match=r"still reports version mixed: 2 on 1 worker\(s\), unreachable peers"):
            reload_and_wait(lonely.url, TOKEN, second.version, timeout=3, interval=0.5)
        assert httpx.get(f"{lonely.url}/model").json()["version"] == "2"  # it swapped; its peer is the problem
    finally:
        for server in (a, b, lonely):
            server.stop()
