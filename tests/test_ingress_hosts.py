"""mlopslab.platform.ingress_hosts: the Ingress names in a hosts file, for a node that runs the controller.

The role edits a temporary hosts file (ingress_hosts_file), never this machine's /etc/hosts. The
node is given, or (marker ``cluster``) read from the real single-node cluster
(tests/support/kube_cluster.py): a controller pod with ingress-nginx's labels really runs and
becomes Ready on the node, beside a control plane Node object tainted NoSchedule that nothing runs on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.role_play import apply_role

NAMES = ["mlflow.local", "airflow.local", "fastapi.local"]
HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n# a comment the role must keep\n10.1.2.3 printer.lab\n"


def apply(tmp: Path, *args: str, **role_vars: Any) -> tuple[int, int, str]:
    variables = {"ingress_hosts_file": str(tmp / "hosts"), "ingress_hosts_names": NAMES, **role_vars}
    result = apply_role("mlopslab.platform.ingress_hosts", variables, tmp, *args)
    return result.rc, result.changed, result.text


def block(address: str) -> str:
    return (
        "# BEGIN mlops-lab ingress host names\n"
        f"{address} mlflow.local airflow.local fastapi.local\n"
        "# END mlops-lab ingress host names\n"
    )


def test_the_names_are_written_once_and_taken_back(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)

    rc, changed, text = apply(tmp_path, "--check", ingress_hosts_address="198.51.100.132")
    assert (rc, changed) == (0, 1), text
    assert hosts.read_text() == HOSTS

    rc, changed, text = apply(tmp_path, ingress_hosts_address="198.51.100.132")
    assert (rc, changed) == (0, 1), text
    assert hosts.read_text() == HOSTS + block("198.51.100.132")
    assert "open http://mlflow.local, http://airflow.local, http://fastapi.local" in text, text

    rc, changed, text = apply(tmp_path, ingress_hosts_address="198.51.100.132")
    assert (rc, changed) == (0, 0), text

    # another node: the line is replaced, not added
    rc, changed, text = apply(tmp_path, ingress_hosts_address="198.51.100.133")
    assert (rc, changed) == (0, 1), text
    assert hosts.read_text() == HOSTS + block("198.51.100.133")

    rc, changed, text = apply(tmp_path, ingress_hosts_state="absent")
    assert (rc, changed) == (0, 1), text
    assert hosts.read_text() == HOSTS


def test_bad_names_are_refused_naming_the_variable(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text(HOSTS)
    rc, _, text = apply(tmp_path, ingress_hosts_names=["mlflow local"], ingress_hosts_address="198.51.100.132")
    assert rc != 0
    assert "ingress_hosts_names must be host names such as mlflow.local" in text, text


@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_the_node_that_runs_the_controller_is_found(kube_cluster: Any, tmp_path: Path) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    namespace = kube_cluster.create_namespace("ingress")
    tainted = "mlih-control-plane"
    node, address = kube_cluster.node_name, kube_cluster.node_ip
    with kube_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        try:
            core.create_node({"metadata": {"name": tainted}, "spec": {"taints": [
                {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}})  # fmt: skip
            tainted_address = {"type": "InternalIP", "address": "198.51.100.131"}
            core.patch_node_status(tainted, {"status": {"addresses": [tainted_address]}})
            settings = {
                "ingress_hosts_namespace": namespace,
                "ingress_hosts_kubeconfig": str(kube_cluster.kubeconfig),
            }
            rc, _, text = apply(tmp_path, **settings)
            assert rc != 0, text
            assert f"No ready ingress controller pod in namespace {namespace}" in text, text
            assert hosts.read_text() == HOSTS

            labels = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
            core.create_namespaced_pod(namespace, {
                "metadata": {"name": "ingress-nginx-controller-mlih", "labels": labels},
                "spec": {"nodeName": node, "containers": [{
                    "name": "controller", "image": kube_cluster.images["toolbox"][0],
                    "imagePullPolicy": "Never", "command": ["sleep", "infinity"]}]},
            })  # fmt: skip
            deadline = time.monotonic() + 120
            while not any(
                c.type == "Ready" and c.status == "True"
                for c in core.read_namespaced_pod("ingress-nginx-controller-mlih", namespace).status.conditions or []
            ):
                assert time.monotonic() < deadline, "the controller pod did not become Ready"
                time.sleep(1)
            rc, changed, text = apply(tmp_path, **settings)
            assert (rc, changed) == (0, 1), text
            assert hosts.read_text() == HOSTS + block(address)
            used = f"Use {node} ({address}): it runs the ready controller pod ingress-nginx-controller-mlih"
            assert used in text, text
            # (the node controller may add its own not-ready taints to a Node without a kubelet)
            assert f"Not: {tainted} (198.51.100.131): it has the taint " in text, text
            assert "node-role.kubernetes.io/control-plane:NoSchedule" in text, text
            rc, changed, text = apply(tmp_path, **settings)
            assert (rc, changed) == (0, 0), text
        finally:
            try:
                core.delete_node(tainted)
            except ApiException as exc:
                if exc.status != 404:
                    raise
            core.delete_namespace(namespace)
