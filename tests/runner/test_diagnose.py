"""`python -m runner diagnose`: the probe pods, launched through a real kube-apiserver.

The loopback apiserver (tests/support/kube_apiserver.py) has no scheduler and no kubelet: the
pods are created with the workloads' Secret references, stay Pending, and the command must say so
in words, fail, and leave nothing behind. That a pod really runs the probe and prints its verdicts
is for a cluster with nodes (the cluster harness); the probe itself is proven on network
namespaces (tests/network/test_diagnose_probe.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "collections/ansible_collections/mlopslab/platform/plugins/module_utils/connectivity.py"
IMAGE = "localhost/mlops-lab/diagnose:test"


def inventory(tmp: Path, kube: Any, training: str, serving: str, **extra: Any) -> Path:
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
        "mlopslab_diagnose_image": IMAGE,
        "mlopslab_namespace_training": training,
        "mlopslab_namespace_serving": serving,
        "mlopslab_nfs_host": "{{ hostvars[groups['nfs_servers'][0]]['ansible_host'] }}",
        "mlopslab_airflow_logs_path": "/mnt/nfs_share/mlops/airflow/logs",
        "mlopslab_airflow_logs_volume": "nfs",
        "mlopslab_s3_bucket": "mlflow-artifacts-lab",
        "mlopslab_s3_artifact_prefix": "mlflow",
        # nothing schedules pods here: do not wait the lab's 180 s
        "connectivity_diagnosis_timeout": 10,
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


def test_the_probe_pods_carry_the_workloads_secrets_and_are_cleaned_up(kube_apiserver: Any, tmp_path: Path) -> None:
    from kubernetes import client

    training, serving = (
        kube_apiserver.create_namespace("diag-training"),
        kube_apiserver.create_namespace("diag-serving"),
    )
    with kube_apiserver.api_client() as api:
        core = client.CoreV1Api(api)

        kept = inventory(tmp_path / "kept", kube_apiserver, training, serving, connectivity_diagnosis_cleanup=False)
        rc, text = diagnose(kept, tmp_path / "kept")
        assert rc == 1, text
        for namespace in (training, serving):
            assert (
                f"{namespace}: The probe pod did not print its verdicts within 10 s: Pending "
                "(NotScheduled: no scheduler has placed the pod on a node)"
            ) in text, text
        assert "stage diagnose failed" in text, text

        pod = core.read_namespaced_pod("mlopslab-diagnose", training)
        (container,) = pod.spec.containers
        assert container.image == IMAGE
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

        # a run with the default clean-up replaces the kept pod, then leaves nothing
        cleaned = inventory(tmp_path / "cleaned", kube_apiserver, training, serving)
        rc, text = diagnose(cleaned, tmp_path / "cleaned")
        assert rc == 1, text
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
