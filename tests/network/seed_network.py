"""The seed's Calico problem, rebuilt with network namespaces; the ``seed_network`` fixture.

    pod ns   10.244.1.5/24 ── veth ── 10.244.1.1/24   node ns   198.51.100.131/24 ── veth ── 198.51.100.142/24   db ns
             default via 10.244.1.1                   (forwards)                          route 10.244.0.0/16 via .131

The db namespace runs a throwaway PostgreSQL 15 cluster whose pg_hba admits only the node subnet
(``host airflow_db airflow_user 198.51.100.0/24 scram-sha-256``, like the seed's 192.168.18.0/24;
documentation addresses stand in for the lab's so that nothing ever leaves this machine). The db
has a route back to the pod CIDR through the node, standing in for the IPIP tunnel this kernel
lacks: without SNAT PostgreSQL sees the pod address and refuses it, with SNAT it sees the node.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
POD_CIDR = "10.244.0.0/16"
POD_ADDR = "10.244.1.5"
NODE_POD_SIDE = "10.244.1.1"
LAB_SUBNET = "198.51.100.0/24"
NODE_ADDR = "198.51.100.131"
DB_ADDR = "198.51.100.142"
NFS_ADDR = "198.51.100.141"  # in the inventory only: the role adds a rule for it, nothing answers
DB_PORT = 5432
DB_NAME = "airflow_db"
DB_USER = "airflow_user"
DB_PASSWORD = "calico-test-" + secrets.token_hex(8)
# setpriv execs (runuser forks), so the Popen below is the postmaster itself.
AS_POSTGRES = ("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--")


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=timeout)


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


@dataclass
class SeedNetwork:
    pod: str
    node: str
    db: str
    pg_log: Path
    pg_data: Path
    postmaster: subprocess.Popen[bytes]
    db_if: str

    def psql_from_pod(self, sql: str = "SELECT inet_client_addr()") -> subprocess.CompletedProcess[str]:
        """Connect as the application would, from the pod namespace, with the real password."""
        dsn = (
            f"host={DB_ADDR} port={DB_PORT} dbname={DB_NAME} user={DB_USER} "
            f"password={DB_PASSWORD} sslmode=disable connect_timeout=5"
        )
        return in_ns(self.pod, "psql", dsn, "-XAtc", sql, check=False, timeout=30)

    def pg_log_text(self) -> str:
        return self.pg_log.read_text(errors="replace")

    def nat_rules(self) -> str:
        return in_ns(self.node, "iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING").stdout

    def admit(self, cidr: str) -> None:
        """Make pg_hba admit airflow_user on airflow_db from ``cidr`` only, and reload PostgreSQL."""
        (self.pg_data / "pg_hba.conf").write_text(
            f"local all all trust\nhost {DB_NAME} {DB_USER} {cidr} scram-sha-256\n"
        )
        seen = len(self.pg_log_text())
        self.postmaster.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "reloading configuration files" not in self.pg_log_text()[seen:]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL did not reload:\n{self.pg_log_text()[seen:]}")
            time.sleep(0.2)


def _require_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [t for t in ("ip", "iptables", "iptables-restore", "psql", "setpriv") if shutil.which(t) is None]
    if missing or not (PG_BIN / "postgres").exists():
        pytest.fail(
            f"missing {missing or PG_BIN / 'postgres'}: scripts/setup-host.sh installs iproute2, iptables, "
            "postgresql and postgresql-client"
        )


def _build_namespaces(pod: str, node: str, db: str, tag: str) -> str:
    for ns in (pod, node, db):
        run("ip", "netns", "add", ns)
        in_ns(ns, "ip", "link", "set", "lo", "up")
    # veth names are limited to 15 characters: mlc<tag><role><n>
    pod_if, node_pod_if = f"mlc{tag}p0", f"mlc{tag}p1"
    node_lab_if, db_if = f"mlc{tag}d1", f"mlc{tag}d0"
    run("ip", "link", "add", pod_if, "netns", pod, "type", "veth", "peer", "name", node_pod_if, "netns", node)
    run("ip", "link", "add", db_if, "netns", db, "type", "veth", "peer", "name", node_lab_if, "netns", node)
    in_ns(pod, "ip", "addr", "add", f"{POD_ADDR}/24", "dev", pod_if)
    in_ns(pod, "ip", "link", "set", pod_if, "up")
    in_ns(pod, "ip", "route", "add", "default", "via", NODE_POD_SIDE)
    in_ns(node, "ip", "addr", "add", f"{NODE_POD_SIDE}/24", "dev", node_pod_if)
    in_ns(node, "ip", "addr", "add", f"{NODE_ADDR}/24", "dev", node_lab_if)
    in_ns(node, "ip", "link", "set", node_pod_if, "up")
    in_ns(node, "ip", "link", "set", node_lab_if, "up")
    in_ns(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    in_ns(db, "ip", "addr", "add", f"{DB_ADDR}/24", "dev", db_if)
    in_ns(db, "ip", "link", "set", db_if, "up")
    in_ns(db, "ip", "route", "add", POD_CIDR, "via", NODE_ADDR)
    return db_if


def _start_postgres(db: str, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    data, sock, log = workdir / "data", workdir / "sock", workdir / "postgresql.log"
    sock.mkdir()
    shutil.chown(workdir, "postgres", "postgres")
    shutil.chown(sock, "postgres", "postgres")
    run(
        *AS_POSTGRES, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        timeout=120,
    )  # fmt: skip
    # Only the node subnet is admitted over TCP, exactly like the seed's pg_hba.conf.
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        f"host {DB_NAME} {DB_USER} {LAB_SUBNET} scram-sha-256\n"
    )  # fmt: skip
    log.touch()
    shutil.chown(log, "postgres", "postgres")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", db, *AS_POSTGRES,
                str(PG_BIN / "postgres"), "-D", str(data),
                "-c", f"listen_addresses={DB_ADDR}", "-c", f"port={DB_PORT}",
                "-c", f"unix_socket_directories={sock}", "-c", "log_connections=on",
                "-c", "logging_collector=off", "-c", "password_encryption=scram-sha-256",
                "-c", "shared_buffers=16MB", "-c", "max_connections=20",
            ],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while run(str(PG_BIN / "pg_isready"), "-q", "-h", str(sock), "-p", str(DB_PORT), check=False).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.3)
    psql = ["psql", "-X", "-h", str(sock), "-p", str(DB_PORT), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
    run(*psql, "-c", f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
    run(*psql, "-c", f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
    return proc, log


@pytest.fixture(scope="module")
def seed_network() -> Iterator[SeedNetwork]:
    """pod -> node -> db namespaces with PostgreSQL in db; always torn down."""
    _require_root_tools()
    tag = secrets.token_hex(2)
    pod, node, db = f"mlcal{tag}-pod", f"mlcal{tag}-node", f"mlcal{tag}-db"
    workdir = Path(tempfile.mkdtemp(prefix="mlcal-pg-"))
    workdir.chmod(0o755)
    proc: subprocess.Popen[bytes] | None = None
    try:
        db_if = _build_namespaces(pod, node, db, tag)
        proc, log = _start_postgres(db, workdir)
        yield SeedNetwork(pod=pod, node=node, db=db, pg_log=log, pg_data=workdir / "data", postmaster=proc, db_if=db_if)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown; `ip netns exec` and setpriv exec postgres
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for ns in (pod, node, db):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
