"""A real, lean MLflow tracking + registry server for tests, and a model-registration helper.

Interface (small on purpose; the serving and DAG suites share it):

    free_port() -> int
        A free TCP port on 127.0.0.1.

    start_mlflow_server(workdir, *, port=None, timeout=180.0) -> MlflowServer
        Starts `python -m mlflow server` from the current interpreter (the dev venv) on
        127.0.0.1 with a sqlite backend (workdir/mlflow.db), artifacts proxied by the server
        (--serve-artifacts, stored under workdir/artifacts), --workers 1 and
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false (~400 MiB, healthy in ~7 s). Waits for /health.
        The process runs in its own session; stop() terminates that group (TERM, then KILL).
    MlflowServer: .url ("http://127.0.0.1:PORT"), .port, .workdir, .log_path, .stop(),
        .alive(). Also a context manager.

    register_iris_model(tracking_uri, name, *, alias="champion", n_estimators=100,
                        max_depth=None, random_state=0, experiment="tests") -> RegisteredIris
        Trains a RandomForest on the bundled iris data set (named columns, so the signature has
        column names), logs it with signature + input example (skops, with the trusted type a
        RandomForest needs) and the class names as metadata ("class_names"), registers a new
        version of `name` and points `alias` at it
        (alias=None: no alias). Returns .name, .version (str), .run_id, .model_uri.

    use_tracking_uri(uri)  (context manager)
        MLflow's fluent API (mlflow.start_run, log_model...) talks to `uri` inside the block;
        the previous global URI and MLFLOW_TRACKING_URI are restored after it.

Pytest fixtures (registered from tests/conftest.py):

    mlflow_server           session-scoped MlflowServer (one server for the whole run)
    mlflow_tracking_uri     its URL, and MLFLOW_TRACKING_URI set to it for the test
    unique_model_name       a registered-model name unique to the test (no cross-test coupling)

Every test that uses them should carry `@pytest.mark.mlflow`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# A RandomForest saved in MLflow 3's default skops format references this type; MLflow
# records the list in the MLmodel file and passes it to skops.io.load when the model loads.
IRIS_SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MlflowServer:
    """A running `mlflow server` process group."""

    port: int
    workdir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the server and its workers (its own process group), then reap it."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(
    workdir: Path, *, port: int | None = None, host: str = "127.0.0.1", timeout: float = 180.0
) -> MlflowServer:
    """Start a lean MLflow server rooted in `workdir` and wait until /health answers.

    host: the address it listens on (a cluster test binds the harness's host address, which its
    pods reach); the Host header of any client is accepted then."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "artifacts").mkdir(exist_ok=True)
    port = port or free_port()
    log_path = workdir / "mlflow-server.log"
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # The server must not inherit a client-side tracking URI pointing elsewhere.
            "MLFLOW_TRACKING_URI": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        *([] if host == "127.0.0.1" else ["--allowed-hosts", "*"]),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(workdir / "artifacts"),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = MlflowServer(port=port, workdir=workdir, log_path=log_path, process=process, host=host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"mlflow server exited with {process.returncode}; log:\n{log_path.read_text()[-4000:]}")
        if _healthy(server.url):
            return server
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"mlflow server not healthy after {timeout}s; log:\n{log_path.read_text()[-4000:]}")


def _pinned_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}" for dist in ("mlflow", "scikit-learn", "skops", "pandas", "numpy")]


@dataclass(frozen=True)
class RegisteredIris:
    name: str
    version: str
    run_id: str
    model_uri: str


def register_iris_model(
    tracking_uri: str,
    name: str,
    *,
    alias: str | None = "champion",
    n_estimators: int = 100,
    max_depth: int | None = None,
    random_state: int = 0,
    experiment: str = "tests",
) -> RegisteredIris:
    """Train an iris RandomForest, log and register it as a new version of `name`, set `alias`."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data: Any = load_iris(as_frame=True)
    features = data.data
    target = data.target
    model = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, random_state=random_state)
    model.fit(features, target)
    example = features.iloc[:2]
    signature = infer_signature(example, model.predict(example))

    with use_tracking_uri(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_params({"n_estimators": n_estimators, "max_depth": max_depth})
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example,
                registered_model_name=name,
                skops_trusted_types=IRIS_SKOPS_TRUSTED_TYPES,
                # names of the classes 0, 1, 2 (served as labels on request)
                metadata={"class_names": [str(name) for name in data.target_names]},
                # Explicit requirements skip MLflow's inference, which imports the model in a
                # subprocess and costs ~15 s a version on this kind of machine.
                pip_requirements=_pinned_requirements(),
            )
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return RegisteredIris(name=name, version=version, run_id=run.info.run_id, model_uri=f"models:/{name}/{version}")


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """Use `uri` for MLflow's fluent API, then restore both the global and MLFLOW_TRACKING_URI
    (mlflow.set_tracking_uri also writes, and for None unsets, the environment variable)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_global = tracking_utils._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_global)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


# --- pytest fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow server for the whole test session."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_tracking_uri(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session server's URL; MLFLOW_TRACKING_URI points at it for the test."""
    if not mlflow_server.alive():
        pytest.fail(f"the session MLflow server died; log:\n{mlflow_server.log_path.read_text()[-4000:]}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return mlflow_server.url


@pytest.fixture
def unique_model_name(request: pytest.FixtureRequest) -> str:
    """A registered-model name no other test uses."""
    base = "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:40]
    return f"{base}_{uuid.uuid4().hex[:8]}"
