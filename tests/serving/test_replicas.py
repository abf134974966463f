"""Workers of one replica agree: a reload that reaches one worker reaches the other, GET /replicas
lists both, and `python -m runner status` (runner/health.py) reports the agreement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from runner.health import Component, check_http, check_serving
from tests.support.mlflow_server import RegisteredIris, free_port, register_iris_model
from tests.support.serving_app import TOKEN, UvicornServer, wait_for

pytestmark = [pytest.mark.mlflow, pytest.mark.timeout(600)]


def test_a_reload_reaching_one_worker_swaps_both(
    champion: RegisteredIris, mlflow_tracking_uri: str, tmp_path: Path
) -> None:
    env = {
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "SERVING_MODEL_NAME": champion.name,
        "SERVING_RELOAD_TOKEN": TOKEN,
        "SERVING_POLL_INTERVAL_SECONDS": "3600",
        "SERVING_WORKERS_DIR": str(tmp_path / "workers"),
    }
    server = UvicornServer(env, tmp_path / "workers.log", workers=2)
    try:
        server.wait_ready()
        # wait_ready sees the first worker that loads; the second may still be loading ("none")
        wait_for(lambda: httpx.get(f"{server.url}/replicas").json()["versions"] == {"1": 2}, 60, "two workers on 1")
        probe = check_serving(Component("serving", "serving", server.url), 10)
        assert (probe.healthy, probe.detail) == (True, f"serves {champion.name} version 1 on all 2 worker(s)")

        register_iris_model(mlflow_tracking_uri, champion.name, random_state=2)
        reloaded = httpx.post(f"{server.url}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert reloaded.json()["outcome"] == "swapped"  # the worker that answered
        wait_for(lambda: httpx.get(f"{server.url}/replicas").json()["versions"] == {"2": 2}, 30, "both workers on 2")
        view = httpx.get(f"{server.url}/replicas", params={"scope": "local"}).json()
        assert (view["agreed"], view["version"], view["peers"]) == (True, "2", [])
        assert len({worker["pid"] for worker in view["workers"]}) == 2
    finally:
        server.stop()
    assert list((tmp_path / "workers").glob("worker-*.json")) == []  # stopped workers remove their state


def test_status_reports_a_replica_that_cannot_see_its_peer(uvicorn_server: Callable[..., UvicornServer]) -> None:
    server = uvicorn_server(SERVING_PEER_URLS=f"http://127.0.0.1:{free_port()}")
    probe = check_serving(Component("serving", "serving", server.url), 10)
    assert probe.healthy is False
    assert probe.detail.startswith("workers disagree: {'1': 1}, unreachable peers ['http://127.0.0.1:")
    # a bare URL (an older endpoints file) is a port check only
    assert check_http(Component("serving", "http", f"{server.url}/healthz"), 10).detail == "HTTP 200 (port check only)"
