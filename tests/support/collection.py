"""The collection's Python plugins: imported by path the way Ansible loads them (no install), or
run as modules by a real ``ansible`` on localhost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from runner.paths import collection_plugin

COLLECTION = Path(__file__).resolve().parents[2] / "collections" / "ansible_collections" / "mlopslab" / "platform"


def plugin(kind: str, name: str) -> ModuleType:
    """plugins/<kind>/<name>.py as a module, e.g. ``plugin("filter", "image_refs")``: the runner's
    own loader (runner.paths.collection_plugin)."""
    return collection_plugin(kind, name)


def run_module(name: str, args: dict[str, Any], tmp: Path, *flags: str, python: str = sys.executable) -> dict[str, Any]:
    """One run of ``mlopslab.platform.<name>`` on localhost with the interpreter ``python``; its result.

    The module must succeed (the ansible run's output is the assertion message otherwise); the
    result comes from the tree callback, which writes one JSON file per host."""
    from tests.support.k8s_layer import REPO_ROOT, ansible_env

    tree = tmp / "tree"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "localhost", "-c", "local", "-m",
         f"mlopslab.platform.{name}", "-a", json.dumps(args),
         "-e", f"ansible_python_interpreter={python}", "--tree", str(tree), *flags],
        cwd=REPO_ROOT, env=ansible_env({}), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads((tree / "localhost").read_text())
    return result
