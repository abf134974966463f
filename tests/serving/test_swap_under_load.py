"""Zero failed requests while the champion moves under concurrent load (real uvicorn process)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from mlflow import MlflowClient

from tests.support.mlflow_server import RegisteredIris, register_iris_model
from tests.support.serving_app import TOKEN, UvicornServer, wait_for

pytestmark = pytest.mark.mlflow

SEED = {"features": [5.1, 3.5, 1.4, 0.2]}
CONCURRENCY = 8
MAX_SECONDS = 90
MAX_REQUESTS = 40_000


class Load:
    """CONCURRENCY loopback clients in a background thread, bounded in time and count."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def latest_version(self) -> str | None:
        return self._latest

    _latest: str | None = None

    async def _worker(self, client: httpx.AsyncClient, deadline: float) -> None:
        while not self.stop.is_set() and time.monotonic() < deadline and self.statuses.total() < MAX_REQUESTS:
            try:
                response = await client.post(f"{self.url}/predict", json=SEED)
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
                continue
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                body = response.json()
                if body["predictions"] != [0]:
                    self.errors.append(f"wrong prediction {body}")
                self._latest = body["model_version"]
                self.versions[self._latest] += 1
            else:
                self.errors.append(f"{response.status_code} {response.text[:200]}")

    async def _run(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(*(self._worker(client, deadline) for _ in range(CONCURRENCY)))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_no_request_fails_while_the_champion_moves(
    uvicorn_server: Callable[..., UvicornServer], champion: RegisteredIris, mlflow_tracking_uri: str
) -> None:
    server = uvicorn_server(SERVING_POLL_INTERVAL_SECONDS="1")
    registry = MlflowClient(mlflow_tracking_uri)
    with Load(server.url) as load:
        wait_for(lambda: load.versions["1"] > 50, 30, "load on version 1")
        # 1 -> 2 by the poller alone, 2 -> 1 by /reload, 1 -> 3 by the poller again.
        register_iris_model(mlflow_tracking_uri, champion.name, random_state=2)
        wait_for(lambda: load.latest_version() == "2", 30, "version 2 under load")
        registry.set_registered_model_alias(champion.name, "champion", "1")
        reloaded = httpx.post(f"{server.url}/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert reloaded.json()["serving_version"] == "1"
        wait_for(lambda: load.latest_version() == "1", 10, "version 1 again under load")
        register_iris_model(mlflow_tracking_uri, champion.name, random_state=3)
        wait_for(lambda: load.latest_version() == "3", 30, "version 3 under load")
        settled = load.versions["3"]
        wait_for(lambda: load.versions["3"] > settled + 50, 30, "more load on version 3")
    assert load.errors == []
    assert set(load.statuses) == {200}
    assert set(load.versions) == {"1", "2", "3"}
    info = httpx.get(f"{server.url}/model").json()
    assert info["swaps"] == 4
    assert info["last_error"] is None
