"""Reads what a cluster really uses from its objects (k8s_info results): the pod network, what
holds the ingress ports on the nodes (both for the k8s_node role, before anything depends on
them: the SNAT rule matches a pod CIDR, and ingress-nginx binds ports 80/443 on every node), and
which node's address reaches the ingress controller (for the ingress_hosts role).
"""

from __future__ import annotations

import ipaddress
from typing import Any


def _ipv4(cidr: str) -> bool:
    try:
        return ipaddress.ip_network(cidr, strict=False).version == 4
    except ValueError:
        return False


def k8s_pod_networks(
    ippools: list[dict[str, Any]], installations: list[dict[str, Any]], nodes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The IPv4 pod networks, from the first source that has any: enabled Calico IPPools, the
    Tigera Installation's pools, the nodes' spec.podCIDR(s). ``{"source": str, "networks": [{cidr, where}]}``."""
    networks = [
        {"cidr": pool["spec"]["cidr"], "where": f"Calico IPPool {pool['metadata']['name']} spec.cidr"}
        for pool in ippools
        if (pool.get("spec") or {}).get("cidr") and not pool["spec"].get("disabled") and _ipv4(pool["spec"]["cidr"])
    ]
    if networks:
        return {"source": "Calico IPPools", "networks": networks}
    for installation in installations:
        pools = ((installation.get("spec") or {}).get("calicoNetwork") or {}).get("ipPools") or []
        networks += [
            {
                "cidr": pool["cidr"],
                "where": f"Installation {installation['metadata']['name']} spec.calicoNetwork.ipPools"
                + (f" {pool['name']}" if pool.get("name") else ""),
            }
            for pool in pools
            if pool.get("cidr") and not pool.get("disabled") and _ipv4(pool["cidr"])
        ]
    if networks:
        return {"source": "the Tigera Installation", "networks": networks}
    for node in nodes:
        spec = node.get("spec") or {}
        for cidr in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []):
            if _ipv4(cidr):
                networks.append({"cidr": cidr, "where": f"node {node['metadata']['name']} spec.podCIDR"})
    networks.sort(key=lambda n: ipaddress.ip_network(n["cidr"], strict=False))
    return {"source": "the nodes' podCIDR" if networks else "", "networks": networks}


def k8s_pod_network_cover(networks: dict[str, Any]) -> str:
    """The smallest network holding every pod network found ("" when none): what mlopslab_pod_cidr
    should at least be. For per-node podCIDRs the cluster's own range (--cluster-cidr) is larger."""
    found = [ipaddress.ip_network(n["cidr"], strict=False) for n in networks.get("networks", [])]
    if not found:
        return ""
    cover = found[0]
    while not all(n.subnet_of(cover) for n in found):  # type: ignore[arg-type]
        cover = cover.supernet()
    return str(cover)


def k8s_pod_network_mismatches(networks: dict[str, Any], assumed: str) -> list[dict[str, Any]]:
    """The pod networks that do not lie inside ``assumed`` (the inventory's pod CIDR)."""
    wanted = ipaddress.ip_network(assumed)
    return [
        n for n in networks.get("networks", []) if not ipaddress.ip_network(n["cidr"], strict=False).subnet_of(wanted)
    ]


def _container_ports(pod_spec: dict[str, Any]) -> list[tuple[int, str]]:
    """(port, how) a pod spec holds on its node: hostPort, or containerPort under hostNetwork."""
    found = []
    for container in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append((int(port["hostPort"]), "hostPort"))
            elif pod_spec.get("hostNetwork") and port.get("containerPort"):
                found.append((int(port["containerPort"]), "hostNetwork"))
    return found


def k8s_ingress_port_holders(
    nodes: list[dict[str, Any]],
    helmcharts: list[dict[str, Any]],
    daemonsets: list[dict[str, Any]],
    services: list[dict[str, Any]],
    ports: list[int],
    own_namespace: str,
) -> dict[str, Any]:
    """What holds ``ports`` on the nodes besides the platform's ingress controller.

    ``{"k3s": [node names], "holders": [words, one per finding]}``: k3s nodes (kubeletVersion
    ``+k3s`` or the ``node.kubernetes.io/instance-type: k3s`` label), k3s's ``kube-system/traefik``
    HelmChart, DaemonSets outside ``own_namespace`` that hold a port (ServiceLB's ``svclb-*``
    hold them with hostPort), and LoadBalancer Services on those ports.
    """
    wanted = {int(p) for p in ports}
    k3s = [
        node["metadata"]["name"]
        for node in nodes
        if "+k3s" in (((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion") or "")
        or ((node.get("metadata") or {}).get("labels") or {}).get("node.kubernetes.io/instance-type") == "k3s"
    ]
    holders = []
    for chart in helmcharts:
        meta = chart.get("metadata") or {}
        if meta.get("name") == "traefik" and meta.get("namespace") == "kube-system":
            holders.append("k3s's bundled Traefik (HelmChart kube-system/traefik)")
    for ds in daemonsets:
        meta = ds.get("metadata") or {}
        if meta.get("namespace") == own_namespace:
            continue
        pod_spec = (((ds.get("spec") or {}).get("template") or {}).get("spec")) or {}
        held = sorted({f"{port} ({how})" for port, how in _container_ports(pod_spec) if port in wanted})
        if held:
            what = "k3s's ServiceLB" if meta.get("name", "").startswith("svclb-") else "DaemonSet"
            holders.append(f"{what} {meta.get('namespace')}/{meta.get('name')} holds {', '.join(held)} on every node")
    for svc in services:
        meta = svc.get("metadata") or {}
        spec = svc.get("spec") or {}
        if meta.get("namespace") == own_namespace or spec.get("type") != "LoadBalancer":
            continue
        held = sorted({int(p["port"]) for p in spec.get("ports") or [] if int(p.get("port", 0)) in wanted})
        if held:
            holders.append(
                f"LoadBalancer Service {meta.get('namespace')}/{meta.get('name')} on {', '.join(map(str, held))}"
            )
    return {"k3s": k3s, "holders": holders}


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


def _node_address(node: dict[str, Any]) -> str:
    addresses = (node.get("status") or {}).get("addresses") or []
    for kind in ("InternalIP", "ExternalIP"):
        for address in addresses:
            if address.get("type") == kind and address.get("address"):
                return str(address["address"])
    return ""


# Taints every DaemonSet pod tolerates (the DaemonSet controller adds these tolerations itself).
_DAEMONSET_TOLERATED = {
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/network-unavailable",
}


def _no_schedule_taints(node: dict[str, Any]) -> list[str]:
    """The taints that keep a DaemonSet without matching tolerations off the node."""
    taints = (node.get("spec") or {}).get("taints") or []
    return [
        f"{t['key']}{'=' + t['value'] if t.get('value') else ''}:{t['effect']}"
        for t in taints
        if t.get("effect") in ("NoSchedule", "NoExecute") and t.get("key") not in _DAEMONSET_TOLERATED
    ]


def k8s_ingress_node(pods: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Which node's address reaches the ingress controller (a hostNetwork DaemonSet: on the nodes
    that run a ready controller pod), and why the others do not.

    ``{"address", "node", "pod", "serving": [node names], "not_serving": [words]}``; address is ""
    when no controller pod is ready.
    """
    by_name = {node["metadata"]["name"]: node for node in nodes}
    ready = sorted((p for p in pods if _ready(p)), key=lambda p: (p.get("spec") or {}).get("nodeName") or "")
    serving = {}
    for pod in ready:
        node_name = (pod.get("spec") or {}).get("nodeName") or ""
        address = (pod.get("status") or {}).get("hostIP") or _node_address(by_name.get(node_name, {}))
        if node_name and address and node_name not in serving:
            serving[node_name] = (address, pod["metadata"]["name"])
    not_serving = []
    for name in sorted(set(by_name) - set(serving)):
        taints = _no_schedule_taints(by_name[name])
        why = (
            f"it has the taint {', '.join(taints)}, which the DaemonSet does not tolerate"
            if taints
            else ("no ready controller pod runs there")
        )
        not_serving.append(f"{name} ({_node_address(by_name[name]) or 'no address'}): {why}")
    first = next(iter(serving.items()), None)
    return {
        "address": first[1][0] if first else "",
        "node": first[0] if first else "",
        "pod": first[1][1] if first else "",
        "serving": sorted(serving),
        "not_serving": not_serving,
    }


class FilterModule:
    """mlopslab.platform cluster-reading filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "k8s_pod_networks": k8s_pod_networks,
            "k8s_pod_network_mismatches": k8s_pod_network_mismatches,
            "k8s_pod_network_cover": k8s_pod_network_cover,
            "k8s_ingress_port_holders": k8s_ingress_port_holders,
            "k8s_ingress_node": k8s_ingress_node,
        }
