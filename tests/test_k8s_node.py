"""What the cluster really uses, read by mlopslab.platform.k8s_node from a real cluster.

playbooks/network.yml runs from a k8s_control host against the real single-node cluster
(tests/support/kube_cluster.py). Its own node's podCIDR (allocated by the controller manager from
the cluster's --cluster-cidr) is what the role reads when there is no IPPool. For k3s, the objects a
k3s cluster has are added for one test each: Node objects with a k3s kubelet version and podCIDRs in
10.42.0.0/16 (no kubelet behind them), a Calico IPPool, k3s's HelmChart kube-system/traefik and its
ServiceLB DaemonSet holding ports 80 and 443 with hostPort. The role only reads objects.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.crds import install_crd, ippool_crd, open_crd

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
NODES = {"mlk-server-0": "10.42.0.0/24", "mlk-agent-1": "10.42.1.0/24"}
POOL = "mlk-k3s-pool"


def network_checks(kube: Any, tmp: Path, pod_cidr: str, **extra: Any) -> tuple[int, str]:
    inventory = {
        "all": {
            "vars": {"mlopslab_pod_cidr": pod_cidr, "mlopslab_kubeconfig": str(kube.kubeconfig),
                     "mlopslab_calico_fix": "none"},
            "children": {
                "k8s_control": {
                    "hosts": {"control": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
                },
                "k8s_nodes": {"hosts": {}},
            },
        }
    }  # fmt: skip
    (tmp / "inventory.yml").write_text(yaml.safe_dump(inventory))
    args = ["-e", json.dumps(extra)] if extra else []
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "inventory.yml"), "playbooks/network.yml", *args],
        cwd=REPO, env={**kube.env(), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                       "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp")},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert re.search(r"control\s*:\s*ok=\d+", out), out
    return proc.returncode, " ".join(out.split())


@pytest.fixture
def k3s_cluster(kube_cluster: Any) -> Iterator[Any]:
    """The objects of a k3s cluster with its bundled Traefik, removed afterwards."""
    from kubernetes import client

    with kube_cluster.api_client() as api:
        install_crd(api, ippool_crd())
        install_crd(api, open_crd("helm.cattle.io", "HelmChart", "helmcharts"))
        core, apps, objects = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
        for name, cidr in NODES.items():
            core.create_node({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": name, "labels": {"node.kubernetes.io/instance-type": "k3s"}},
                              "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})  # fmt: skip
            core.patch_node_status(name, {"status": {"nodeInfo": {"kubeletVersion": "v1.31.4+k3s1"}}})
        objects.create_cluster_custom_object(
            "crd.projectcalico.org", "v1", "ippools",
            {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": POOL},
             "spec": {"cidr": "10.42.0.0/16", "ipipMode": "Always", "natOutgoing": True}},
        )  # fmt: skip
        objects.create_namespaced_custom_object(
            "helm.cattle.io", "v1", "kube-system", "helmcharts",
            {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
             "metadata": {"name": "traefik", "namespace": "kube-system"},
             "spec": {"chart": "https://%{KUBERNETES_API}%/static/charts/traefik.tgz",
                      "targetNamespace": "kube-system"}},
        )  # fmt: skip
        labels = {"svccontroller.k3s.cattle.io/svcname": "traefik", "app": "svclb-traefik-mlk"}
        apps.create_namespaced_daemon_set("kube-system", {
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "svclb-traefik-mlk", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [
                    {"name": "lb-tcp-80", "image": "rancher/klipper-lb:v0.4.9",
                     "ports": [{"name": "lb-tcp-80", "containerPort": 80, "hostPort": 80, "protocol": "TCP"}]},
                    {"name": "lb-tcp-443", "image": "rancher/klipper-lb:v0.4.9",
                     "ports": [{"name": "lb-tcp-443", "containerPort": 443, "hostPort": 443, "protocol": "TCP"}]},
                ]}}},
        })  # fmt: skip
        try:
            yield api
        finally:
            from kubernetes.client.rest import ApiException

            for delete in (
                lambda: apps.delete_namespaced_daemon_set("svclb-traefik-mlk", "kube-system"),
                lambda: objects.delete_namespaced_custom_object(
                    "helm.cattle.io", "v1", "kube-system", "helmcharts", "traefik"
                ),
                lambda: objects.delete_cluster_custom_object("crd.projectcalico.org", "v1", "ippools", POOL),
                *(lambda n=name: core.delete_node(n) for name in NODES),
            ):  # fmt: skip
                try:
                    delete()
                except ApiException as exc:
                    if exc.status != 404:
                        raise


def test_a_pod_network_other_than_the_inventorys_fails_with_both(k3s_cluster: Any, kube_cluster: Any,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    rc, text = network_checks(kube_cluster, tmp_path, "10.244.0.0/16")
    assert rc != 0, text
    assert (
        "The inventory assumes the pod network 10.244.0.0/16 (mlopslab_pod_cidr), but the cluster gives pods addresses "
        f"from 10.42.0.0/16 (Calico IPPool {POOL} spec.cidr)"
    ) in text, text
    assert "Set mlopslab_pod_cidr to 10.42.0.0/16 in the inventory's group_vars/all/main.yml" in text, text


def test_without_ippools_the_nodes_podcidr_is_read(kube_cluster: Any, tmp_path: Path) -> None:
    from kubernetes import client

    node = client.CoreV1Api(kube_cluster.api_client()).read_node(kube_cluster.node_name)
    subnet = node.spec.pod_cidr  # the controller manager's allocation from --cluster-cidr
    assert subnet, node.spec
    assert ipaddress.ip_network(subnet).subnet_of(ipaddress.ip_network(kube_cluster.pod_cidr)), subnet
    rc, text = network_checks(kube_cluster, tmp_path, "10.244.0.0/16", k8s_node_check_ingress_ports=False)
    assert rc != 0, text
    assert f"from {subnet} (node {kube_cluster.node_name} spec.podCIDR)" in text, text
    assert f"Set mlopslab_pod_cidr to {subnet} or the cluster's --cluster-cidr, which holds it" in text, text
    rc, text = network_checks(kube_cluster, tmp_path, kube_cluster.pod_cidr, k8s_node_check_ingress_ports=False)
    assert rc == 0, text
    assert (
        f"The pod network of the cluster ({subnet}, from the nodes' podCIDR) lies in {kube_cluster.pod_cidr}" in text
    ), text


def test_k3s_traefik_on_the_ingress_ports_is_reported_before_ingress_nginx(
    k3s_cluster: Any, kube_cluster: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    rc, text = network_checks(kube_cluster, tmp_path, "10.42.0.0/16")
    assert rc != 0, text
    assert "Ports 80/443, which the ingress controller binds on every node, are taken:" in text, text
    assert "k3s's bundled Traefik (HelmChart kube-system/traefik)" in text, text
    assert "k3s's ServiceLB kube-system/svclb-traefik-mlk holds 443 (hostPort), 80 (hostPort) on every node" in text
    assert "These are k3s nodes (mlk-agent-1, mlk-server-0)" in text, text
    assert "add `disable: [traefik, servicelb]` to /etc/rancher/k3s/config.yaml" in text, text

    # what the k3s fix leaves: no HelmChart, no svclb; the nodes are still k3s
    client.AppsV1Api(k3s_cluster).delete_namespaced_daemon_set("svclb-traefik-mlk", "kube-system")
    client.CustomObjectsApi(k3s_cluster).delete_namespaced_custom_object(
        "helm.cattle.io", "v1", "kube-system", "helmcharts", "traefik"
    )
    # (other suites share this apiserver and may leave DaemonSets of their own: report, do not fail)
    rc, text = network_checks(kube_cluster, tmp_path, "10.42.0.0/16", k8s_node_fail_on_ingress_conflict=False)
    assert rc == 0, text
    told = text.split("Tell whether something else holds the ingress ports")[-1]
    assert "HelmChart kube-system/traefik" not in told, text
    assert "svclb-traefik" not in told, text
    if "are taken" not in told:  # (what other suites left is told, but these are the k3s nodes' words)
        assert "(k3s nodes: mlk-agent-1, mlk-server-0; Traefik and ServiceLB are disabled)" in told, text
