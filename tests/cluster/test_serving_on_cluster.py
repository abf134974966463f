"""The lab's serving release on the real single-node cluster, through the stages' own playbooks.

With the lab inventory's group_vars (inventories/lab) and the harness's hosts (the node as an ssh
host, the control node local), a generated vault, and MLflow running on the harness's host
address (which pods reach, as the lab's pods reach the MLflow Service):

- ``playbooks/cluster.yml --tags k8s_namespaces,k8s_secrets`` makes the namespaces and Secrets;
- ``playbooks/images.yml`` builds the serving and Airflow images on the control node and loads
  them into the node's containerd over ssh (the registry-less path), so kubelet runs them without
  a registry;
- ``playbooks/platform.yml --tags serving_release,first_champion`` installs charts/serving through
  the release path (helm_release, the release watch), with the lab's values, on an **empty
  registry**; then the first_champion Job (the Airflow image, ``via: direct`` here since the
  harness runs no Airflow) trains, gates and promotes the first champion and notifies serving;
- both replicas load the champion and become Ready; the seed's request through the Service gets a
  prediction with its version in a header;
- under load through the Service (kube-proxy), with no failed request: a new champion reached by
  one replica (POST /reload) is served by every replica (GET /replicas); `python -m runner train
  --via job` runs two experiments at once as Jobs in the training namespace (logs followed, exit
  codes 0 and 3 from the gate's decisions), and the promoted one is served by every replica; a
  rolling restart with the PodDisruptionBudget in force, a Helm upgrade and `helm rollback` each
  replace the pods;
- a second run of the platform playbook changes nothing (the Job says "kept");
- ``playbooks/down.yml`` (``python -m runner down``) uninstalls the release and keeps the
  namespaces' Secrets; a second down changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.images import podman_env, python_base
from tests.support.k8s_layer import recap
from tests.support.kube_cluster import KubeCluster, cache_root
from tests.support.mlflow_server import MlflowServer, register_iris_model, start_mlflow_server
from tests.support.serving_app import PredictLoad

pytestmark = [pytest.mark.cluster, pytest.mark.mlflow, pytest.mark.images, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
ROLE_DEFAULTS = REPO / "collections/ansible_collections/mlopslab/platform/roles/container_images/defaults/main.yml"
LAB = yaml.safe_load((REPO / "inventories/lab/group_vars/all/main.yml").read_text())
MODEL = LAB["mlopslab_model_name"]
NAMESPACES = (LAB["mlopslab_namespace_training"], LAB["mlopslab_namespace_serving"], LAB["mlopslab_namespace_ingress"])
SERVING_NS = LAB["mlopslab_namespace_serving"]
RELEASE = "iris-serving"
SEED_REQUEST = {"features": [5.1, 3.5, 1.4, 0.2]}


def _vault() -> dict[str, str]:
    """Test-time secrets for every vault variable the lab inventory wires."""
    keys = yaml.safe_load((REPO / "inventories/lab/vault.example.yml").read_text())
    return {key: f"test-{key}-{os.urandom(8).hex()}" for key in keys}


@pytest.fixture(scope="module")
def mlflow_on_host(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-on-host"), host=kube_cluster.host_ip)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lab(kube_cluster: KubeCluster, mlflow_on_host: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The generated inventory directory and the stages' runner."""
    work = tmp_path_factory.mktemp("lab-on-cluster")
    inventory = work / "inventory"
    inventory.mkdir()
    # The lab's group_vars as they are; the hosts are the harness's. The VMs' groups name the
    # harness host so that the lab's address variables resolve; no play here targets them.
    (inventory / "group_vars").symlink_to(REPO / "inventories/lab/group_vars")
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "all": {
            "children": {
                "nfs_servers": {"hosts": {"nfs-server": {"ansible_host": kube_cluster.host_ip}}},
                "db_servers": {"hosts": {"postgres-server": {"ansible_host": kube_cluster.host_ip}}},
                "k8s_nodes": {"hosts": {kube_cluster.node_name: kube_cluster.ansible_host_vars()}},
                "k8s_control": {"hosts": {"control": local}},
            }
        }
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    vault = _vault()
    every_image = yaml.safe_load(ROLE_DEFAULTS.read_text())["container_images_definitions"]
    overrides = {
        **vault,
        "mlopslab_kubeconfig": str(kube_cluster.kubeconfig),
        # Where this harness differs from the lab: MLflow runs on the host.
        "serving_release_mlflow_tracking_uri": mlflow_on_host.url,
        # No Airflow on the harness: the first champion trains in the Job's pod, with the
        # environment the DAG's task pods get in the lab.
        "first_champion_via": "direct",
        "first_champion_train_args": ["--n-estimators", "20"],
        "first_champion_env": [
            {"name": "MLFLOW_TRACKING_URI", "value": mlflow_on_host.url},
            {"name": "MLOPSLAB_SERVING_URL", "value": f"http://{RELEASE}.{SERVING_NS}.svc.cluster.local"},
            {
                "name": "MLOPSLAB_SERVING_RELOAD_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "airflow-serving-reload-token", "key": "token"}},
            },
        ],
        "container_images_base_image": python_base(),
        "container_images_work_dir": str(cache_root() / "container-images"),
        "container_images_node_become": False,
    }
    extra = work / "overrides.json"
    extra.write_text(json.dumps(overrides))
    extra.chmod(0o600)
    # `python -m runner train` takes no extra vars: the control node's host_vars carry the same.
    (inventory / "host_vars").mkdir()
    (inventory / "host_vars" / "control.json").write_text(json.dumps(overrides))
    (inventory / "host_vars" / "control.json").chmod(0o600)
    # The images stage delivers the images this test runs (the others are built and tested by
    # tests/images; the platform play still computes every reference from the checkout).
    (work / "images.json").write_text(
        json.dumps({"container_images_definitions": [d for d in every_image if d["name"] in ("serving", "airflow")]})
    )

    def run(playbook: str, *flags: str) -> dict[str, dict[str, int]]:
        env = {
            **kube_cluster.env(),  # KUBECONFIG, and PATH with the harness's helm
            "CONTAINERS_CONF": podman_env()["CONTAINERS_CONF"],
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
        }
        proc = subprocess.run(
            [
                str(Path(sys.executable).with_name("ansible-playbook")),
                f"playbooks/{playbook}",
                "-i",
                str(inventory),
                "-e",
                f"@{extra}",
                *flags,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        output = proc.stdout + proc.stderr
        (work / f"{playbook}.log").write_text(output)
        assert proc.returncode == 0, f"{playbook} {' '.join(flags)} failed:\n{output[-8000:]}"
        for value in vault.values():
            assert value not in output, f"a vault value appeared in the output of {playbook}"
        return recap(output)

    def train(run_name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m runner train --via job` on this inventory; the output is checked for vault values."""
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "train", "--via", "job", "-i", str(inventory), "--run-name", run_name,
             *args],
            cwd=REPO, env={**kube_cluster.env(), "MLOPSLAB_STATE_DIR": str(work / "state")},
            capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        (work / f"train-{run_name}.log").write_text(proc.stdout + proc.stderr)
        for value in vault.values():
            assert value not in proc.stdout + proc.stderr, "a vault value appeared in runner train's output"
        return proc

    yield run, vault, work, train
    for ns in NAMESPACES:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


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
    kube_cluster: KubeCluster, mlflow_on_host: MlflowServer, lab: Any
) -> None:
    run, vault, lab_dir, runner_train = lab
    from mlflow import MlflowClient

    registry = MlflowClient(mlflow_on_host.url)
    assert registry.search_registered_models() == [], "the test starts from an empty registry"

    assert run("cluster.yml", "--tags", "k8s_namespaces,k8s_secrets")["control"]["failed"] == 0
    images = run("images.yml", "-e", f"@{Path(lab_dir) / 'images.json'}")
    assert images["control"]["failed"] == 0
    node_images = kube_cluster.ssh("ctr -n k8s.io images ls -q").stdout.split()
    serving_ref = next((ref for ref in node_images if "/mlops-lab/serving:" in ref), "")
    assert serving_ref, f"the serving image is not in the node's containerd: {node_images}"

    started = time.monotonic()
    platform = run("platform.yml", "--tags", "serving_release,first_champion")
    assert platform["control"]["failed"] == 0
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
        token = vault["vault_serving_reload_token"]
        reloaded = http.post("/reload", headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert reloaded.status_code == 200, reloaded.text
        swapped = _wait("every replica on version 2", lambda: _agreed_on(http, second.version), 60)

        # Alias move 3, and a run the gate rejects, at once: `runner train --via job`, two Jobs in
        # the training namespace running the pipeline; the promoted one tells serving itself.
        with ThreadPoolExecutor(2) as pool:
            # (tolerance 0.5: the held-out accuracy beside version 2's may differ by a sample or two)
            good = pool.submit(runner_train, "exp-1", "--n-estimators", "20", "--tolerance", "0.5")
            weak = pool.submit(runner_train, "exp-weak", "--n-estimators", "1", "--max-depth", "1")
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

    # The release path is idempotent on a converged cluster.
    assert run("platform.yml", "--tags", "serving_release,first_champion")["control"]["changed"] == 0

    # `python -m runner down` in the lab: the releases go (serving here; the others were never
    # installed on the harness, which is no change), the namespaces and their Secrets stay, and a
    # second down changes nothing. --limit control: the node's SNAT is the network tests' part
    # (tests/network/test_calico_snat.py takes it back with the same state); the pod network
    # check of the network plays reads this cluster's own CIDR.
    secrets_before = _secret_names(kube_cluster)
    down_flags = ("--limit", "control", "-e", f"mlopslab_pod_cidr={kube_cluster.pod_cidr}")
    down = run("down.yml", *down_flags)["control"]
    assert (down["failed"], down["changed"]) == (0, 1), down
    assert _run(*helm, "list", "-q", "--all-namespaces").split() == []
    _wait(
        "the serving pods gone",
        lambda: not json.loads(kube_cluster.kubectl("-n", SERVING_NS, "get", "pods", "-o", "json").stdout)["items"],
        120,
    )
    assert _secret_names(kube_cluster) == secrets_before, "down removed a Secret"
    assert run("down.yml", *down_flags)["control"]["changed"] == 0


def _secret_names(cluster: KubeCluster) -> dict[str, list[str]]:
    """The Secrets of the platform's namespaces, without Helm's own release records."""
    names = {}
    for ns in NAMESPACES:
        items = json.loads(cluster.kubectl("-n", ns, "get", "secrets", "-o", "json").stdout)["items"]
        names[ns] = sorted(s["metadata"]["name"] for s in items if s["type"] != "helm.sh/release.v1")
    return names
