"""calico_vm_access in snat mode, proven on a real pod -> node -> VM network (issue 4).

The seed's pods could not use the PostgreSQL VM because the VM saw (and dropped) pod-sourced
traffic; the fix was `iptables -t nat -A POSTROUTING -s POD_CIDR -d DB_IP -j MASQUERADE` on the
nodes. Here the pod, node and db are network namespaces (tests/network/conftest.py) with a real
PostgreSQL 15 whose pg_hba admits only the node subnet. playbooks/network.yml runs inside the node
namespace (`ip netns exec NODE ansible-playbook`, connection local), so every iptables change
lands in the node's own netfilter tables and never in the host's; the persisted rules file and the
restore script are temporary files (this machine has no systemd: the unit itself is not enabled,
the test runs its script the way a `systemctl restart` would).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.network.seed_network import (
    DB_ADDR,
    DB_NAME,
    DB_PORT,
    DB_USER,
    NFS_ADDR,
    NODE_ADDR,
    NODE_POD_SIDE,
    POD_ADDR,
    POD_CIDR,
    SeedNetwork,
    in_ns,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
COMMENT = "mlopslab.platform.calico_vm_access"
CHAIN = "MLOPSLAB-VM-SNAT"
# A nat rule somebody else added: the role must leave it alone, on apply and on absent.
FOREIGN_NAT_RULE = ["-s", "10.99.0.0/16", "-d", "203.0.113.7/32", "-j", "MASQUERADE"]
# Stand-ins for what kube-proxy and Calico keep in a node's nat table: a restore of the role's
# persisted rules must never flush them (a whole-table restore, as netfilter-persistent does, would).
KUBE_AND_CALICO = [
    ["-N", "KUBE-SERVICES"],
    ["-A", "KUBE-SERVICES", "-d", "10.96.0.1/32", "-p", "tcp", "--dport", "443", "-j", "RETURN"],
    ["-A", "PREROUTING", "-j", "KUBE-SERVICES"],
    ["-N", "cali-nat-outgoing"],
    ["-A", "cali-nat-outgoing", "-s", "10.244.0.0/16", "-d", "10.244.0.0/16", "-j", "RETURN"],
    ["-A", "POSTROUTING", "-j", "cali-nat-outgoing"],
]


def write_inventory(path: Path) -> Path:
    """The lab's shape with the namespaces' addresses; the node is this (namespaced) machine."""
    inventory = {
        "all": {
            "vars": {
                "mlopslab_pod_cidr": POD_CIDR,
                "mlopslab_db_host": DB_ADDR,
                "mlopslab_db_port": DB_PORT,
                "mlopslab_airflow_db_name": DB_NAME,
                "mlopslab_airflow_db_user": DB_USER,
                "mlopslab_nfs_host": NFS_ADDR,
                # the node namespace shares this machine's file system: no NFS client package here
                "mlopslab_airflow_logs_volume": "local",
            },
            "children": {
                "k8s_nodes": {
                    "hosts": {
                        "mlcal-node": {
                            "ansible_connection": "local",
                            "ansible_host": NODE_ADDR,
                            "ansible_python_interpreter": sys.executable,
                            # already root inside the namespace; the lab's play uses become
                            "ansible_become": False,
                        }
                    }
                },
                "db_servers": {"hosts": {"mlcal-db": {"ansible_host": DB_ADDR}}},
                "nfs_servers": {"hosts": {"mlcal-nfs": {"ansible_host": NFS_ADDR}}},
                "k8s_control": {"hosts": {}},
            },
        }
    }
    path.write_text(yaml.safe_dump(inventory))
    return path


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.out = proc.stdout + proc.stderr
        # the yaml callback wraps long messages: compare words, not lines
        self.text = " ".join(self.out.split())
        recap = re.search(r"mlcal-node\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", self.out)
        assert recap, f"no PLAY RECAP for mlcal-node in:\n{self.out}"
        self.ok, self.changed, self.unreachable, self.failed = (int(g) for g in recap.groups())


def playbook(net: SeedNetwork, tmp: Path, *args: str, **extra: Any) -> Run:
    """Run playbooks/network.yml inside the node namespace."""
    extra_vars = {
        "calico_vm_access_persist_file": str(tmp / "persist" / "calico-vm-access.rules"),
        "calico_vm_access_persist_script": str(tmp / "persist" / "restore"),
        # no systemd here: the test runs the script itself, as the unit would
        "calico_vm_access_persist_boot": "none",
        "calico_vm_access_diagnose_targets": [
            {"host": DB_ADDR, "port": DB_PORT, "postgresql_user": DB_USER, "postgresql_database": DB_NAME}
        ],
        **extra,
    }
    (tmp / "extra.json").write_text(json.dumps(extra_vars))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "LC_ALL": "C.UTF-8",
    }
    proc = subprocess.run(
        ["ip", "netns", "exec", net.node, str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "inventory.yml"),
         "playbooks/network.yml", "-e", f"@{tmp / 'extra.json'}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    return Run(proc)


def nat_table(net: SeedNetwork) -> str:
    return in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-S").stdout


def our_rules(net: SeedNetwork) -> list[str]:
    return [line for line in nat_table(net).splitlines() if COMMENT in line or CHAIN in line]


def wanted_rules(*vms: str) -> list[str]:
    return sorted(
        [
            f"-N {CHAIN}",
            f'-A POSTROUTING -m comment --comment "{COMMENT}" -j {CHAIN}',
            *(f'-A {CHAIN} -s {POD_CIDR} -d {vm}/32 -m comment --comment "{COMMENT}" -j MASQUERADE' for vm in vms),
        ]
    )


def restore(net: SeedNetwork, tmp: Path) -> None:
    """What the unit runs at boot and on every restart."""
    in_ns(net.node, str(tmp / "persist" / "restore"))


def kube_and_calico_rules(net: SeedNetwork) -> list[str]:
    return [line for line in nat_table(net).splitlines() if "KUBE-" in line or "cali-" in line]


def test_snat_lets_the_pod_in_and_absent_takes_it_back(seed_network: SeedNetwork, tmp_path: Path) -> None:
    net = seed_network
    write_inventory(tmp_path / "inventory.yml")
    rules_file = tmp_path / "persist" / "calico-vm-access.rules"
    in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", *FOREIGN_NAT_RULE)
    for rule in KUBE_AND_CALICO:
        in_ns(net.node, "iptables", "-w", "5", "-t", "nat", *rule)
    kube_and_calico = kube_and_calico_rules(net)
    assert len(kube_and_calico) == 6, kube_and_calico

    # --- before: the seed's failure. PostgreSQL sees the pod address and refuses it.
    before = net.psql_from_pod()
    assert before.returncode != 0, before.stdout
    assert f'no pg_hba.conf entry for host "{POD_ADDR}"' in before.stderr
    assert f'no pg_hba.conf entry for host "{POD_ADDR}", user "{DB_USER}", database "{DB_NAME}"' in net.pg_log_text()

    # --- the diagnosis alone (read-only) names the problem and the fix
    diag = playbook(net, tmp_path, "--tags", "calico_vm_access_diagnose")
    assert diag.rc == 0, diag.out
    assert diag.failed == 0, diag.out
    assert diag.changed == 0, diag.out
    refused_words = (
        f"Traffic from the pod address {NODE_POD_SIDE} reaches {DB_ADDR}:{DB_PORT}, but PostgreSQL refuses it"
    )
    assert refused_words in diag.text, diag.out
    assert f'no pg_hba.conf entry for host "{NODE_POD_SIDE}"' in diag.text, diag.out
    assert "Apply the SNAT fix" in diag.text, diag.out
    assert our_rules(net) == []

    # --- check mode reports the change and makes none
    check = playbook(net, tmp_path, "--check")
    assert check.rc == 0, check.out
    assert check.failed == 0, check.out
    assert check.changed >= 3, check.out  # the chain, its rules, the jump, the files
    assert our_rules(net) == []
    assert not rules_file.exists()

    # --- apply: the chain with one MASQUERADE rule per VM (db and nfs from the inventory), persisted
    applied = playbook(net, tmp_path)
    assert applied.rc == 0, applied.out
    assert applied.failed == 0, applied.out
    assert applied.changed >= 3, applied.out
    assert sorted(our_rules(net)) == wanted_rules(DB_ADDR, NFS_ADDR), nat_table(net)
    assert "No ufw or firewalld on this node" in applied.text, applied.out
    assert (
        f"Pod to VM works: traffic from {NODE_POD_SIDE} reaches {DB_ADDR}:{DB_PORT} as the node address (masqueraded)"
        in applied.text
    ), applied.out

    log_before = net.pg_log_text()
    after = net.psql_from_pod()
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == NODE_ADDR  # inet_client_addr(): the DB sees the node
    new_log = net.pg_log_text()[len(log_before) :]
    assert f"connection received: host={NODE_ADDR}" in new_log, new_log
    assert f"connection authorized: user={DB_USER} database={DB_NAME}" in new_log, new_log
    assert POD_ADDR not in new_log

    persisted = rules_file.read_text()
    assert f":{CHAIN} - [0:0]" in persisted
    assert "POSTROUTING" not in persisted  # the file declares the role's chain and nothing else
    for vm in (DB_ADDR, NFS_ADDR):
        assert f'-A {CHAIN} -s {POD_CIDR} -d {vm}/32 -m comment --comment "{COMMENT}" -j MASQUERADE' in persisted
    in_ns(net.node, "iptables-restore", "--test", "--noflush", str(rules_file))

    # --- second run, and check mode on the converged node: nothing to do
    again = playbook(net, tmp_path)
    assert again.rc == 0, again.out
    assert again.changed == 0, again.out
    converged_check = playbook(net, tmp_path, "--check")
    assert converged_check.rc == 0, converged_check.out
    assert converged_check.changed == 0, converged_check.out

    # --- a restart of the persistence: the role's chain is rebuilt, kube-proxy's and Calico's stay
    in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-A", CHAIN, "-d", "192.0.2.99/32", "-j", "RETURN")
    restore(net, tmp_path)
    restore(net, tmp_path)
    assert sorted(our_rules(net)) == wanted_rules(DB_ADDR, NFS_ADDR), nat_table(net)
    assert kube_and_calico_rules(net) == kube_and_calico, nat_table(net)
    assert "-A POSTROUTING " + " ".join(FOREIGN_NAT_RULE) in net.nat_rules()
    assert net.psql_from_pod().returncode == 0

    # --- "reboot": an empty nat table, then what the unit does at boot
    in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-F")
    in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-X")
    assert net.psql_from_pod().returncode != 0
    restore(net, tmp_path)
    rebooted = net.psql_from_pod()
    assert rebooted.returncode == 0, rebooted.stderr
    assert rebooted.stdout.strip() == NODE_ADDR, rebooted.stderr
    assert sorted(our_rules(net)) == wanted_rules(DB_ADDR, NFS_ADDR), nat_table(net)
    assert playbook(net, tmp_path).changed == 0
    in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", *FOREIGN_NAT_RULE)
    for rule in KUBE_AND_CALICO:
        in_ns(net.node, "iptables", "-w", "5", "-t", "nat", *rule)

    # --- the NFS VM is dropped from the list: its rule goes, live and persisted, nothing else
    narrowed = playbook(net, tmp_path, calico_vm_access_vm_addresses=[DB_ADDR])
    assert narrowed.rc == 0, narrowed.out
    assert narrowed.changed == 2, narrowed.out  # one rule removed, the rules file rewritten
    assert sorted(our_rules(net)) == wanted_rules(DB_ADDR), nat_table(net)
    assert NFS_ADDR not in rules_file.read_text()

    # --- state absent removes exactly what the role added
    removed = playbook(net, tmp_path, "-e", "mlopslab_calico_fix_state=absent")
    assert removed.rc == 0, removed.out
    assert removed.failed == 0, removed.out
    assert removed.changed >= 3, removed.out
    assert our_rules(net) == [], nat_table(net)
    assert "-A POSTROUTING " + " ".join(FOREIGN_NAT_RULE) in net.nat_rules()
    assert kube_and_calico_rules(net) == kube_and_calico, nat_table(net)
    assert not rules_file.exists()
    assert not (tmp_path / "persist" / "restore").exists()
    refused = net.psql_from_pod()
    assert refused.returncode != 0
    assert f'no pg_hba.conf entry for host "{POD_ADDR}"' in refused.stderr

    removed_again = playbook(net, tmp_path, "-e", "mlopslab_calico_fix_state=absent")
    assert removed_again.rc == 0, removed_again.out
    assert removed_again.changed == 0, removed_again.out
    for rule in reversed(KUBE_AND_CALICO):
        if rule[0] == "-A":
            in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-D", *rule[1:])
        else:
            in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-X", rule[1])
    in_ns(net.node, "iptables", "-w", "5", "-t", "nat", "-D", "POSTROUTING", *FOREIGN_NAT_RULE)


def test_preflight_rejects_a_bad_pod_cidr(seed_network: SeedNetwork, tmp_path: Path) -> None:
    write_inventory(tmp_path / "inventory.yml")
    bad = playbook(seed_network, tmp_path, "-e", "mlopslab_pod_cidr=10.244.1.5/16")
    assert bad.rc != 0, bad.out
    assert bad.failed == 1, bad.out
    assert "calico_vm_access_pod_cidr must be an IPv4 network" in bad.text, bad.out
    assert our_rules(seed_network) == []
    assert not (tmp_path / "persist").exists()


def test_snat_also_fixes_a_vm_that_cannot_answer_pod_addresses(seed_network: SeedNetwork, tmp_path: Path) -> None:
    """The seed's exact symptom: the VM has no way back to the pod CIDR, so pod traffic times out."""
    net = seed_network
    write_inventory(tmp_path / "inventory.yml")
    in_ns(net.db, "ip", "route", "del", POD_CIDR)
    try:
        timed_out = net.psql_from_pod()
        assert timed_out.returncode != 0
        assert "timeout expired" in timed_out.stderr, timed_out.stderr

        diag = playbook(net, tmp_path, "--tags", "calico_vm_access_diagnose")
        assert diag.rc == 0, diag.out
        assert f"but traffic from the pod address {NODE_POD_SIDE} does not (no answer within 3 s" in diag.text, diag.out
        assert "the VM drops pod-sourced traffic" in diag.text, diag.out
        assert "Apply the SNAT fix" in diag.text, diag.out

        applied = playbook(net, tmp_path)
        assert applied.rc == 0, applied.out
        assert "Pod to VM works" in applied.text, applied.out
        works = net.psql_from_pod()
        assert works.returncode == 0, works.stderr
        assert works.stdout.strip() == NODE_ADDR

        removed = playbook(net, tmp_path, "-e", "mlopslab_calico_fix_state=absent")
        assert removed.rc == 0, removed.out
        assert our_rules(net) == []
        assert "timeout expired" in net.psql_from_pod().stderr
    finally:
        in_ns(net.db, "ip", "route", "replace", POD_CIDR, "via", NODE_ADDR)
