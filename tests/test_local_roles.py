"""supervised_service, the role every local service runs under, driving a real supervisord.

The local platform (inventories/local) has no systemd, so each of its services is a program of
one supervisord that the role installs, configures and drives with
community.general.supervisorctl. This test runs the role alone against this machine, with a
real HTTP server as the service, in a directory of its own: it comes up and answers, a second
run changes nothing, a changed definition restarts it (a new process), check mode predicts
without acting, it stops, and the shutdown entry point ends supervisord. The static rules the
local roles follow are in tests/test_role_anatomy.py and tests/test_inventory_wiring.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.k8s_layer import REPO_ROOT, ansible_env, recap

SERVICE = "probe-http"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Role:
    """Runs supervised_service on localhost with one supervisord directory."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp = tmp
        self.port = port
        self.dir = tmp / "sv"
        self.ctl = [str(self.dir / "venv" / "bin" / "supervisorctl"), "-c", str(self.dir / "supervisord.conf")]

    def run(self, role_vars: dict[str, Any], *flags: str, entry: str = "main") -> tuple[int, str]:
        base: dict[str, Any] = {
            "supervised_service_backend": "supervisord",
            "supervised_service_supervisord_dir": str(self.dir),
        }
        if entry == "main":
            base["supervised_service_supervisord_python"] = sys.executable
        include = {"name": "mlopslab.platform.supervised_service", "tasks_from": entry}
        task = {"name": "Apply the role", "ansible.builtin.include_role": include, "vars": {**base, **role_vars}}
        play = {
            "name": "Supervised service",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "tasks": [task],
        }
        playbook = self.tmp / "play.yml"
        playbook.write_text(yaml.safe_dump([play]))
        exe = Path(sys.executable).with_name("ansible-playbook")
        proc = subprocess.run(
            [str(exe), str(playbook), "-i", "localhost,", "-c", "local", *flags],
            cwd=REPO_ROOT,
            env=ansible_env({}),
            capture_output=True,
            text=True,
            timeout=600,
        )
        return proc.returncode, proc.stdout + proc.stderr

    def service(self, greeting: str, state: str = "started") -> dict[str, Any]:
        return {
            "supervised_service_name": SERVICE,
            "supervised_service_command": f"{sys.executable} -m http.server {self.port} --bind 127.0.0.1",
            "supervised_service_environment": {"GREETING": greeting},
            "supervised_service_working_dir": str(self.tmp),
            "supervised_service_stdout_log": str(self.tmp / f"{SERVICE}.log"),
            "supervised_service_state": state,
            "supervised_service_wait_port": self.port if state == "started" else 0,
            "supervised_service_wait_timeout": 60,
            "supervised_service_start_seconds": 1,
        }

    def pid(self) -> str:
        proc = subprocess.run([*self.ctl, "pid", SERVICE], capture_output=True, text=True, timeout=30)
        return proc.stdout.strip()


@pytest.fixture
def role(tmp_path: Path) -> Iterator[Role]:
    subject = Role(tmp_path, _free_port())
    yield subject
    if Path(subject.ctl[0]).exists():  # never leave a supervisord behind
        subprocess.run([*subject.ctl, "shutdown"], capture_output=True, timeout=60, check=False)


def test_supervisord_backend_starts_keeps_restarts_stops_and_shuts_down(role: Role) -> None:
    rc, out = role.run(role.service("hello"))
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{role.port}/", timeout=10) as answer:
        assert answer.status == 200
    conf = role.dir / "conf.d" / f"{SERVICE}.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"  # it holds the environment
    first_pid = role.pid()
    assert first_pid.isdigit(), first_pid

    rc, out = role.run(role.service("hello"))
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out
    assert role.pid() == first_pid

    rc, out = role.run(role.service("changed"), "--check")
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] > 0  # the definition would change...
    assert role.pid() == first_pid  # ...and nothing was restarted

    rc, out = role.run(role.service("changed"))
    assert rc == 0, out
    second_pid = role.pid()
    assert second_pid.isdigit(), second_pid
    assert second_pid != first_pid
    assert _listens(role.port)

    rc, out = role.run(role.service("changed", state="stopped"))
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] == 1
    assert not _listens(role.port)
    rc, out = role.run(role.service("changed", state="stopped"))
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] == 0, out

    daemon_pid = (role.dir / "supervisord.pid").read_text().strip() if (role.dir / "supervisord.pid").exists() else ""
    rc, out = role.run({}, entry="supervisord_shutdown")
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] == 1
    if daemon_pid:
        assert not Path(f"/proc/{daemon_pid}").exists()
    probe = subprocess.run([*role.ctl, "pid"], capture_output=True, text=True, timeout=30, env=dict(os.environ))
    assert not probe.stdout.strip().isdigit(), probe.stdout


def test_supervisord_backend_refuses_a_quoted_environment_value_and_names_it(role: Role) -> None:
    rc, out = role.run({**role.service("hello"), "supervised_service_environment": {"GREETING": '"quoted"'}})
    assert rc != 0
    assert "GREETING" in out, out
    assert not _listens(role.port)
