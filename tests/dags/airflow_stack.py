"""A real, small Airflow (api-server + scheduler + dag-processor, LocalExecutor, SQLite) for
tests that talk to its REST API, started from the Airflow venv on a free loopback port.

Log servers are off (`--skip-serve-logs`), so nothing listens beyond 127.0.0.1:PORT. The simple
auth manager has one admin user whose password the test chooses. Stopping terminates each
process group (TERM, then KILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from tests.dags.conftest import AirflowHome
from tests.support.mlflow_server import free_port

ADMIN_USER = "admin"


@dataclass
class AirflowStack:
    airflow: AirflowHome
    port: int
    password: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, name: str) -> str:
        path = self.airflow.home / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.processes)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def start_airflow_stack(airflow: AirflowHome, env: Mapping[str, str], *, timeout: float = 300) -> AirflowStack:
    """Start the three processes and wait until the API serves train_and_promote, unpaused."""
    port = free_port()
    password = secrets.token_urlsafe(12)
    passwords_file = airflow.home / "simple_auth_manager_passwords.json"
    passwords_file.write_text(json.dumps({ADMIN_USER: password}))
    stack = AirflowStack(airflow, port, password)
    full_env = airflow.env(
        {
            **env,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "AIRFLOW__API__BASE_URL": stack.url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        }
    )
    commands = {
        "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
    }
    airflow_bin = str(airflow.python.parent / "airflow")
    for name, args in commands.items():
        with open(airflow.home / f"{name}.log", "wb") as log:
            stack.processes[name] = subprocess.Popen(
                [airflow_bin, *args], env=full_env, cwd=airflow.home, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
    try:
        _wait_until_serving_the_dag(stack, timeout)
    except BaseException:
        stack.stop()
        raise
    return stack


def _wait_until_serving_the_dag(stack: AirflowStack, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    token: str | None = None
    last = ""
    while time.monotonic() < deadline:
        for name, process in stack.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {process.returncode}:\n{stack.logs()}")
        try:
            if token is None:
                response = httpx.post(
                    f"{stack.url}/auth/token", json={"username": ADMIN_USER, "password": stack.password}
                )
                if response.status_code == 201:
                    token = response.json()["access_token"]
            if token is not None:
                response = httpx.get(
                    f"{stack.url}/api/v2/dags/train_and_promote", headers={"Authorization": f"Bearer {token}"}
                )
                last = f"{response.status_code} {response.text[:200]}"
                if response.status_code == 200 and not response.json()["is_paused"]:
                    return
        except httpx.HTTPError as error:
            last = str(error)
        time.sleep(1)
    raise RuntimeError(f"Airflow did not serve train_and_promote within {timeout}s ({last}):\n{stack.logs()}")
