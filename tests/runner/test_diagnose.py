"""`python -m runner diagnose`: the probe pods, launched on the real single-node cluster.

The pods run the harness's toolbox image (tests/support/kube_cluster.py: python3 and nothing of the
probe's clients), so what they can tell is bounded and known: first, before the workloads' Secrets
exist, kubelet refuses to start them and the command must say which object is missing, fail, and
keep the pods when asked; then, with the Secrets and the ConfigMap in place as k8s_secrets makes
them, the pods really run the probe with those values as environment, print one verdict per check
(each naming the target it read from the Secrets, and that the client library is missing), and
leave nothing behind. The probe's causes against real servers are proven on network namespaces
(tests/network/test_diagnose_probe.py).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
# An address only the test names (the pods never connect: the clients are missing).
DB_HOST = "198.51.100.142"
PROBE = REPO / "collections/ansible_collections/mlopslab/platform/plugins/module_utils/connectivity.py"


def inventory(tmp: Path, kube: Any, training: str, serving: str, **extra: Any) -> Path:
    """A lab-shaped inventory on the cluster; the diagnose image is the harness's toolbox."""
    path = tmp / "inventory"
    (path / "group_vars" / "all").mkdir(parents=True)
    hosts = {"all": {"children": {
        "k8s_control": {"hosts": {"control": {"ansible_connection": "local",
                                              "ansible_python_interpreter": sys.executable}}},
        "nfs_servers": {"hosts": {"nfs": {"ansible_host": "198.51.100.141"}}},
        "k8s_nodes": {"hosts": {}},
        "local_platform": {"hosts": {}},
    }}}  # fmt: skip
    (path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    values = {
        "mlopslab_kubeconfig": str(kube.kubeconfig),
        "mlopslab_diagnose_image": kube.images["toolbox"][0],
        "mlopslab_namespace_training": training,
        "mlopslab_namespace_serving": serving,
        "mlopslab_nfs_host": "{{ hostvars[groups['nfs_servers'][0]]['ansible_host'] }}",
        "mlopslab_airflow_logs_path": "/mnt/nfs_share/mlops/airflow/logs",
        "mlopslab_airflow_logs_volume": "nfs",
        "mlopslab_s3_bucket": "mlflow-artifacts-lab",
        "mlopslab_s3_artifact_prefix": "mlflow",
        # pods that cannot start: do not wait the lab's 180 s
        "connectivity_diagnosis_timeout": 20,
        **extra,
    }
    (path / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump(values))
    return path


def diagnose(inv: Path, tmp: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "diagnose", "-i", str(inv)],
        cwd=REPO, env={**os.environ, "MLOPSLAB_STATE_DIR": str(tmp / "state")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def workload_config(core: Any, training: str, serving: str, db_port: int) -> None:
    """The Secrets and the ConfigMap the probe pods read, with the keys k8s_secrets gives them."""
    password = secrets.token_urlsafe(16)
    uri = f"postgresql://airflow_user:{password}@{DB_HOST}:{db_port}/airflow_db"
    aws = {"AWS_ACCESS_KEY_ID": "AKIAMLOPSLABTEST", "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24),
           "AWS_DEFAULT_REGION": "eu-central-1", "MLFLOW_S3_ENDPOINT_URL": f"http://{DB_HOST}:{db_port}"}  # fmt: skip
    core.create_namespaced_secret(
        training, {"metadata": {"name": "airflow-db-secret"}, "stringData": {"connection": uri}}
    )
    core.create_namespaced_secret(
        training,
        {"metadata": {"name": "mlflow-db-secret"}, "stringData": {"username": "mlflow_user", "password": password}},
    )
    core.create_namespaced_config_map(
        training,
        {
            "metadata": {"name": "mlflow-db-config"},
            "data": {"host": DB_HOST, "port": str(db_port), "dbname": "mlflow_db"},
        },
    )
    for namespace in (training, serving):
        core.create_namespaced_secret(namespace, {"metadata": {"name": "aws-credentials-secret"}, "stringData": aws})


def test_the_probe_pods_carry_the_workloads_secrets_and_are_cleaned_up(kube_cluster: Any, tmp_path: Path) -> None:
    from kubernetes import client

    training, serving = (
        kube_cluster.create_namespace("diag-training"),
        kube_cluster.create_namespace("diag-serving"),
    )
    with kube_cluster.api_client() as api:
        core = client.CoreV1Api(api)

        # no Secrets yet: kubelet cannot start the containers, and the command names why
        kept = inventory(tmp_path / "kept", kube_cluster, training, serving, connectivity_diagnosis_cleanup=False)
        rc, text = diagnose(kept, tmp_path / "kept")
        assert rc == 1, text
        for namespace in (training, serving):
            assert f"{namespace}: The probe pod did not print its verdicts within 20 s:" in text, text
        assert "CreateContainerConfigError" in text, text
        assert "a Secret, ConfigMap or key the pod reads is missing: run the cluster stage (k8s_secrets) first" in text
        assert "stage diagnose failed" in text, text

        pod = core.read_namespaced_pod("mlopslab-diagnose", training)
        assert pod.spec.node_name == kube_cluster.node_name  # scheduled: only its Secrets were missing
        (container,) = pod.spec.containers
        assert container.image == kube_cluster.images["toolbox"][0]
        assert container.command == ["python3", "/probe/connectivity.py", "/probe/spec.json"]
        refs = {e.name: e.value_from for e in container.env if e.value_from is not None}
        assert refs["AIRFLOW_DB_URI"].secret_key_ref.name == "airflow-db-secret"
        assert refs["AIRFLOW_DB_URI"].secret_key_ref.key == "connection"
        assert refs["MLFLOW_DB_PASSWORD"].secret_key_ref.name == "mlflow-db-secret"
        assert refs["MLFLOW_DB_HOST"].config_map_key_ref.name == "mlflow-db-config"
        assert refs["POD_IP"].field_ref.field_path == "status.podIP"
        assert refs["HOST_IP"].field_ref.field_path == "status.hostIP"
        assert [source.secret_ref.name for source in container.env_from] == ["aws-credentials-secret"]
        assert not [e for e in container.env if e.value and ("PASSWORD" in e.name or "SECRET" in e.name)]
        assert pod.spec.security_context.run_as_non_root is True
        assert container.security_context.read_only_root_filesystem is True
        assert pod.spec.automount_service_account_token is False

        config = core.read_namespaced_config_map("mlopslab-diagnose", training)
        assert config.data["connectivity.py"].strip() == PROBE.read_text().strip()
        spec = json.loads(config.data["spec.json"])
        assert [check["kind"] for check in spec["checks"]] == ["postgresql", "postgresql", "nfs", "s3"]
        nfs = spec["checks"][2]
        assert (nfs["server"], nfs["path"], nfs["uid"], nfs["gid"]) == (
            "198.51.100.141", "/mnt/nfs_share/mlops/airflow/logs", 50000, 0,
        )  # fmt: skip
        serving_spec = json.loads(core.read_namespaced_config_map("mlopslab-diagnose", serving).data["spec.json"])
        assert [check["kind"] for check in serving_spec["checks"]] == ["s3"]

        # with the Secrets: the pods run the probe on the node with their values, replacing the kept
        # pods; the toolbox image has none of the clients, which each verdict names
        db_port = 15432
        workload_config(core, training, serving, db_port)
        cleaned = inventory(tmp_path / "cleaned", kube_cluster, training, serving, connectivity_diagnosis_timeout=120)
        rc, text = diagnose(cleaned, tmp_path / "cleaned")
        assert rc == 1, text
        target = f"{DB_HOST}:{db_port}"
        missing = "config - psycopg2 is not installed here."
        assert f"{training} / Airflow metadata database ({target}/airflow_db): {missing}" in text, text
        assert f"{training} / MLflow backend store ({target}/mlflow_db): {missing}" in text, text
        assert "nfs-cp is not installed here." in text, text
        assert f"{serving} / S3 artifacts (s3://mlflow-artifacts-lab/mlflow)" in text, text
        assert "did not print its verdicts" not in text, text
        assert "Causes found: config" in text, text
        for namespace in (training, serving):
            assert (
                core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=mlopslab-diagnose").items
                == []
            )
            assert (
                core.list_namespaced_config_map(
                    namespace, label_selector="app.kubernetes.io/name=mlopslab-diagnose"
                ).items
                == []
            )


def test_diagnose_needs_a_cluster_inventory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "diagnose", "-i", str(REPO / "inventories" / "local")],
        cwd=REPO, env={**os.environ, "MLOPSLAB_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout
    assert "has no k8s_control host: diagnose runs its pods on a cluster" in proc.stdout
