"""Run one collection role on localhost from a real ansible-playbook, the way a playbook would.

    result = apply_role("mlopslab.platform.s3_bucket", {"s3_bucket_name": ...}, tmp_path, "--check")
    result.rc, result.changed, result.failed, result.out (stdout + stderr), result.text (one line)

The variables go in as extra vars from a file (JSON: booleans stay booleans). ``prefix`` runs the
command inside something, e.g. ``["ip", "netns", "exec", NS]``; ``env`` replaces the environment
(the Ansible settings of the repository are always added).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


@dataclass
class RoleRun:
    rc: int
    out: str
    changed: int
    failed: int

    @property
    def text(self) -> str:
        """The output on one line (the yaml callback wraps long messages: compare words)."""
        return " ".join(self.out.split())


def apply_role(
    role: str,
    variables: dict[str, Any],
    tmp: Path,
    *args: str,
    prefix: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> RoleRun:
    tmp.mkdir(parents=True, exist_ok=True)
    play = [
        {
            "name": f"Apply {role}",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable},
            "roles": [{"role": role}],
        }
    ]
    (tmp / "play.yml").write_text(yaml.safe_dump(play))
    (tmp / "vars.json").write_text(json.dumps(variables))
    environment = {
        **(os.environ if env is None else env),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
    }
    proc = subprocess.run(
        [*(prefix or []), str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(tmp / "play.yml"),
         "-e", f"@{tmp / 'vars.json'}", *args],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", out)
    assert recap, out
    return RoleRun(proc.returncode, out, int(recap.group(1)), int(recap.group(2)))
