"""Merge patches for the Calico IPPool fix: on an IPPool, or on the Tigera operator's Installation.

The fix turns off the pool's encapsulation towards the VMs' network and turns on natOutgoing.
Which field carries the encapsulation depends on the pool: ``ipipMode`` for IPIP pools,
``vxlanMode`` for VXLAN pools (Calico refuses a pool with both on, so setting the wrong one
would either do nothing or break the pool). When the fix turns an encapsulation off, the kind it
was is remembered in an annotation, so that ``state: absent`` turns the same one back on.

With the Tigera operator of Calico 3.29 and later, whose ``Installation`` names its pools, the
IPPool objects are the operator's output and it reverts a direct edit. There the pool is changed
where the operator reads it, ``spec.calicoNetwork.ipPools[]`` of the ``Installation``, whose
fields are ``encapsulation`` (IPIP, IPIPCrossSubnet, VXLAN, VXLANCrossSubnet, None) and
``natOutgoing`` (Enabled, Disabled). Older operators list unnamed pools that they read at install
time only ("cannot be modified post-install"): there the IPPool itself is what to change.

Each filter returns the merge patch, ``{}`` when nothing differs (so ``changed`` is true exactly
when the object changes); ``calico_installation_patch`` returns ``None`` when the Installation
does not hold the pool (the operator does not manage it).
"""

from __future__ import annotations

import copy
from typing import Any

ANNOTATION = "mlopslab.platform/calico-vm-access-encapsulation"
MODES = ("Always", "CrossSubnet", "Never")


def _kind(active: str, recorded: str, configured: str) -> str:
    """IPIP or VXLAN: as configured, else as the pool has it on, else as the role recorded, else IPIP."""
    if configured in ("IPIP", "VXLAN"):
        return configured
    return active or recorded or "IPIP"


def _check(mode: str, revert_mode: str) -> None:
    for value in (mode, revert_mode):
        if value not in MODES:
            raise ValueError(f"encapsulation mode must be one of {', '.join(MODES)}, got {value!r}")


def _annotation_patch(annotations: dict[str, str], state: str, kind: str, turned_off: bool) -> dict[str, Any]:
    if state == "present" and turned_off and annotations.get(ANNOTATION) != kind:
        return {"annotations": {ANNOTATION: kind}}
    if state == "absent" and ANNOTATION in annotations:
        return {"annotations": {ANNOTATION: None}}
    return {}


def calico_ippool_patch(
    pool: dict[str, Any],
    state: str,
    mode: str,
    nat_outgoing: bool,
    revert_mode: str,
    revert_nat_outgoing: bool,
    encapsulation: str = "auto",
) -> dict[str, Any]:
    """The merge patch that gives a crd.projectcalico.org/v1 IPPool the wanted fields."""
    _check(mode, revert_mode)
    spec = pool.get("spec") or {}
    annotations = (pool.get("metadata") or {}).get("annotations") or {}
    # Calico omits a mode when it is Never and natOutgoing when it is false.
    ipip, vxlan = spec.get("ipipMode") or "Never", spec.get("vxlanMode") or "Never"
    active = "VXLAN" if vxlan != "Never" else ("IPIP" if ipip != "Never" else "")
    kind = _kind(active, annotations.get(ANNOTATION, ""), encapsulation)
    field = "vxlanMode" if kind == "VXLAN" else "ipipMode"
    current = {field: vxlan if kind == "VXLAN" else ipip, "natOutgoing": bool(spec.get("natOutgoing", False))}
    wanted = {
        field: mode if state == "present" else revert_mode,
        "natOutgoing": bool(nat_outgoing if state == "present" else revert_nat_outgoing),
    }
    patch: dict[str, Any] = {}
    spec_patch = {key: value for key, value in wanted.items() if current[key] != value}
    if spec_patch:
        patch["spec"] = spec_patch
    turned_off = current[field] != "Never" and wanted[field] == "Never"
    metadata = _annotation_patch(annotations, state, kind, turned_off)
    if metadata:
        patch["metadata"] = metadata
    return patch


def _installation_encapsulation(kind: str, mode: str) -> str:
    if mode == "Never":
        return "None"
    return kind + ("CrossSubnet" if mode == "CrossSubnet" else "")


def calico_installation_patch(
    installation: dict[str, Any] | None,
    pool_name: str,
    state: str,
    mode: str,
    nat_outgoing: bool,
    revert_mode: str,
    revert_nat_outgoing: bool,
    encapsulation: str = "auto",
) -> dict[str, Any] | None:
    """The merge patch of an operator.tigera.io/v1 Installation for the pool named ``pool_name``;
    None when the Installation does not list a pool of that name (the IPPool is then not the
    operator's to revert, and is patched itself)."""
    _check(mode, revert_mode)
    if not installation:
        return None
    pools = ((installation.get("spec") or {}).get("calicoNetwork") or {}).get("ipPools") or []
    index = next((i for i, p in enumerate(pools) if pool_name and p.get("name") == pool_name), None)
    if index is None:
        return None
    annotations = (installation.get("metadata") or {}).get("annotations") or {}
    pool = pools[index]
    current_encapsulation = pool.get("encapsulation") or "IPIP"  # the operator's default
    active = (
        "VXLAN"
        if current_encapsulation.startswith("VXLAN")
        else ("IPIP" if current_encapsulation.startswith("IPIP") else "")
    )
    kind = _kind(active, annotations.get(ANNOTATION, ""), encapsulation)
    wanted_mode = mode if state == "present" else revert_mode
    wanted_nat = nat_outgoing if state == "present" else revert_nat_outgoing
    wanted = {
        "encapsulation": _installation_encapsulation(kind, wanted_mode),
        "natOutgoing": "Enabled" if wanted_nat else "Disabled",
    }
    current = {"encapsulation": current_encapsulation, "natOutgoing": pool.get("natOutgoing") or "Enabled"}
    patch: dict[str, Any] = {}
    if wanted != current:
        # a merge patch replaces a list as a whole: send every pool, this one changed
        new_pools = copy.deepcopy(pools)
        new_pools[index].update(wanted)
        patch["spec"] = {"calicoNetwork": {"ipPools": new_pools}}
    turned_off = current_encapsulation != "None" and wanted["encapsulation"] == "None"
    metadata = _annotation_patch(annotations, state, kind, turned_off)
    if metadata:
        patch["metadata"] = metadata
    return patch


def calico_pool_summary(pool_spec: dict[str, Any]) -> dict[str, Any]:
    """What an IPPool spec means for pod to VM traffic: its encapsulation kind, mode and natOutgoing."""
    ipip, vxlan = pool_spec.get("ipipMode") or "Never", pool_spec.get("vxlanMode") or "Never"
    if vxlan != "Never":
        kind, mode = "VXLAN", vxlan
    elif ipip != "Never":
        kind, mode = "IPIP", ipip
    else:
        kind, mode = "none", "Never"
    return {"kind": kind, "mode": mode, "field": "vxlanMode" if kind == "VXLAN" else "ipipMode",
            "nat_outgoing": bool(pool_spec.get("natOutgoing", False))}  # fmt: skip


class FilterModule:
    """mlopslab.platform Calico pool filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "calico_ippool_patch": calico_ippool_patch,
            "calico_installation_patch": calico_installation_patch,
            "calico_pool_summary": calico_pool_summary,
        }
