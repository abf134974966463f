"""End to end: the local platform from nothing, through the loop, down and up again.

Isolated from a developer's running platform: its own MLOPSLAB_HOME (state, venvs, secrets)
in a temporary directory, free ports instead of the defaults, and its own PostgreSQL cluster
(``mlopslab_e2e_<pid>``: one per test session, so that sessions running at the same time on a
shared machine never drop or stop each other's). Everything runs through ``python -m runner`` with a copy of
inventories/local whose extra ``group_vars/all/zz_e2e.yml`` (loaded after ``main.yml``) moves
the ports and names the cluster.

Order matters (one platform, brought up once): the tests share the module-scoped platform
and run top to bottom.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rich.console import Console

from runner.summary import read_last_summary
from runner.train import PasswordTokenAuth, TrainParams, trigger_training
from tests.support import local_platform
from tests.support.serving_app import PredictLoad

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_PREFIX = "mlopslab_e2e"
CLUSTER = f"{CLUSTER_PREFIX}_{os.getpid()}"
PG_VERSION = "15"
MODEL = "iris_classifier"
FEATURES = [5.1, 3.5, 1.4, 0.2]


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Platform:
    home: Path
    inventory: Path
    env: dict[str, str]
    ports: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def runner(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args, "-i", str(self.inventory)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def bootstrap(self, label: str) -> dict[str, Any]:
        started = time.monotonic()
        result = self.runner("bootstrap")
        self.timings[label] = time.monotonic() - started
        assert result.returncode == 0, f"bootstrap ({label}) failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        return self.last_summary()

    def last_summary(self) -> dict[str, Any]:
        summary = read_last_summary(Path(self.env["MLOPSLAB_STATE_DIR"]))
        assert summary is not None, "no runner run has written a summary yet"
        return summary.to_dict()

    def secret(self, name: str) -> str:
        return (self.home / "secrets" / name).read_text().split()[0]

    def auth(self) -> PasswordTokenAuth:
        return PasswordTokenAuth(self.url("airflow"), "admin", self.secret("airflow_admin_password"))

    def champion(self) -> str | None:
        response = httpx.get(
            f"{self.url('mlflow')}/api/2.0/mlflow/registered-models/alias",
            params={"name": MODEL, "alias": "champion"},
            timeout=30,
        )
        if response.status_code != 200:
            return None
        version: str = response.json()["model_version"]["version"]
        return version

    def model_versions(self) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url('mlflow')}/api/2.0/mlflow/model-versions/search",
            params={"filter": f"name='{MODEL}'", "max_results": 100},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["model_versions"]
        return found

    def served_version(self) -> str | None:
        version: str | None = httpx.get(f"{self.url('serving')}/model", timeout=30).json()["version"]
        return version

    def wait_served(self, version: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.served_version() == version:
                return
            time.sleep(2)
        raise AssertionError(f"serving still serves {self.served_version()}, expected {version}")

    def trigger(self, dag_id: str, conf: dict[str, Any], timeout: float = 900) -> str:
        with httpx.Client(base_url=self.url("airflow"), auth=self.auth(), timeout=30) as client:
            run = client.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
            assert run.status_code == 200, run.text
            run_id = run.json()["dag_run_id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                state: str = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
                if state in ("success", "failed"):
                    return state
                time.sleep(3)
        raise AssertionError(f"{dag_id} run {run_id} did not finish in {timeout} s")


def _total_changed(summary: dict[str, Any]) -> int:
    return sum(stage["counts"].get("changed", 0) for stage in summary["stages"])


def platform_pids(home: Path) -> set[int]:
    """supervisord and every process under it, plus the e2e PostgreSQL cluster's processes."""
    return local_platform.platform_pids(home, CLUSTER, PG_VERSION)


def listeners(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP listener owned by one of `pids`."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        local, users = parts[3], " ".join(parts[5:])
        address, _, port = local.rpartition(":")
        for chunk in users.split("pid=")[1:]:
            pid = int(chunk.split(",")[0])
            if pid in pids:
                found.append((address.strip("[]"), int(port), pid))
    return found


def _drop_cluster(name: str = CLUSTER) -> None:
    if Path(f"/etc/postgresql/{PG_VERSION}/{name}").exists():
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, name], check=False, capture_output=True)


