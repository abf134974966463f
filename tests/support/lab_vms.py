"""The lab's two VMs as systemd containers beside the test cluster: a "postgres VM" and an "nfs VM".

Interface (pytest)
------------------
``lab_vms`` is a **session-scoped fixture** (``tests/conftest.py``; mark tests ``@pytest.mark.cluster``)
that needs ``kube_cluster``. It yields a :class:`LabVms` with ``postgres`` and ``nfs``
(:class:`LabVm`) and ``subnet`` (``"10.236.0.0/24"``). Each :class:`LabVm` has:

* ``name`` (the podman container name), ``ip`` (10.236.0.10 / 10.236.0.11), ``hostname``;
* ``inventory_vars()`` -> the Ansible host variables (``ansible_connection: containers.podman.podman``;
  ``CONTAINERS_CONF`` must be in the environment: ``LabVms.env()`` adds it to the cluster's env);
* ``exec(argv)`` -> CompletedProcess: ``podman exec`` inside the VM.

They are booted from the Molecule base image (``scripts/build-base-image.sh``: Debian bookworm with systemd
as PID 1, python3, iproute2) on their own podman network ``mlopslab-labvms`` (podman names its bridge;
10.236.0.0/24, gateway 10.236.0.1 on the host), like the seed's VMs on the lab LAN. Ansible enters them
as root (no sudo there: ``ansible_become`` is off). The NFS VM's /mnt/nfs_share is a podman volume
(``mlopslab-vm-nfs-share``, removed with the VMs) and it has DAC_READ_SEARCH: nfs-ganesha opens files
by handle, which the containers' overlayfs root cannot give.

Routing, as in the lab: the node gets a route to 10.236.0.0/24 via the host end of its veth
(``kube_cluster.host_ip``); the host already routes the pod CIDR to the node, and forwards between the
two (podman's bridge plugin turns on the host's ip_forward for its networks, as it does for every
Molecule run; this fixture does not set it). The cluster's CNI does not masquerade, so a pod reaching a
VM arrives with its **pod IP** as source: the seed's Calico symptom (pg_hba sees 10.233.x.y). The
project's fix, a MASQUERADE rule ``-s <pod cidr> -d <vm ip>`` in the node's nat table, makes it arrive
from the **node IP** (10.235.0.2). The route lives in the node's netns and goes with it; the podman
network and containers are removed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.kube_cluster import KubeCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-systemd:bookworm"
NETWORK = "mlopslab-labvms"
SUBNET = "10.236.0.0/24"
GATEWAY = "10.236.0.1"
NFS_SHARE_VOLUME = "mlopslab-vm-nfs-share"


def containers_conf() -> str:
    """Ensure the base image and podman's containers.conf (runc, ulimits); returns its path."""
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-base-image.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return out.stdout.strip().splitlines()[-1]


@dataclass
class LabVm:
    """One systemd container standing in for a lab VM."""

    name: str
    hostname: str
    ip: str
    conf: str
    # further `podman run` options (the NFS VM's export volume and capability)
    run_options: tuple[str, ...] = ()

    def exec(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["podman", "exec", "-i", self.name, *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "CONTAINERS_CONF": self.conf},
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman exec {self.name} {list(argv)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def inventory_vars(self) -> dict[str, str | bool]:
        return {
            "ansible_connection": "containers.podman.podman",
            "ansible_host": self.name,
            "ansible_python_interpreter": "/usr/bin/python3",
            # podman exec enters as root, and the image has no sudo: the plays' `become` is moot
            "ansible_become": False,
        }


@dataclass
class LabVms:
    postgres: LabVm
    nfs: LabVm
    conf: str
    cluster: KubeCluster
    subnet: str = SUBNET

    def env(self) -> dict[str, str]:
        return {**self.cluster.env(), "CONTAINERS_CONF": self.conf}


def _podman(conf: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "CONTAINERS_CONF": conf},
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _remove(conf: str, names: Sequence[str], network: bool) -> None:
    for name in names:
        _podman(conf, "rm", "-f", "-t", "0", name, check=False)
    _podman(conf, "volume", "rm", "-f", NFS_SHARE_VOLUME, check=False)
    if network:
        _podman(conf, "network", "rm", "-f", NETWORK, check=False)


@contextlib.contextmanager
def running_lab_vms(cluster: KubeCluster) -> Iterator[LabVms]:
    """Start both VMs, route the node to them, yield, remove them (and the network if ours)."""
    conf = containers_conf()
    vms = [
        LabVm(name="mlopslab-vm-postgres", hostname="pg-vm", ip="10.236.0.10", conf=conf),
        # nfs-ganesha's VFS backend opens files by handle (open_by_handle_at: DAC_READ_SEARCH), which the
        # overlayfs root lacks: the share lives on a volume of its own, as in the Molecule scenarios.
        LabVm(name="mlopslab-vm-nfs", hostname="nfs-vm", ip="10.236.0.11", conf=conf,
              run_options=("--cap-add", "DAC_READ_SEARCH", "-v", f"{NFS_SHARE_VOLUME}:/mnt/nfs_share")),
    ]  # fmt: skip
    # Leftovers of a crashed session of this harness have these exact names (the cluster's machine lock
    # is held, so no other session owns them).
    _remove(conf, [vm.name for vm in vms], network=False)
    created_network = False
    try:
        if _podman(conf, "network", "exists", NETWORK, check=False).returncode != 0:
            _podman(conf, "network", "create", "--subnet", SUBNET, "--gateway", GATEWAY, NETWORK)
            created_network = True
        for vm in vms:
            _podman(
                conf,
                "run",
                "-d",
                "--name",
                vm.name,
                "--hostname",
                vm.hostname,
                "--network",
                NETWORK,
                "--ip",
                vm.ip,
                "--systemd=always",
                *vm.run_options,
                BASE_IMAGE,
                "/sbin/init",
            )
        cluster.node_exec(["ip", "route", "replace", SUBNET, "via", cluster.host_ip])
        _wait_systemd(vms)
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            if f.read().strip() != "1":
                raise RuntimeError(
                    "the host does not forward between the node and the VM network (ip_forward=0): podman's "
                    "bridge plugin normally enables it; this harness does not change host sysctls itself"
                )
        yield LabVms(postgres=vms[0], nfs=vms[1], conf=conf, cluster=cluster)
    finally:
        with contextlib.suppress(Exception):
            cluster.node_exec(["ip", "route", "del", SUBNET], check=False)
        _remove(conf, [vm.name for vm in vms], network=created_network)


def _wait_systemd(vms: Sequence[LabVm], timeout: float = 90) -> None:
    """Wait until systemd inside each container has finished booting (running or degraded)."""
    deadline = time.monotonic() + timeout
    for vm in vms:
        while True:
            state = vm.exec(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in {"running", "degraded"}:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{vm.name}: systemd still '{state}' after {timeout:.0f} s")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def lab_vms(kube_cluster: KubeCluster) -> Iterator[LabVms]:
    """The postgres and nfs VM containers, reachable from the cluster's pods (module docstring)."""
    with running_lab_vms(kube_cluster) as vms:
        yield vms


__all__ = ["LabVm", "LabVms", "lab_vms", "running_lab_vms"]
