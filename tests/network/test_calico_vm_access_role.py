"""calico_vm_access without root: the iptables filter and the Calico pool patches.

Its anatomy (defaults, argument specs, README) is checked by tests/test_role_anatomy.py.
"""

from __future__ import annotations

import pytest

from tests.support.collection import COLLECTION, plugin

ROLE = COLLECTION / "roles/calico_vm_access"
MARK = "mlopslab.platform.calico_vm_access"

filters = plugin("filter", "iptables_rules")
pools = plugin("filter", "calico_pool")


def rule(dest: str) -> str:
    return f'-A POSTROUTING -s 10.244.0.0/16 -d {dest}/32 -m comment --comment "{MARK}" -j MASQUERADE'


def test_marked_rules_are_parsed_from_iptables_s_output() -> None:
    output = "\n".join(
        [
            "-P POSTROUTING ACCEPT",
            "-A POSTROUTING -s 10.99.0.0/16 -j MASQUERADE",
            rule("192.168.18.142"),
        ]
    )
    assert filters.iptables_marked_rules(output, MARK) == [
        {
            "line": rule("192.168.18.142"),
            "chain": "POSTROUTING",
            "source": "10.244.0.0/16",
            "destination": "192.168.18.142/32",
            "jump": "MASQUERADE",
            "key": "10.244.0.0/16 192.168.18.142/32",
        }
    ]


def test_the_jump_to_the_chain_is_parsed_too() -> None:
    jump = f'-A POSTROUTING -m comment --comment "{MARK}" -j MLOPSLAB-VM-SNAT'
    (parsed,) = filters.iptables_marked_rules(jump, MARK)
    assert (parsed["chain"], parsed["source"], parsed["destination"], parsed["jump"]) == (
        "POSTROUTING",
        None,
        None,
        "MLOPSLAB-VM-SNAT",
    )


FIX = ("present", "Never", True, "Always", True)
REVERT = ("absent", "Never", True, "Always", True)
ANNOTATION = pools.ANNOTATION


def test_a_vxlan_pool_gets_vxlan_mode_not_ipip_mode_and_back() -> None:
    vxlan_pool = {"spec": {"cidr": "10.42.0.0/16", "vxlanMode": "Always", "ipipMode": "Never", "natOutgoing": False}}
    patch = pools.calico_ippool_patch(vxlan_pool, *FIX)
    assert patch == {
        "spec": {"vxlanMode": "Never", "natOutgoing": True},
        "metadata": {"annotations": {ANNOTATION: "VXLAN"}},
    }
    fixed = {"metadata": patch["metadata"], "spec": {**vxlan_pool["spec"], **patch["spec"]}}
    assert pools.calico_ippool_patch(fixed, *FIX) == {}
    # absent turns VXLAN back on (not IPIP, which would give the pool two encapsulations)
    assert pools.calico_ippool_patch(fixed, *REVERT) == {
        "spec": {"vxlanMode": "Always"},
        "metadata": {"annotations": {ANNOTATION: None}},
    }


def test_an_ipip_pool_keeps_the_seed_behaviour() -> None:
    seed = {"spec": {"cidr": "10.244.0.0/16", "ipipMode": "Always", "natOutgoing": True}}
    assert pools.calico_ippool_patch(seed, *FIX) == {
        "spec": {"ipipMode": "Never"},
        "metadata": {"annotations": {ANNOTATION: "IPIP"}},
    }
    # a pool that never had an encapsulation is reverted the way the settings say (IPIP Always)
    plain = {"spec": {"cidr": "10.244.0.0/16"}}
    assert pools.calico_ippool_patch(plain, *FIX) == {"spec": {"natOutgoing": True}}
    assert pools.calico_ippool_patch(plain, *REVERT) == {"spec": {"ipipMode": "Always", "natOutgoing": True}}
    with pytest.raises(ValueError, match="encapsulation mode"):
        pools.calico_ippool_patch(seed, "present", "never", True, "Always", True)


INSTALLATION = {
    "metadata": {"name": "default"},
    "spec": {
        "calicoNetwork": {
            "ipPools": [
                {"name": "default-ipv4-ippool", "cidr": "192.168.0.0/16", "encapsulation": "VXLANCrossSubnet",
                 "natOutgoing": "Disabled", "blockSize": 26},
                {"name": "other", "cidr": "10.10.0.0/16", "encapsulation": "IPIP"},
            ]
        }
    },
}  # fmt: skip


def test_an_operator_pool_is_changed_in_the_installation() -> None:
    patch = pools.calico_installation_patch(INSTALLATION, "default-ipv4-ippool", *FIX)
    assert patch is not None
    changed, untouched = patch["spec"]["calicoNetwork"]["ipPools"]
    assert changed == {
        "name": "default-ipv4-ippool", "cidr": "192.168.0.0/16", "encapsulation": "None",
        "natOutgoing": "Enabled", "blockSize": 26,
    }  # fmt: skip
    assert untouched == INSTALLATION["spec"]["calicoNetwork"]["ipPools"][1]
    assert patch["metadata"] == {"annotations": {ANNOTATION: "VXLAN"}}
    fixed = {"metadata": patch["metadata"], "spec": patch["spec"]}
    assert pools.calico_installation_patch(fixed, "default-ipv4-ippool", *FIX) == {}
    reverted = pools.calico_installation_patch(fixed, "default-ipv4-ippool", *REVERT)
    assert reverted is not None
    assert reverted["spec"]["calicoNetwork"]["ipPools"][0]["encapsulation"] == "VXLAN"
    # an older operator lists unnamed pools it reads at install time only: the IPPool is changed instead
    unnamed = {"spec": {"calicoNetwork": {"ipPools": [{"cidr": "192.168.0.0/16"}]}}}
    assert pools.calico_installation_patch(unnamed, "default-ipv4-ippool", *FIX) is None
    assert pools.calico_installation_patch(INSTALLATION, "nope", *FIX) is None
    assert pools.calico_installation_patch({}, "default-ipv4-ippool", *FIX) is None