def _drop_stale_clusters() -> None:
    """Clusters of earlier sessions that ended without their teardown: their session is gone."""
    for conf in Path(f"/etc/postgresql/{PG_VERSION}").glob(f"{CLUSTER_PREFIX}*"):
        owner = conf.name.removeprefix(f"{CLUSTER_PREFIX}_")
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _drop_cluster(conf.name)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("the local platform's PostgreSQL cluster needs root")
    base = tmp_path_factory.mktemp("e2e")
    home = base / "home"
    inventory = base / "inventory"
    shutil.copytree(ROOT / "inventories" / "local", inventory)
    db, s3, mlflow, airflow, serving = _free_ports(5)
    ports = {"db": db, "s3": s3, "mlflow": mlflow, "airflow": airflow, "serving": serving}
    overrides: dict[str, object] = {f"mlopslab_{name}_port": port for name, port in ports.items()}
    overrides["mlopslab_db_cluster_name"] = CLUSTER
    (inventory / "group_vars" / "all" / "zz_e2e.yml").write_text("---\n" + yaml.safe_dump(overrides))
    env = {
        **os.environ,
        "MLOPSLAB_HOME": str(home),
        "MLOPSLAB_STATE_DIR": str(base / "state"),
        "PYTHONUNBUFFERED": "1",
    }
    _drop_stale_clusters()
    _drop_cluster()
    p = Platform(home=home, inventory=inventory, env=env, ports=ports)
    try:
        yield p
    finally:
        p.runner("down", timeout=600)
        _drop_cluster()
        timings = base / "timings.json"
        timings.write_text(json.dumps(p.timings, indent=2))
        print(f"\ne2e timings: {json.dumps(p.timings)}")


