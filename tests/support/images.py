"""The platform's images for tests: built once per content by the role, run with podman.

Interface:

    python_base() -> str
        ``scripts/build-images.sh --base``: the local Python base (built when its recipe changed).

    run_images_role(workdir, extra_vars, *, nodes=(), check=False, env=None) -> RoleRun
        ``playbooks/images.yml`` (the container_images role) on a local-connection control host,
        with ``nodes`` as local-connection hosts of group k8s_nodes, ``extra_vars`` (JSON) and
        ``env`` (e.g. a kubeconfig) added to the environment.
        Returns the rc, the names of the tasks that reported changed (per host), the published
        references and the full output (for assertion messages).

    podman(*args, check=True, timeout=...) -> CompletedProcess   (CONTAINERS_CONF set)

Images are cached by content in podman's own storage: a warm run builds nothing, a changed
Dockerfile, requirement or source file builds that image anew under a new tag.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO_ROOT / "playbooks" / "images.yml"


def cache_root() -> Path:
    return Path(os.environ.get("MLOPSLAB_CACHE") or Path.home() / ".cache" / "mlops-lab")


def podman_env() -> dict[str, str]:
    conf = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-base-image.sh"), "--conf"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {**os.environ, "CONTAINERS_CONF": conf}


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, check=check, timeout=timeout
    )


def python_base() -> str:
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-images.sh"), "--base"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
    )
    return out.stdout.strip().splitlines()[-1]


@dataclass
class RoleRun:
    rc: int
    seconds: float
    output: str
    changed: dict[str, list[str]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def published(self) -> dict[str, dict[str, str]]:
        return dict(self.facts.get("container_images_published") or {})

    def changed_tasks(self) -> list[str]:
        return sorted({task for tasks in self.changed.values() for task in tasks})


def _results(host_result: dict[str, Any]) -> list[dict[str, Any]]:
    return [host_result, *host_result.get("results", [])]


def run_images_role(
    workdir: Path,
    extra_vars: dict[str, Any],
    *,
    nodes: Sequence[str] = (),
    check: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
) -> RoleRun:
    """Run playbooks/images.yml with the JSON stdout callback and digest what it did."""
    workdir.mkdir(parents=True, exist_ok=True)
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    inventory = {
        "all": {
            "children": {
                "k8s_control": {"hosts": {"control": dict(local)}},
                "k8s_nodes": {"hosts": {node: dict(local) for node in nodes}},
            }
        }
    }
    (workdir / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (workdir / "vars.json").write_text(json.dumps(extra_vars))
    env = {
        **(env or {}),
        **podman_env(),
        "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    command = [
        str(REPO_ROOT / ".venv" / "bin" / "ansible-playbook"),
        "-i",
        str(workdir / "hosts.yml"),
        str(PLAYBOOK),
        "-e",
        f"@{workdir / 'vars.json'}",
        *(["--check"] if check else []),
    ]
    started = time.monotonic()
    # (not niced: in a full run the image tests are the cluster's stream, the critical path; the other
    # streams are niced instead, tests/conftest.py)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    run = RoleRun(rc=proc.returncode, seconds=time.monotonic() - started, output=proc.stdout + proc.stderr)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return run
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            name = task["task"]["name"]
            for host, result in task.get("hosts", {}).items():
                for item in _results(result):
                    run.facts.update(item.get("ansible_facts") or {})
                if any(item.get("changed") for item in _results(result)):
                    run.changed.setdefault(host, []).append(name)
                if result.get("failed") or any(item.get("failed") for item in result.get("results", [])):
                    messages = [str(item.get("msg", "")) for item in _results(result) if item.get("failed")]
                    run.failures.append(f"{host}: {name}: {' | '.join(messages)}")
    return run
