"""The model server (serving/) as a real process, and small helpers for tests that drive it.

UvicornServer(env, log_path, workers=1, host="127.0.0.1"): `python -m uvicorn serving.app.main:app`
    on a free loopback port, env added to os.environ (SERVING_*, MLFLOW_TRACKING_URI...);
    .url, .wait_ready(timeout), .stop().
wait_for(predicate, timeout, what): poll until true or fail naming `what`.
metric_value(prometheus_text, name): an unlabelled sample's value.
PredictLoad(url, body, threads=4, pause=0.0): `with` it, POST /predict from threads until the block
    ends; .outcomes (status code or exception name -> count), .ok, .failed, .failures (words).
TOKEN: a reload token that production settings accept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.mlflow_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-reload-token-0123456789"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PredictLoad:
    """Steady POST /predict requests from a few threads while the ``with`` block runs."""

    def __init__(
        self, url: str, body: dict[str, object], threads: int = 4, pause: float = 0.0, timeout: float = 30.0
    ) -> None:
        self.outcomes: Counter[str] = Counter()  # "200", "503", "ReadError", ...
        self.failures: list[str] = []  # what each failed request got, in words
        self._url, self._body, self._pause, self._timeout = url, body, pause, timeout
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    @property
    def ok(self) -> int:
        return self.outcomes["200"]

    @property
    def failed(self) -> int:
        return self.outcomes.total() - self.ok

    def _run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=self._timeout) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json=self._body)
                    self.outcomes[str(response.status_code)] += 1
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    self.outcomes[type(exc).__name__] += 1
                    self.failures.append(repr(exc))
                if self._pause:
                    time.sleep(self._pause)

    def __enter__(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample in Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not exposed")


class UvicornServer:
    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "serving.app.main:app", "--host", host,
                 "--port", str(self.port), "--workers", str(workers), "--no-access-log"],
                cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"uvicorn exited; log:\n{self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "the model server to be ready", interval=0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
