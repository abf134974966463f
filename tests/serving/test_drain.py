"""serving/app/drain.py: a stopping pod closes its kept-alive connections before SIGTERM.

A real uvicorn with the drain file of the chart's preStop hook: before the file exists a client
keeps one connection for many requests; once it exists, the server answers with `Connection:
close` and the client has to open a new connection for each request, while every request still
succeeds. The rolling restart this is
for is tested on the real cluster (tests/cluster/test_serving_on_cluster.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.serving_app import UvicornServer

SEED = {"features": [5.1, 3.5, 1.4, 0.2]}


def _connections_for(url: str, requests: int) -> tuple[int, set[str | None]]:
    """How many TCP connections a keep-alive client opened for ``requests`` POSTs, and the
    Connection headers it was sent."""
    opened = 0
    headers: set[str | None] = set()

    def count(event_name: str, info: dict[str, object]) -> None:
        nonlocal opened
        if event_name == "connection.connect_tcp.complete":
            opened += 1

    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(requests):
            response = client.post("/predict", json=SEED, extensions={"trace": count})
            assert response.status_code == 200, response.text
            headers.add(response.headers.get("connection"))
    return opened, headers


def test_the_drain_file_closes_every_connection_after_its_response(
    uvicorn_server: Callable[..., UvicornServer], tmp_path: Path
) -> None:
    drain_file = tmp_path / "serving-draining"
    server = uvicorn_server(SERVING_DRAIN_FILE=str(drain_file))
    opened, headers = _connections_for(server.url, 20)
    assert opened == 1, "a client keeps its connection while the pod is not stopping"
    assert "close" not in headers

    drain_file.touch()  # what the preStop hook does
    time.sleep(1.0)  # the server looks every 0.25 s
    opened, headers = _connections_for(server.url, 20)
    assert opened == 20, "each request came on a new connection: the server closed every one"
    assert headers == {"close"}
