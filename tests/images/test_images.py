"""The four images, built for real by the container_images role with podman, then run.

- the build is content-tagged and idempotent (a second run builds nothing);
- Airflow: the official chart's contract (uid 50000 in group 0, HOME, AIRFLOW_HOME, dumb-init and
  /entrypoint running the chart's args, CONNECTION_CHECK_MAX_COUNT, an arbitrary uid, /clean-logs),
  the DAGs' dependencies and the pipeline package, and the repository's DAGs parsed with zero
  import errors as uid 50000;
- MLflow and serving together: the MLflow image serves the registry (sqlite backend, artifacts
  proxied) as uid 1001 on a read-only root filesystem, a model is registered from the test, and
  the serving image loads the champion from it and answers /healthz, /readyz and /predict;
- diagnose: its entry point, the collection's connectivity probe, against a real PostgreSQL and a
  real S3 endpoint on loopback, and its causes for a wrong password and an NFS server that is not there.

Containers use the host network on 127.0.0.1 only (ports chosen free), never the lab's addresses.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.images.conftest import BuiltImages
from tests.support.images import podman, podman_env
from tests.support.mlflow_server import free_port, register_iris_model

pytestmark = [pytest.mark.images]

VERSIONS = {"mlflow": "3.15.1", "serving": "0.1.0", "airflow": "3.2.2", "diagnose": "0.1.0"}


def _wait_http(url: str, timeout: float = 180, expect: int = 200, container: str = "") -> bytes:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
                if response.status == expect:
                    return bytes(response.read())
                last = response.status
        except Exception as error:  # not up yet
            last = error
        time.sleep(1)
    logs = podman("logs", container, check=False).stdout[-3000:] if container else ""
    raise AssertionError(f"{url} did not answer {expect} within {timeout} s (last: {last})\n{logs}")


# --- the build ------------------------------------------------------------------------------------


def test_images_are_content_tagged_and_a_second_run_builds_nothing(built_images: BuiltImages) -> None:
    assert built_images.second.rc == 0, built_images.second.failures
    assert built_images.second.changed_tasks() == [], built_images.second.changed
    for name, image in built_images.published.items():
        assert re.fullmatch(rf"{re.escape(VERSIONS[name])}-[0-9a-f]{{12}}", image["tag"]), image
        label = podman(
            "image", "inspect", "--format", '{{index .Labels "io.mlops-lab.inputs-digest"}}', image["ref"]
        ).stdout.strip()
        assert label == image["digest"]
        assert image["tag"].endswith(label[:12])


# --- Airflow --------------------------------------------------------------------------------------


def _airflow(
    built: BuiltImages, *args: str, options: tuple[str, ...] = (), timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return podman(
        "run", "--rm", "--network", "none", "-e", "AIRFLOW__CORE__LOAD_EXAMPLES=False", *options,
        built.ref("airflow"), *args, check=False, timeout=timeout,
    )  # fmt: skip


def test_airflow_image_keeps_the_chart_contract(built_images: BuiltImages, tmp_path: Path) -> None:
    script = r"""
