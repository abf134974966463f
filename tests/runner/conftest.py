"""A throwaway project of tiny real playbooks, and a helper that runs `python -m runner` on it.

Every stage playbook appends its name to order.log and writes a marker file (so --check, which
must not write, is observable). A stage fails on purpose when `fail_stage` names it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.stages import STAGES

REPO = Path(__file__).resolve().parents[2]

STAGE_PLAYBOOK = """\
---
- name: Stage {stage}
  hosts: {hosts}
  gather_facts: false
  tasks:
    - name: Record that stage {stage} ran
      ansible.builtin.lineinfile:
        path: "{{{{ marker_dir }}}}/order.log"
        line: "{stage}"
        insertafter: EOF
        create: true
        mode: "0644"
    - name: Write the marker of stage {stage}
      ansible.builtin.copy:
        dest: "{{{{ marker_dir }}}}/{stage}.done"
        content: "{stage}\\n"
        mode: "0644"
    - name: Tell the user something
      ansible.builtin.debug:
        msg: "stage {stage} says hello"
    - name: Fail on purpose
      ansible.builtin.fail:
        msg: "stage {stage} was told to fail"
      when: fail_stage | default('') == '{stage}'
"""


@dataclass
class Result:
    rc: int
    output: str


@dataclass
class LabProject:
    root: Path
    inventory: Path
    markers: Path
    state: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", *args],
            cwd=REPO,
            env={
                **os.environ,
                "MLOPSLAB_PROJECT_DIR": str(self.root),
                "MLOPSLAB_STATE_DIR": str(self.state),
                # the project's own platform home: a local platform of this machine's user
                # (its endpoints.json) must not answer `status` here
                "MLOPSLAB_HOME": str(self.state / "home"),
                **(env or {}),
            },
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        return Result(proc.returncode, proc.stdout + proc.stderr)

    def order(self) -> list[str]:
        log = self.markers / "order.log"
        return log.read_text().split() if log.exists() else []


def write_project(root: Path, inventory_yaml: str, group_vars: str = "") -> LabProject:
    markers = root / "markers"
    markers.mkdir(parents=True)
    (root / "ansible.cfg").write_text("[defaults]\ninterpreter_python = auto_silent\nretry_files_enabled = False\n")
    playbooks = root / "playbooks"
    playbooks.mkdir()
    stage_hosts = {"preflight": "localhost"}
    for stage in STAGES:
        hosts = stage_hosts.get(stage.name, ":".join(stage.groups))
        (playbooks / f"{stage.name}.yml").write_text(STAGE_PLAYBOOK.format(stage=stage.name, hosts=hosts))
    inventory = root / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(textwrap.dedent(inventory_yaml))
    (inventory / "group_vars" / "all" / "main.yml").write_text(
        f"---\nmarker_dir: {markers}\n" + textwrap.dedent(group_vars)
    )
    return LabProject(root=root, inventory=inventory, markers=markers, state=root / "state")


LOCAL_INVENTORY = """\
---
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    db_servers:
      hosts:
        localhost: {}
    local_platform:
      hosts:
        localhost: {}
    nfs_servers:
      hosts: {}
    k8s_nodes:
      hosts: {}
    k8s_control:
      hosts: {}
"""


@pytest.fixture
def project(tmp_path: Path) -> LabProject:
    return write_project(tmp_path / "project", LOCAL_INVENTORY)
