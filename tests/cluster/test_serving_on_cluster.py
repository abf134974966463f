"""The lab's serving release on the real single-node cluster, through `python -m runner`.

With the lab inventory's group_vars and the harness's hosts (tests/support/harness_lab.py: the node
as an ssh host, the control node local, a generated vault, ``mlopslab_releases: [serving]`` since
CI cannot download the upstream charts), and MLflow running on the harness's host address (which
pods reach, as the lab's pods reach the MLflow Service):

- ``runner bootstrap --only cluster --only images``: the namespaces, Secrets and log volume; the
  platform's images built on the control node (tests/images built them already in a full run:
  their content tags are in podman's storage) and loaded into the node's containerd over ssh (the
  registry-less path), so kubelet runs them without a registry;
- ``runner bootstrap --only platform`` installs charts/serving through the release path
  (helm_release, the release watch), with the lab's values, on an **empty registry**; then the
  first_champion Job (the Airflow image, ``via: direct`` since the harness runs no Airflow) trains,
  gates and promotes the first champion and notifies serving;
- both replicas load the champion and become Ready; the seed's request through the Service gets a
  prediction with its version in a header;
- under load through the Service (kube-proxy), with no failed request: a new champion reached by
  one replica (POST /reload) is served by every replica (GET /replicas); `python -m runner train
  --via job` runs two experiments at once as Jobs in the training namespace (logs followed, exit
  codes 0 and 3 from the gate's decisions), and the promoted one is served by every replica; a
  rolling restart with the PodDisruptionBudget in force, a Helm upgrade and `helm rollback` each
  replace the pods;
- a second bootstrap of the three stages and the smoke changes nothing (the Job says "kept"); the
  smoke stage finds every replica serving the champion and gets the seed's prediction, through the
  serving Service's address with the Ingress's host name (the harness has no ingress controller);
- ``python -m runner status`` shows the release deployed with both pods Ready (from Helm's record
  in the cluster), and not installed after ``python -m runner down``, which uninstalls the release
  and keeps the namespaces' Secrets; a second down changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.harness_lab import LAB_VALUES as LAB
from tests.support.harness_lab import HarnessLab, harness_lab
from tests.support.kube_cluster import KubeCluster
from tests.support.mlflow_server import MlflowServer, register_iris_model, start_mlflow_server
from tests.support.serving_app import PredictLoad

pytestmark = [pytest.mark.cluster, pytest.mark.mlflow, pytest.mark.images, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
MODEL = LAB["mlopslab_model_name"]
NAMESPACES = (LAB["mlopslab_namespace_training"], LAB["mlopslab_namespace_serving"], LAB["mlopslab_namespace_ingress"])
SERVING_NS = LAB["mlopslab_namespace_serving"]
RELEASE = "iris-serving"
LOG_PV = "airflow-logs-pv"
SEED_REQUEST = {"features": [5.1, 3.5, 1.4, 0.2]}


@pytest.fixture(scope="module")
def mlflow_on_host(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-on-host"), host=kube_cluster.host_ip)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lab(
    kube_cluster: KubeCluster, mlflow_on_host: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HarnessLab]:
    """The lab inventory on the harness (tests/support/harness_lab.py), with MLflow on the host."""
    overrides = {
        # Where this harness differs from the lab: MLflow runs on the host.
        "serving_release_mlflow_tracking_uri": mlflow_on_host.url,
        # No Airflow on the harness (mlopslab_releases: serving): the first champion trains in the
        # Job's pod, with the environment the DAG's task pods get in the lab.
        "first_champion_train_args": ["--n-estimators", "20"],
        "first_champion_env": [
            {"name": "MLFLOW_TRACKING_URI", "value": mlflow_on_host.url},
            {"name": "MLOPSLAB_SERVING_URL", "value": f"http://{RELEASE}.{SERVING_NS}.svc.cluster.local"},
            {
                "name": "MLOPSLAB_SERVING_RELOAD_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "airflow-serving-reload-token", "key": "token"}},
            },
        ],
    }
    yield harness_lab(tmp_path_factory.mktemp("lab-on-cluster"), kube_cluster, overrides=overrides)
    for ns in NAMESPACES:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    kube_cluster.kubectl("delete", "pv", LOG_PV, "--wait=false", check=False)


def _bootstrap(lab: HarnessLab, *stages: str) -> dict[str, dict[str, int]]:
    """`python -m runner bootstrap --only STAGE ...`; the counts of each stage it ran."""
    proc = lab.runner("bootstrap", *(arg for stage in stages for arg in ("--only", stage)))
    assert proc.returncode == 0, f"bootstrap {stages} failed:\n{(proc.stdout + proc.stderr)[-8000:]}"
    return lab.stages()


def _service_url(cluster: KubeCluster) -> str:
    ip = cluster.kubectl("-n", SERVING_NS, "get", "service", RELEASE, "-o", "jsonpath={.spec.clusterIP}").stdout
    return f"http://{ip}"


def _wait(what: str, condition: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except httpx.HTTPError as error:
            last = error
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last})")


def _agreed_on(http: httpx.Client, version: str) -> dict[str, Any] | None:
    view = http.get("/replicas").json()
    return view if view["agreed"] and view["version"] == version else None


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{' '.join(argv[:3])} failed:\n{proc.stderr}{proc.stdout}"
    return proc.stdout


def test_serving_release_comes_up_on_the_cluster_and_swaps_on_every_replica(
    kube_cluster: KubeCluster, mlflow_on_host: MlflowServer, lab: HarnessLab
) -> None:
    from mlflow import MlflowClient

    registry = MlflowClient(mlflow_on_host.url)
    assert registry.search_registered_models() == [], "the test starts from an empty registry"

    # (the images may be on the node already: tests/cluster/test_lab_bootstrap.py delivers the same tags)
    assert _bootstrap(lab, "cluster", "images")["cluster"]["changed"] > 0
    node_images = kube_cluster.ssh("ctr -n k8s.io images ls -q").stdout.split()
    serving_ref = next((ref for ref in node_images if "/mlops-lab/serving:" in ref), "")
    assert serving_ref, f"the serving image is not in the node's containerd: {node_images}"

    started = time.monotonic()
    assert _bootstrap(lab, "platform")["platform"]["changed"] > 0
    first = registry.get_model_version_by_alias(MODEL, "champion")
    assert first.version == "1", "the first_champion Job trained and promoted version 1"
    kube_cluster.kubectl(
        "-n", SERVING_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=600s", timeout=620
    )  # fmt: skip
    ready_after = time.monotonic() - started
    pods = json.loads(kube_cluster.kubectl("-n", SERVING_NS, "get", "pods", "-o", "json").stdout)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == 2, [p["metadata"]["name"] for p in pods]
    assert {c["image"] for p in running for c in p["spec"]["containers"]} == {serving_ref}
    job_log = kube_cluster.kubectl("-n", NAMESPACES[0], "logs", "job/first-champion").stdout
    assert '"decision": "promoted"' in job_log, job_log[-3000:]

    base = _service_url(kube_cluster)
    helm = [str(kube_cluster.bin_dir / "helm"), f"--kubeconfig={kube_cluster.kubeconfig}", "-n", SERVING_NS]

    def rolled_out() -> None:
        kube_cluster.kubectl(
            "-n", SERVING_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s", timeout=320
        )  # fmt: skip

    with httpx.Client(base_url=base, timeout=10) as http, PredictLoad(base, SEED_REQUEST, timeout=10) as load:
        response = http.post("/predict", json=SEED_REQUEST)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == first.version
        view = _wait("both replicas on version 1", lambda: http.get("/replicas").json(), 60)
        assert (view["agreed"], view["version"]) == (True, first.version), view

        # Alias move 2: the reload reaches one replica through the Service, its peers follow.
        second = register_iris_model(mlflow_on_host.url, MODEL, n_estimators=20, random_state=7)
        token = lab.vault["vault_serving_reload_token"]
        reloaded = http.post("/reload", headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert reloaded.status_code == 200, reloaded.text
        swapped = _wait("every replica on version 2", lambda: _agreed_on(http, second.version), 60)

        # Alias move 3, and a run the gate rejects, at once: `runner train --via job`, two Jobs in
        # the training namespace running the pipeline; the promoted one tells serving itself.
        def train(run_name: str, *args: str) -> subprocess.CompletedProcess[str]:
            return lab.runner("train", "--via", "job", "--run-name", run_name, *args, timeout=1200)

        with ThreadPoolExecutor(2) as pool:
            # (tolerance 0.5: the held-out accuracy beside version 2's may differ by a sample or two)
            good = pool.submit(train, "exp-1", "--n-estimators", "20", "--tolerance", "0.5")
            weak = pool.submit(train, "exp-weak", "--n-estimators", "1", "--max-depth", "1")
        promoted, rejected = good.result(), weak.result()
        assert promoted.returncode == 0, promoted.stdout[-3000:]
        assert "promoted: version" in promoted.stdout, promoted.stdout[-3000:]
        assert "log follows" in promoted.stdout  # the pod's log, as it came
        assert rejected.returncode == 3, rejected.stdout[-3000:]
        assert "rejected: version" in rejected.stdout, rejected.stdout[-3000:]
        third = registry.get_model_version_by_alias(MODEL, "champion")
        assert third.version not in (first.version, second.version)
        assert registry.get_run(str(third.run_id)).info.run_name == "exp-1"
        _wait("every replica on the trained version", lambda: _agreed_on(http, third.version), 60)

        # A rolling restart with the PDB in force, then a Helm upgrade and its rollback: pods are
        # replaced three times while the load runs.
        pdb = kube_cluster.kubectl("-n", SERVING_NS, "get", "pdb", RELEASE, "-o", "jsonpath={.spec.minAvailable}")
        assert pdb.stdout, "the release has a PodDisruptionBudget"
        kube_cluster.kubectl("-n", SERVING_NS, "rollout", "restart", f"deployment/{RELEASE}")
        rolled_out()
        revision = int(json.loads(_run(*helm, "history", RELEASE, "-o", "json"))[-1]["revision"])
        _run(*helm, "upgrade", RELEASE, str(REPO / "charts/serving"), "--reuse-values", "--wait", "--timeout=5m",
             "--set-string", "podAnnotations.mlops-lab/test=upgraded")  # fmt: skip
        _run(*helm, "rollback", RELEASE, str(revision), "--wait", "--timeout=5m")
        values = json.loads(_run(*helm, "get", "values", RELEASE, "-o", "json"))
        assert "mlops-lab/test" not in (values.get("podAnnotations") or {}), values.get("podAnnotations")
        rolled_out()
        _wait("every replica on the trained version", lambda: _agreed_on(http, third.version), 60)
        time.sleep(2)
    assert load.failed == 0, load.failures[:5]
    assert load.ok > 200, load.ok
    print(
        f"serving on the cluster: Ready {ready_after:.0f} s after install; under load: {load.ok} requests, "
        f"0 failed, over alias moves to v{second.version} (reload) and v{third.version} (runner train --via job), "
        f"a rolling restart, a helm upgrade and its rollback; replicas {swapped}"
    )

    # A second bootstrap changes nothing (the first champion's Job says "kept"), and its smoke stage
    # finds the champion served by every replica and answered with. The smoke goes to the ingress's
    # address with the Ingress's host name as Host header; the harness has no ingress controller
    # (ingress-nginx cannot be downloaded), so the serving Service's address takes its place.
    lab.set_vars(mlopslab_ingress_address=base.removeprefix("http://"))
    again = _bootstrap(lab, "cluster", "images", "platform", "smoke")
    assert {stage: counts["changed"] for stage, counts in again.items() if counts["changed"]} == {}, again
    assert again["smoke"]["ok"] > 0, again
    smoke_log = lab.logs[-1].read_text()
    serving_name = "fastapi." + LAB["mlopslab_ingress_domain"]
    for line in (f"Serving docs:  http://{serving_name}/docs", f"MLflow UI:     {mlflow_on_host.url}/"):
        assert line in smoke_log, smoke_log[-3000:]
    assert "Airflow UI" not in smoke_log, "the harness runs no Airflow"

    # `python -m runner status` reads the release from Helm's own record in the cluster: deployed,
    # both pods Ready. (S3 is pointed at a closed port of the host for it: the lab's endpoint is AWS.)
    lab.set_vars(mlopslab_s3_endpoint_url=f"http://{kube_cluster.host_ip}:9")
    status = lab.runner("status", "--json")
    releases = json.loads(status.stdout)["releases"]
    assert [(r["release"], r["namespace"], r["status"], r["ready"], r["pods"], r["healthy"]) for r in releases] == [
        (RELEASE, SERVING_NS, "deployed", 2, 2, True)
    ], status.stdout
    assert releases[0]["revision"] >= 1

    # `python -m runner down` in the lab: the releases go (serving here; the others were never
    # installed on the harness, which is no change), the namespaces and their Secrets stay, and a
    # second down changes nothing (the SNAT this module never applied stays absent on the node;
    # tests/cluster/test_lab_bootstrap.py takes an applied one back).
    secrets_before = _secret_names(kube_cluster)
    down = lab.runner("down")
    assert down.returncode == 0, (down.stdout + down.stderr)[-6000:]
    assert lab.stages()["down"]["changed"] == 1, lab.stages()
    assert _run(*helm, "list", "-q", "--all-namespaces").split() == []
    _wait(
        "the serving pods gone",
        lambda: not json.loads(kube_cluster.kubectl("-n", SERVING_NS, "get", "pods", "-o", "json").stdout)["items"],
        120,
    )
    assert _secret_names(kube_cluster) == secrets_before, "down removed a Secret"
    assert lab.runner("down").returncode == 0
    assert lab.stages()["down"]["changed"] == 0
    status = lab.runner("status", "--json")
    assert status.returncode == 1, status.stdout
    assert [(r["release"], r["status"], r["healthy"]) for r in json.loads(status.stdout)["releases"]] == [
        (RELEASE, "not installed", False)
    ], status.stdout


def _secret_names(cluster: KubeCluster) -> dict[str, list[str]]:
    """The Secrets of the platform's namespaces, without Helm's own release records."""
    names = {}
    for ns in NAMESPACES:
        items = json.loads(cluster.kubectl("-n", ns, "get", "secrets", "-o", "json").stdout)["items"]
        names[ns] = sorted(s["metadata"]["name"] for s in items if s["type"] != "helm.sh/release.v1")
    return names
