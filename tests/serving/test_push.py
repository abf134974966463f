"""Push-driven swaps: a real MLflow server's registry webhook reaches one replica, which tells its
peer; every worker of every replica then serves the new champion, and GET /replicas says so.

The MLflow server here is this module's own: webhooks need it to allow http and loopback
targets (MLFLOW_WEBHOOK_ALLOWED_SCHEMES, MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS, development
settings) and a short webhook cache. Serving polls once an hour, so only the push can swap.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.webhooks.delivery import _generate_hmac_signature

from tests.support.mlflow_server import MlflowServer, register_iris_model, start_mlflow_server
from tests.support.serving_app import TOKEN, UvicornServer, wait_for

pytestmark = [pytest.mark.mlflow, pytest.mark.timeout(600)]

SEED = {"features": [5.1, 3.5, 1.4, 0.2]}
SECRET = secrets.token_urlsafe(24)  # this run's webhook secret


@pytest.fixture(scope="module")
def webhook_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    from cryptography.fernet import Fernet

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_WEBHOOK_ALLOWED_SCHEMES", "http,https")
        patch.setenv("MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS", "true")
        patch.setenv("MLFLOW_WEBHOOK_CACHE_TTL", "1")
        patch.setenv("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY", Fernet.generate_key().decode())
        server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-webhooks"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def model_name(webhook_mlflow: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", webhook_mlflow.url)
    name = f"push_{uuid.uuid4().hex[:8]}"
    register_iris_model(webhook_mlflow.url, name, random_state=1)
    return name


def start(env: dict[str, str], log: Path, workers: int = 1) -> UvicornServer:
    server = UvicornServer(env, log, workers=workers)
    server.wait_ready()
    return server


def served_version(url: str) -> str:
    response = httpx.post(f"{url}/predict", json=SEED, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == response.json()["model_version"]
    return str(response.json()["model_version"])


def replicas(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/replicas", timeout=20)
    assert response.status_code == 200, response.text
    return dict(response.json())


def signed(body: bytes, secret: str = SECRET, age: int = 0) -> dict[str, str]:
    """The headers MLflow sends, signed with MLflow's own function."""
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time()) - age)
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, timestamp, body.decode()),
    }


def alias_created(name: str, version: str, alias: str = "champion") -> bytes:
    data = {"name": name, "alias": alias, "version": version}
    return json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "t", "data": data}).encode()


def test_a_webhook_to_one_replica_swaps_every_worker_of_every_replica(
    webhook_mlflow: MlflowServer, model_name: str, tmp_path: Path
) -> None:
    a_port_env = {
        "MLFLOW_TRACKING_URI": webhook_mlflow.url,
        "SERVING_MODEL_NAME": model_name,
        "SERVING_RELOAD_TOKEN": TOKEN,
        "SERVING_WEBHOOK_SECRET": SECRET,
        "SERVING_POLL_INTERVAL_SECONDS": "3600",
    }
    b = start({**a_port_env, "SERVING_WORKERS_DIR": str(tmp_path / "b-workers")}, tmp_path / "b.log", workers=2)
    a = start({**a_port_env, "SERVING_PEER_URLS": f"{b.url}, http://127.0.0.1:9"}, tmp_path / "a.log")
    try:
        wait_for(lambda: len(replicas(b.url)["workers"]) == 2, 30, "both workers of replica b to report")
        before = replicas(a.url)
        assert before["agreed"] is False  # a lists a peer that does not answer
        assert [p["reachable"] for p in before["peers"]] == [True, False]
        assert before["versions"] == {"1": 3}

        registry = MlflowClient(webhook_mlflow.url)
        webhook = registry.create_webhook(
            name=f"serving-{model_name}",
            url=f"{a.url}/webhooks/mlflow",
            events=["model_version_alias.created"],
            secret=SECRET,
        )
        # MLflow's own signed test delivery (an example payload for another model): ignored.
        tested = registry.test_webhook(webhook.webhook_id)
        assert tested.success, tested
        assert json.loads(str(tested.response_body))["outcome"] == "ignored"

        second = register_iris_model(webhook_mlflow.url, model_name, random_state=2)  # moves the alias
        wait_for(lambda: served_version(a.url) == second.version, 60, "replica a to serve version 2")
        # b (both workers) learnt it from a, not from its poll (one hour)
        wait_for(lambda: replicas(b.url)["versions"] == {"2": 2}, 60, "both workers of b to serve version 2")
        view = replicas(b.url)
        assert view["agreed"] is True
        assert view["version"] == "2"
        assert {w["last_check_outcome"] for w in view["workers"]} == {"swapped"}
        assert replicas(a.url)["versions"] == {"2": 3}
        metrics = httpx.get(f"{a.url}/metrics", timeout=10).text
        assert 'serving_webhook_deliveries_total{outcome="accepted"} 1.0' in metrics
        assert 'serving_webhook_deliveries_total{outcome="ignored"} 1.0' in metrics
    finally:
        a.stop()
        b.stop()


def test_only_a_signed_move_of_the_served_alias_triggers_a_load(
    webhook_mlflow: MlflowServer, model_name: str, tmp_path: Path
) -> None:
    server = start(
        {
            "MLFLOW_TRACKING_URI": webhook_mlflow.url,
            "SERVING_MODEL_NAME": model_name,
            "SERVING_RELOAD_TOKEN": TOKEN,
            "SERVING_WEBHOOK_SECRET": SECRET,
            "SERVING_POLL_INTERVAL_SECONDS": "3600",
        },
        tmp_path / "serving.log",
    )
    url = f"{server.url}/webhooks/mlflow"
    try:
        second = register_iris_model(webhook_mlflow.url, model_name, random_state=2)  # no webhook registered
        body = alias_created(model_name, second.version)

        assert httpx.post(url, content=body, headers={"Content-Type": "application/json"}).status_code == 401
        assert (
            httpx.post(url, content=body, headers=signed(body, secret="another-secret-0123456789")).status_code == 403
        )
        assert httpx.post(url, content=body, headers=signed(body, age=3600)).status_code == 403  # a replay
        tampered = signed(body)
        assert httpx.post(url, content=alias_created(model_name, "7"), headers=tampered).status_code == 403
        for ignored in (
            alias_created(model_name, second.version, alias="challenger"),
            alias_created("another_model", second.version),
            json.dumps({"entity": "model_version", "action": "created", "data": {"name": model_name}}).encode(),
        ):
            response = httpx.post(url, content=ignored, headers=signed(ignored))
            assert response.status_code == 200, response.text
            assert response.json()["outcome"] == "ignored"
        garbage = b'{"not": "mlflow"}'
        assert httpx.post(url, content=garbage, headers=signed(garbage)).status_code == 400
        info = httpx.get(f"{server.url}/model").json()
        assert (info["version"], info["swaps"]) == ("1", 1)  # nothing above loaded anything

        accepted = httpx.post(url, content=body, headers=signed(body))
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {
            "outcome": "accepted",
            "event": "model_version_alias.created",
            "reason": None,
            "target_version": "2",
            "serving_version": "1",
        }
        wait_for(lambda: served_version(server.url) == "2", 60, "the accepted delivery to swap in version 2")
    finally:
        server.stop()