def test_cold_bootstrap_proves_the_loop(platform: Platform) -> None:
    summary = platform.bootstrap("cold")
    stages = {stage["name"]: stage for stage in summary["stages"]}
    assert stages["platform"]["status"] == "successful"
    assert stages["smoke"]["status"] == "successful"
    # The smoke stage trained a first champion and serving answers with it.
    champion = platform.champion()
    assert champion is not None
    assert platform.served_version() == champion
    for name in ("airflow_admin_password", "s3_secret_access_key", "mlflow_db_password"):
        assert (platform.home / "secrets" / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"


def test_second_bootstrap_changes_nothing(platform: Platform) -> None:
    summary = platform.bootstrap("warm")
    assert _total_changed(summary) == 0, [(s["name"], s["counts"]) for s in summary["stages"]]
    assert platform.timings["warm"] < platform.timings["cold"]


def test_only_loopback_listens(platform: Platform) -> None:
    pids = platform_pids(platform.home)
    found = listeners(pids)
    ports = {port for _, port, _ in found}
    assert set(platform.ports.values()) <= ports, f"missing listeners: {set(platform.ports.values()) - ports}"
    outside = [entry for entry in found if entry[0] not in ("127.0.0.1", "::1")]
    assert not outside, f"listening beyond loopback: {outside}"


def test_training_twice_moves_the_champion_and_serving_swaps_under_load(platform: Platform) -> None:
    first = platform.champion()
    assert first is not None
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    versions: Counter[str] = Counter()

    def load() -> None:
        with httpx.Client(base_url=platform.url("serving"), timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post("/predict", json={"features": FEATURES})
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1
                    continue
                outcomes[str(response.status_code)] += 1
                if response.status_code == 200:
                    versions[str(response.json()["model_version"])] += 1
                time.sleep(0.01)  # steady load, leaving CPU for the training tasks on 2 cores

    workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        console = Console(stderr=True)
        # Two runs with different params; tolerance 1.0 makes each candidate the champion.
        seen = [first]
        for run_name, n_estimators, max_depth in (("e2e-small", 10, 2), ("e2e-deeper", 40, 6)):
            outcome = trigger_training(
                platform.url("airflow"),
                platform.auth(),
                TrainParams(n_estimators=n_estimators, max_depth=max_depth, run_name=run_name, tolerance=1.0),
                wait=True,
                console=console,
                timeout=900,
            )
            assert outcome.result == "promoted", outcome.summary()
            champion = platform.champion()
            assert champion == outcome.version
            assert champion not in seen
            seen.append(champion)
            platform.wait_served(champion)
        time.sleep(2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert outcomes["200"] > 0
    assert set(outcomes) == {"200"}, f"failed requests under load: {dict(outcomes)}"
    assert len(versions) >= 2, f"no swap seen under load: {dict(versions)}"
    pytest.shared_versions = seen  # type: ignore[attr-defined]


def test_rollback_restores_the_previous_champion(platform: Platform) -> None:
    seen: list[str] = pytest.shared_versions  # type: ignore[attr-defined]
    assert platform.champion() == seen[-1]
    assert platform.trigger("rollback_champion", {}) == "success"
    assert platform.champion() == seen[-2]
    platform.wait_served(seen[-2])
    response = httpx.post(f"{platform.url('serving')}/predict", json={"features": FEATURES}, timeout=30)
    assert response.status_code == 200
    assert response.json()["model_version"] == seen[-2]


def test_down_and_up_keep_registry_and_artifacts(platform: Platform) -> None:
    champion = platform.champion()
    versions = platform.model_versions()
    before = sorted(int(v["version"]) for v in versions)
    # MLflow 3 stores a logged model's files under models/<model id>/ of the artifact store
    # (not under the run), proxied to the S3 store's bucket directory.
    models_before = sorted(str(p.relative_to(platform.home)) for p in (platform.home / "s3").rglob("MLmodel"))
    assert len(models_before) >= len(before), models_before
    pids = platform_pids(platform.home)

    result = platform.runner("down", timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    supervised = pids - platform_pids(platform.home)
    assert not [pid for pid in supervised if Path(f"/proc/{pid}").exists()], "processes survived down"
    for name in ("s3", "mlflow", "airflow", "serving"):
        address = ("127.0.0.1", platform.ports[name])
        with pytest.raises(ConnectionRefusedError), socket.create_connection(address, timeout=2):
            pass

    platform.bootstrap("up-after-down")
    assert platform.champion() == champion
    after = platform.model_versions()
    assert sorted(int(v["version"]) for v in after) == before
    models_after = sorted(str(p.relative_to(platform.home)) for p in (platform.home / "s3").rglob("MLmodel"))
    assert models_after == models_before
    # Serving loads the champion's files from the store through MLflow: the artifacts are back.
    platform.wait_served(champion)
    response = httpx.post(f"{platform.url('serving')}/predict", json={"features": FEATURES}, timeout=30)
    assert response.status_code == 200
    assert response.json()["model_version"] == champion


# --- status that tells the truth, and what holds up while PostgreSQL or MLflow is down ---------


def status(platform: Platform) -> tuple[int, dict[str, dict[str, Any]]]:
    result = platform.runner("status", "--json", timeout=120)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    components = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    assert set(components) == {"postgresql", "s3", "mlflow", "airflow", "serving"}, result.stdout
    return result.returncode, components


def wait_all_up(platform: Platform, timeout: float = 300) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rc, components = status(platform)
        if rc == 0:
            return components
        assert time.monotonic() < deadline, f"not every component recovered: {components}"
        time.sleep(5)


def supervisorctl(platform: Platform, *args: str) -> None:
    supervisor = platform.home / "supervisor"
    subprocess.run(
        [str(supervisor / "venv" / "bin" / "supervisorctl"), "-c", str(supervisor / "supervisord.conf"), *args],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def test_status_says_what_each_component_can_do(platform: Platform) -> None:
    components = wait_all_up(platform)
    assert "PostgreSQL accepts airflow_user on airflow_db" in components["postgresql"]["detail"]
    assert "PostgreSQL accepts mlflow_user on mlflow_db" in components["postgresql"]["detail"]
    assert "The credentials can list" in components["s3"]["detail"]
    assert "the registry answers" in components["mlflow"]["detail"]
    assert components["airflow"]["detail"].startswith("healthy: metadatabase, scheduler")
    assert f"serves {MODEL} version" in components["serving"]["detail"]


def test_postgresql_down_is_told_serving_keeps_answering_and_all_recover(platform: Platform) -> None:
    wait_all_up(platform)
    with PredictLoad(platform.url("serving"), {"features": FEATURES}, pause=0.01) as load:
        stopped = time.monotonic()
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", "-m", "fast", PG_VERSION, CLUSTER, "stop"],
            check=True,
            timeout=120,
        )
        try:
            time.sleep(8)  # Airflow notices on its next heartbeat
            rc, components = status(platform)
            assert rc == 1, components
            assert not components["postgresql"]["healthy"]
            assert "nothing accepts connections" in components["postgresql"]["detail"].lower(), components
            assert not components["mlflow"]["healthy"]
            assert "cannot reach its backend store (PostgreSQL)" in components["mlflow"]["detail"], components
            assert not components["airflow"]["healthy"]
            assert "metadatabase unhealthy" in components["airflow"]["detail"], components
            assert components["serving"]["healthy"], components  # it serves the model it has
            assert components["s3"]["healthy"], components
            time.sleep(max(0.0, 25 - (time.monotonic() - stopped)))
        finally:
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, CLUSTER, "start"], check=True, timeout=120
            )
        recovered = wait_all_up(platform)
    assert load.outcomes["200"] > 0
    assert set(load.outcomes) == {"200"}, f"failed requests while PostgreSQL was down: {dict(load.outcomes)}"
    assert recovered["airflow"]["healthy"]
    print(f"\nPostgreSQL down ~25 s: {dict(load.outcomes)}")


def test_mlflow_down_is_told_serving_keeps_answering_and_recovers(platform: Platform) -> None:
    wait_all_up(platform)
    with PredictLoad(platform.url("serving"), {"features": FEATURES}, pause=0.01) as load:
        supervisorctl(platform, "stop", "mlflow-server")
        try:
            rc, components = status(platform)
            assert rc == 1, components
            assert not components["mlflow"]["healthy"]
            assert "nothing answers at" in components["mlflow"]["detail"], components
            assert components["serving"]["healthy"], components
            time.sleep(20)  # serving polls the registry every 5 s meanwhile
        finally:
            supervisorctl(platform, "start", "mlflow-server")
        wait_all_up(platform)
    assert load.outcomes["200"] > 0
    assert set(load.outcomes) == {"200"}, f"failed requests while MLflow was down: {dict(load.outcomes)}"
    print(f"\nMLflow down ~20 s: {dict(load.outcomes)}")
