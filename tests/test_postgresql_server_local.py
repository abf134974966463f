"""postgresql_server on this machine, without systemd, through the local inventory.

Runs the real stage playbook (playbooks/hosts.yml -i inventories/local) against a throw-away
Debian cluster of its own (mlopslab_db_cluster_name, a free port, MLOPSLAB_HOME in a temporary
directory for the generated passwords), so the default cluster is never touched. Checks that
the role starts the cluster with pg_ctlcluster, listens on 127.0.0.1 only, lets each user
create tables in its own database with the generated password, refuses a wrong one, and that
a second run and a --check run change nothing. The cluster is dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

REPO = Path(__file__).resolve().parents[1]
PG_VERSION = "15"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    if os.geteuid() != 0:
        pytest.skip("manages a PostgreSQL cluster (run as root)")
    if shutil.which("pg_createcluster") is None:
        pytest.fail("postgresql-common is missing: run scripts/setup-host.sh")
    name = f"mlopslab_t{os.getpid()}"
    port = _free_port()
    home = tmp_path_factory.mktemp("mlopslab-home")
    env = dict(os.environ, MLOPSLAB_HOME=str(home), ANSIBLE_FORCE_COLOR="0")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    argv = [
        "ansible-playbook",
        "playbooks/hosts.yml",
        "-i",
        "inventories/local",
        "-e",
        f"mlopslab_db_cluster_name={name}",
        "-e",
        f"mlopslab_db_port={port}",
    ]

    def play(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*argv, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False
        )

    try:
        first = play()
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
        yield {"name": name, "port": port, "home": home, "play": play}
    finally:
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, name], capture_output=True, check=False)


def _recap_changed(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith("localhost") and "changed=" in line)
    return int(line.split("changed=")[1].split()[0])


def test_listens_on_loopback_only(local_cluster: dict[str, object]) -> None:
    out = subprocess.run(
        ["ss", "--no-header", "--listening", "--tcp", "--numeric", f"sport = :{local_cluster['port']}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    listening = [word for word in out if word.endswith(f":{local_cluster['port']}")]
    assert listening == [f"127.0.0.1:{local_cluster['port']}"]


@pytest.mark.parametrize("db", ["airflow", "mlflow"])
def test_owner_creates_tables_with_generated_password(local_cluster: dict[str, object], db: str) -> None:
    password = (Path(str(local_cluster["home"])) / "secrets" / f"{db}_db_password").read_text().strip()
    conn = psycopg2.connect(
        host="127.0.0.1", port=local_cluster["port"], user=f"{db}_user", dbname=f"{db}_db", password=password
    )
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE probe (id int)")
            cur.execute("INSERT INTO probe VALUES (1)")
            cur.execute("SELECT count(*) FROM probe")
            assert cur.fetchone() == (1,)
            cur.execute("DROP TABLE probe")
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host="127.0.0.1", port=local_cluster["port"], user=f"{db}_user", dbname=f"{db}_db", password="wrong"
        )


def test_second_run_and_check_change_nothing(local_cluster: dict[str, object]) -> None:
    play = local_cluster["play"]
    assert callable(play)
    for extra in ((), ("--check",)):
        result = play(*extra)
        assert result.returncode == 0, result.stdout[-6000:]
        assert _recap_changed(result.stdout) == 0, result.stdout[-6000:]
