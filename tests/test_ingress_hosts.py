"""mlopslab.platform.ingress_hosts: the Ingress names in a hosts file, for a node that runs the controller.

The role edits a temporary hosts file (ingress_hosts_file), never this machine's /etc/hosts. The
node is given, or (marker ``k8s``) read from the loopback kube-apiserver with a control plane node
tainted NoSchedule, a worker, and a Ready ingress-nginx controller pod bound to the worker (the
apiserver has no kubelet: the pod's status is written by the test, as a kubelet would).
"""

from __future__ import annotations

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


@pytest.mark.k8s
@pytest.mark.timeout(900)
def test_the_node_that_runs_the_controller_is_found(kube_apiserver: Any, tmp_path: Path) -> None:
    from kubernetes import client

    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    namespace = kube_apiserver.create_namespace("ingress")
    nodes = {"mlih-control-plane": "198.51.100.131", "mlih-worker": "198.51.100.132"}
    with kube_apiserver.api_client() as api:
        core = client.CoreV1Api(api)
        try:
            for name, address in nodes.items():
                taints = (
                    [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
                    if "control" in name
                    else []
                )
                core.create_node({"metadata": {"name": name}, "spec": {"taints": taints}})
                core.patch_node_status(name, {"status": {"addresses": [{"type": "InternalIP", "address": address}]}})
            settings = {
                "ingress_hosts_namespace": namespace,
                "ingress_hosts_kubeconfig": str(kube_apiserver.kubeconfig),
            }
            rc, _, text = apply(tmp_path, **settings)
            assert rc != 0, text
            assert f"No ready ingress controller pod in namespace {namespace}" in text, text
            assert hosts.read_text() == HOSTS

            labels = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
            core.create_namespaced_pod(namespace, {
                "metadata": {"name": "ingress-nginx-controller-mlih", "labels": labels},
                "spec": {"nodeName": "mlih-worker", "hostNetwork": True,
                         "containers": [{"name": "controller", "image": "registry.k8s.io/ingress-nginx/controller"}]},
            })  # fmt: skip
            core.patch_namespaced_pod_status("ingress-nginx-controller-mlih", namespace, {"status": {
                "phase": "Running", "hostIP": nodes["mlih-worker"], "podIP": nodes["mlih-worker"],
                "conditions": [{"type": "Ready", "status": "True"}],
            }})  # fmt: skip
            rc, changed, text = apply(tmp_path, **settings)
            assert (rc, changed) == (0, 1), text
            assert hosts.read_text() == HOSTS + block("198.51.100.132")
            assert (
                "Use mlih-worker (198.51.100.132): it runs the ready controller pod ingress-nginx-controller-mlih"
                in (text)
            ), text
            assert (
                "Not: mlih-control-plane (198.51.100.131): it has the taint node-role.kubernetes.io/control-plane:"
                "NoSchedule, which the DaemonSet does not tolerate"
            ) in text, text
            rc, changed, text = apply(tmp_path, **settings)
            assert (rc, changed) == (0, 0), text
        finally:
            for name in nodes:
                core.delete_node(name)
            core.delete_namespace(namespace)
