"""The lab inventory on the real single-node cluster: the lab's own group_vars, the harness's hosts.

    lab = harness_lab(work, kube_cluster, vms=lab_vms, s3=HarnessS3(...), overrides={...})
    lab.runner("bootstrap", "--only", "hosts,network")   # python -m runner ... -i lab.inventory
    lab.stages()                                         # {stage: counts} of the last runner run
    lab.set_vars(mlopslab_ingress_address="10.234.0.7")  # host_vars of every host, added later
    lab.playbook("platform.yml", "--tags", "serving_release")  # ansible-playbook, PLAY RECAP counts

``work/inventory`` is a copy of ``inventories/lab/group_vars`` (unchanged, with a plain vault.yml of
test-time values for every key of ``vault.example.yml``) and a hosts.yml of the harness's hosts: the
node (an ssh host, ``kube_cluster.ansible_host_vars()``), the control node (local), and, with ``vms``,
the PostgreSQL and NFS VM containers of ``tests/support/lab_vms.py`` (without them the VM groups name
the harness's host address, so that the lab's address variables resolve, and no play may target
them). Where the harness differs from a lab, the values are host_vars of every host (they outrank
the group_vars and leave the lab's wiring as it is), each written below with its reason.

Every command's output is checked for the vault's values (none may appear) and kept in ``work``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.summary import read_last_summary
from tests.support.images import cache_root, podman_env, python_base
from tests.support.k8s_layer import recap
from tests.support.kube_cluster import KubeCluster
from tests.support.lab_vms import LabVms

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventories" / "lab"
LAB_VALUES: dict[str, Any] = yaml.safe_load((LAB / "group_vars/all/main.yml").read_text())


@dataclass
class HarnessS3:
    """An S3 endpoint the test runs where pods reach it (the harness's host address), its bucket
    and region, and the workload keys (they become the vault's AWS keys)."""

    endpoint: str
    bucket: str
    region: str
    access_key_id: str
    secret_access_key: str


@dataclass
class HarnessLab:
    work: Path
    inventory: Path
    vault: dict[str, str]
    env: dict[str, str]
    logs: list[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _checked(self, proc: subprocess.CompletedProcess[str], label: str) -> subprocess.CompletedProcess[str]:
        output = proc.stdout + proc.stderr
        with self._lock:  # runner train runs in threads
            log = self.work / f"{len(self.logs):02d}-{label[:60]}.log"
            self.logs.append(log)
        log.write_text(output)
        for key, value in self.vault.items():
            assert value not in output, f"{key}'s value appeared in the output of {label}"
        return proc

    def runner(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """``python -m runner ARGS -i INVENTORY``; returns the process (callers check the exit code)."""
        proc = subprocess.run(
            [sys.executable, "-m", "runner", *args, "-i", str(self.inventory)],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        return self._checked(proc, "runner-" + "-".join(a.strip("-") for a in args).replace("/", "_"))

    def stages(self) -> dict[str, dict[str, int]]:
        """The counts of each stage of the last runner run (its summary.json)."""
        summary = read_last_summary(Path(self.env["MLOPSLAB_STATE_DIR"]))
        assert summary is not None, "no runner run has written a summary yet"
        return {stage.name: stage.counts for stage in summary.stages}

    def set_vars(self, **values: Any) -> None:
        """Add or change host_vars of every host (what the harness learns after a stage, e.g. an
        address); a value None removes the variable (the group_vars' value applies again)."""
        for path in (self.inventory / "host_vars").glob("*.json"):
            merged = {**json.loads(path.read_text()), **values}
            path.write_text(json.dumps({key: value for key, value in merged.items() if value is not None}))

    def playbook(self, name: str, *flags: str, timeout: float = 1800) -> dict[str, dict[str, int]]:
        """``ansible-playbook playbooks/NAME -i INVENTORY FLAGS``; asserts success, returns PLAY RECAP counts."""
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("ansible-playbook")), f"playbooks/{name}", "-i", str(self.inventory),
             *flags],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        self._checked(proc, name.removesuffix(".yml"))
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{name} {' '.join(flags)} failed:\n{output[-8000:]}"
        return recap(output)


def generated_vault(s3: HarnessS3 | None = None) -> dict[str, str]:
    """A value for every key of the lab's vault.example.yml, made now; the AWS keys are the S3's."""
    keys = yaml.safe_load((LAB / "vault.example.yml").read_text())
    vault = {key: f"test-{key}-{os.urandom(8).hex()}" for key in keys}
    if s3 is not None:
        vault["vault_aws_access_key_id"] = s3.access_key_id
        vault["vault_aws_secret_access_key"] = s3.secret_access_key
    return vault


def harness_lab(
    work: Path,
    cluster: KubeCluster,
    *,
    vms: LabVms | None = None,
    s3: HarnessS3 | None = None,
    overrides: dict[str, Any] | None = None,
) -> HarnessLab:
    """Write the inventory under ``work`` (module docstring) and return its runner."""
    inventory = work / "inventory"
    shutil.copytree(LAB / "group_vars", inventory / "group_vars")
    vault = generated_vault(s3)
    vault_file = inventory / "group_vars" / "all" / "vault.yml"
    vault_file.write_text(yaml.safe_dump(vault))
    vault_file.chmod(0o600)

    control = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    if vms is not None:
        db_host, nfs_host = vms.postgres.inventory_vars(), vms.nfs.inventory_vars()
        # podman's connection reaches the containers by name; the address the lab's variables read
        # (mlopslab_db_host, mlopslab_nfs_host: ansible_host) is the one pods use, so it is set apart.
        db_host["mlopslab_vm_address"] = vms.postgres.ip
        nfs_host["mlopslab_vm_address"] = vms.nfs.ip
    else:
        db_host = nfs_host = {"ansible_host": cluster.host_ip}
    hosts = {"all": {"children": {
        "nfs_servers": {"hosts": {"nfs-server": nfs_host}},
        "db_servers": {"hosts": {"postgres-server": db_host}},
        "k8s_nodes": {"hosts": {cluster.node_name: cluster.ansible_host_vars()}},
        "k8s_control": {"hosts": {"control": control}},
        "local_platform": {"hosts": {}},
    }}}  # fmt: skip
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))

    node_net = ipaddress.ip_network(f"{cluster.node_ip}/30", strict=False)
    harness: dict[str, Any] = {
        "mlopslab_kubeconfig": str(cluster.kubeconfig),
        # The harness's own networks: its pod CIDR, and the node's address range as the lab subnet
        # (what pg_hba and the NFS export admit: pods arrive from the node's address through SNAT).
        "mlopslab_pod_cidr": cluster.pod_cidr,
        "mlopslab_lab_subnet": str(node_net),
        # CI cannot download the upstream charts (ingress-nginx, MLflow, Airflow): the harness
        # installs the project's own serving chart only.
        "mlopslab_releases": ["serving"],
        # The node is this machine's file system: the SNAT rules' persisted copy goes to the test's
        # directory, and no boot unit is installed.
        "calico_vm_access_persist_file": str(work / "node" / "calico-vm-access.rules"),
        "calico_vm_access_persist_script": str(work / "node" / "calico-vm-access-restore"),
        "calico_vm_access_persist_boot": "none",
        # Images: built on the project's local Python base (no registry), loaded over ssh as root.
        "container_images_base_image": python_base(),
        "container_images_work_dir": str(cache_root() / "container-images"),
        "container_images_node_become": False,
    }
    if vms is not None:
        harness.update({
            "mlopslab_db_host": "{{ hostvars[groups['db_servers'][0]]['mlopslab_vm_address'] }}",
            "mlopslab_nfs_host": "{{ hostvars[groups['nfs_servers'][0]]['mlopslab_vm_address'] }}",
            # The kernel has no NFS server: the NFS VM serves with nfs-ganesha (user space).
            "nfs_server_implementation": "ganesha",
            # The VMs are the only hosts the calico_vm_access rules masquerade to.
            "calico_vm_access_vm_addresses": [vms.postgres.ip, vms.nfs.ip],
        })  # fmt: skip
    if s3 is not None:
        harness.update({
            "mlopslab_s3_bucket": s3.bucket,
            "mlopslab_s3_region": s3.region,
            "mlopslab_s3_endpoint_url": s3.endpoint,
        })  # fmt: skip
    harness.update(overrides or {})
    (inventory / "host_vars").mkdir()
    # localhost too: the preflight play runs there (implicit localhost, group_vars/all only).
    for host in ("localhost", "control", "nfs-server", "postgres-server", cluster.node_name):
        path = inventory / "host_vars" / f"{host}.json"
        path.write_text(json.dumps(harness))
        path.chmod(0o600)

    env = {
        **(vms.env() if vms is not None else cluster.env()),  # KUBECONFIG, PATH with the harness's helm
        "CONTAINERS_CONF": podman_env()["CONTAINERS_CONF"],
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "MLOPSLAB_STATE_DIR": str(work / "state"),
    }
    return HarnessLab(work=work, inventory=inventory, vault=vault, env=env)


__all__ = ["LAB_VALUES", "HarnessLab", "HarnessS3", "generated_vault", "harness_lab"]