set -e
echo "ids=$(id -u):$(id -g) user=$(id -un) home=$HOME airflow_home=$AIRFLOW_HOME pwd=$(pwd)"
echo "pid1=$(tr '\0' ' ' </proc/1/cmdline)"
touch /opt/airflow/logs/probe && echo "logs=writable"
python -c 'import airflow, mlflow, sklearn, psycopg2, boto3, mlopslab_pipeline, mlopslab_pipeline.training;
print("versions", airflow.__version__, mlflow.__version__, mlopslab_pipeline.__file__)'
# The chart's executor and auth manager, as its airflow.cfg names them.
export AIRFLOW__CORE__EXECUTOR=KubernetesExecutor
export AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager
python -c 'from airflow.executors.executor_loader import ExecutorLoader;
print("executor", type(ExecutorLoader.get_default_executor()).__name__)'
airflow users create --help >/dev/null && echo "fab=users-create"
python -m mlopslab_pipeline train --help >/dev/null && echo "pipeline=cli"
"""
    run = _airflow(built_images, "bash", "-c", script)
    assert run.returncode == 0, run.stderr
    assert "ids=50000:0 user=airflow home=/home/airflow airflow_home=/opt/airflow pwd=/opt/airflow" in run.stdout
    assert "pid1=/usr/bin/dumb-init -- /entrypoint bash -c" in run.stdout
    assert "logs=writable" in run.stdout
    assert "versions 3.2.2 3.15.1 /opt/mlopslab/lib/mlopslab_pipeline/__init__.py" in run.stdout
    assert "executor KubernetesExecutor" in run.stdout
    assert "fab=users-create" in run.stdout
    assert "pipeline=cli" in run.stdout

    # The chart's forms of a command: `bash -c "exec airflow ..."`, `airflow ...`, bare arguments.
    for args in (("bash", "-c", "exec airflow version"), ("airflow", "version"), ("version",)):
        run = _airflow(built_images, *args)
        assert run.returncode == 0, (args, run.stderr)
        assert run.stdout.strip().splitlines()[-1] == "3.2.2", (args, run.stdout)

    # An arbitrary uid in group 0 (OpenShift-style) gets a passwd entry and the airflow home
    # (--passwd=false: containerd adds no entry of its own, as podman otherwise would).
    run = _airflow(
        built_images,
        "bash",
        "-c",
        "echo $(whoami) $HOME; touch /opt/airflow/logs/x",
        options=("--user", "12345:0", "--passwd=false"),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["airflow-12345", "/home/airflow"]


def test_airflow_entrypoint_waits_for_the_database_as_the_chart_expects(built_images: BuiltImages) -> None:
    unreachable = ("-e", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://u:p@127.0.0.1:9/airflow")
    run = _airflow(
        built_images,
        "version",
        options=(*unreachable, "-e", "CONNECTION_CHECK_MAX_COUNT=2", "-e", "CONNECTION_CHECK_SLEEP_TIME=0"),
    )
    assert run.returncode == 1
    assert "did not answer after 2 checks" in run.stderr
    # The chart's probes skip the wait with CONNECTION_CHECK_MAX_COUNT=0.
    run = _airflow(built_images, "version", options=(*unreachable, "-e", "CONNECTION_CHECK_MAX_COUNT=0"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("3.2.2")


def test_airflow_parses_the_dags_with_no_import_errors(built_images: BuiltImages, dags_dir: Path) -> None:
    mount = ("-v", f"{dags_dir}:/opt/airflow/dags:ro", "-e", "CONNECTION_CHECK_MAX_COUNT=0")
    script = (
        "airflow db migrate >/dev/null 2>&1 && airflow dags list-import-errors --local -o json"
        " && echo --- && airflow dags list --local -o json"
    )
    run = _airflow(built_images, "bash", "-c", script, options=mount, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # The CLI logs to stdout too: each answer is the last JSON line of its part.
    errors_part, dags_part = run.stdout.split("\n---\n")
    errors = json.loads([line for line in errors_part.splitlines() if line.startswith("[")][-1])
    assert errors == [], errors
    dags = {dag["dag_id"] for dag in json.loads([line for line in dags_part.splitlines() if line.startswith("[")][-1])}
    assert {"train_and_promote", "rollback_champion"} <= dags


def test_clean_logs_removes_old_log_files(built_images: BuiltImages, container_name: str) -> None:
    script = (
        "mkdir -p /opt/airflow/logs/dag_id=a/run && touch -d '20 days ago' /opt/airflow/logs/dag_id=a/run/old.log"
        " && mkdir -p /opt/airflow/logs/b && touch /opt/airflow/logs/b/new.log && exec bash /clean-logs"
    )
    podman(
        "run", "-d", "--name", container_name, "--network", "none", "-e", "CONNECTION_CHECK_MAX_COUNT=0",
        "-e", "AIRFLOW__LOG_RETENTION_DAYS=15", built_images.ref("airflow"), "bash", "-c", script,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listing = podman("exec", container_name, "find", "/opt/airflow/logs", "-type", "f", check=False).stdout.split()
        if listing == ["/opt/airflow/logs/b/new.log"]:
            break
        time.sleep(1)
    assert listing == ["/opt/airflow/logs/b/new.log"]
    dirs = podman("exec", container_name, "find", "/opt/airflow/logs", "-mindepth", "1", "-type", "d").stdout.split()
    assert dirs == ["/opt/airflow/logs/b"]


# --- MLflow + serving -------------------------------------------------------------------------------


@pytest.fixture
def mlflow_container(built_images: BuiltImages) -> Iterator[tuple[str, str]]:
    name, port = f"mlopslab-test-mlflow-{free_port()}", free_port()
    # As the chart runs it: its uid, a read-only root filesystem, /tmp writable.
    podman(
        "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "-e", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", built_images.ref("mlflow"),
        "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", "sqlite:////tmp/mlflow.db", "--serve-artifacts",
        "--artifacts-destination", "/tmp/artifacts",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert _wait_http(f"{url}/health", container=name) == b"OK"
        yield name, url
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


@pytest.mark.mlflow
def test_mlflow_and_serving_images_serve_the_champion(
    built_images: BuiltImages, mlflow_container: tuple[str, str], container_name: str
) -> None:
    mlflow_name, mlflow_url = mlflow_container
    assert podman("exec", mlflow_name, "id", "-u").stdout.strip() == "1001"
    assert (
        podman(
            "exec", mlflow_name, "python", "-c", "import psycopg2, boto3, mlflow; print(mlflow.__version__)"
        ).stdout.strip()
        == "3.15.1"
    )

    model = register_iris_model(mlflow_url, "images_test_iris", n_estimators=5)
    port = free_port()
    podman(
        "run", "-d", "--name", container_name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "-e", f"MLFLOW_TRACKING_URI={mlflow_url}", "-e", "SERVING_MODEL_NAME=images_test_iris",
        "-e", "SERVING_RELOAD_TOKEN=" + "t" * 32, built_images.ref("serving"),
        "uvicorn", "serving.app.main:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    assert json.loads(_wait_http(f"{base}/healthz", container=container_name)) == {"status": "ok"}
    ready = json.loads(_wait_http(f"{base}/readyz", container=container_name))
    assert ready["version"] == model.version
    request = urllib.request.Request(  # noqa: S310 (loopback)
        f"{base}/predict",
        data=json.dumps({"features": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
        body = json.loads(response.read())
    assert body["model_version"] == model.version if "model_version" in body else body
    assert podman("exec", container_name, "id", "-u").stdout.strip() == "10001"


# --- diagnose ---------------------------------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")
AS_POSTGRES = ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--")


@pytest.fixture
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL on 127.0.0.1 with a password user (scram-sha-256)."""
    # Directly under /tmp: pytest's own directories are closed to the postgres user.
    work = Path(tempfile.mkdtemp(prefix="mlopslab-images-pg-"))
    shutil.chown(work, "postgres", "postgres")
    password = "diag-" + str(time.monotonic_ns())
    (work / "pw").write_text(password)
    shutil.chown(work / "pw", "postgres", "postgres")
    subprocess.run(
        [*AS_POSTGRES, str(PG_BIN / "initdb"), "-D", str(work / "data"), "-U", "diag", "--auth=scram-sha-256",
         f"--pwfile={work / 'pw'}"], check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [*AS_POSTGRES, str(PG_BIN / "postgres"), "-D", str(work / "data"), "-p", str(port),
         "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={work}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.5)
        yield {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
            "PGUSER": "diag",
            "PGPASSWORD": password,
            "PGDATABASE": "postgres",
        }
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[dict[str, str]]:
    """rclone serve s3 on 127.0.0.1 over a plain directory holding one bucket."""
    rclone = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "rclone"
    (tmp_path / "s3" / "diag-bucket").mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [str(rclone), "serve", "s3", str(tmp_path / "s3"), "--addr", f"127.0.0.1:{port}",
         "--auth-key", "diagkey,diagsecret"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "rclone serve s3 did not start"
            time.sleep(0.5)
        yield {
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "diagkey",
            "AWS_SECRET_ACCESS_KEY": "diagsecret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _diagnose(built: BuiltImages, env: dict[str, str], checks: list[dict[str, object]]) -> tuple[int, list[Any], str]:
    """The image's entry point (the collection's connectivity probe) with a spec on stdin, as a pod
    runs it with its Secrets as environment."""
    options = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    run = subprocess.run(
        ["podman", "run", "--rm", "-i", "--network", "host", "--read-only", *options, built.ref("diagnose"), "-"],
        input=json.dumps({"checks": checks}), env=podman_env(), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    return run.returncode, [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")], run.stderr


def test_diagnose_checks_postgresql_s3_and_nfs(
    built_images: BuiltImages, postgres: dict[str, str], s3_endpoint: dict[str, str]
) -> None:
    login = {"kind": "postgresql", "name": "db", "host": "127.0.0.1", "port": int(postgres["PGPORT"]),
             "database": "postgres", "user": "diag", "password_env": "PGPASSWORD"}  # fmt: skip
    store = {"kind": "s3", "name": "store", "bucket": "diag-bucket", "region": "us-east-1",
             "endpoint_url_env": "AWS_ENDPOINT_URL_S3", "access_key_id_env": "AWS_ACCESS_KEY_ID",
             "secret_access_key_env": "AWS_SECRET_ACCESS_KEY"}  # fmt: skip
    rc, results, stderr = _diagnose(built_images, {**postgres, **s3_endpoint}, [login, store])
    assert rc == 0, (results, stderr)
    assert [(r["check"], r["cause"]) for r in results] == [("postgresql", "ok"), ("s3", "ok")], results
    assert "(the server sees this client as 127.0.0.1)" in results[0]["summary"]
    assert "The credentials can put, get, delete in s3://diag-bucket" in results[1]["summary"]
    for secret in (postgres["PGPASSWORD"], s3_endpoint["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in json.dumps(results) + stderr

    # A wrong password and an NFS server that is not there both fail, each with its cause.
    nfs = {"kind": "nfs", "name": "logs", "server": "127.0.0.1", "path": "/export", "timeout": 5}
    rc, results, _ = _diagnose(built_images, {**postgres, "PGPASSWORD": "wrong"}, [login, nfs])
    assert rc == 1
    assert [r["cause"] for r in results] == ["pg_password", "unreachable"], results

    usage = podman("run", "--rm", "--network", "none", built_images.ref("diagnose"), check=False)
    assert (usage.returncode, usage.stderr.strip()) == (2, "usage: connectivity.py SPEC.json|-")
    help_run = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "nfs-ls", built_images.ref("diagnose"), check=False
    )
    assert "Usage: nfs-ls" in help_run.stdout + help_run.stderr
    assert (
        podman(
            "run", "--rm", "--network", "none", "--entrypoint", "id", built_images.ref("diagnose"), "-u"
        ).stdout.strip()
        == "65534"
    )
