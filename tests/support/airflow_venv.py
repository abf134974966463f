"""The Airflow venv the DAG tests run in, built from dags/requirements.txt and cached.

Airflow cannot live in the project's .venv (its pins fight with ansible and molecule), so the
tests run Airflow in its own venv at
``${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}/venvs/airflow-<hash>``, where the hash covers the
requirement list and the Python version: editing dags/requirements.txt builds a new venv, an
unchanged list reuses the old one. A cold build takes about 10 s with uv (100 s with pip), and uv
keeps its wheels in ~/.cache/uv for later builds; a warm lookup is instant.

``python -m tests.support.airflow_venv`` builds it if needed and prints its python.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.collection import plugin

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS_FILE = REPO_ROOT / "dags" / "requirements.txt"
_COMPLETE_MARKER = ".mlopslab-complete"


def cache_root() -> Path:
    return Path(os.environ.get("MLOPSLAB_CACHE") or Path.home() / ".cache" / "mlops-lab")


def requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of ``path``, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def venv_key(reqs: list[str]) -> str:
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return hashlib.sha256("\n".join([python, *reqs]).encode()).hexdigest()[:16]


def venv_dir(reqs: list[str] | None = None) -> Path:
    return cache_root() / "venvs" / f"airflow-{venv_key(reqs if reqs is not None else requirements())}"


def ensure_airflow_venv() -> Path:
    """Create the venv if it is missing or half-built, and return its python."""
    reqs = requirements()
    target = venv_dir(reqs)
    python = target / "bin" / "python"
    if (target / _COMPLETE_MARKER).is_file():
        return python
    target.parent.mkdir(parents=True, exist_ok=True)
    # A lock beside the venv: parallel test sessions (or the local platform) wait for one build.
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE_MARKER).is_file():
            return python
        if target.exists():  # an interrupted build: start over
            shutil.rmtree(target)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        # The platform's own choice of installer (venv_install: uv beside this interpreter, with
        # pip's index settings passed on; pip where there is no uv).
        _, argv, env = plugin("modules", "venv_install").install_argv("auto", str(target), reqs, None)
        subprocess.run(argv, env={**os.environ, **env}, check=True)
        (target / _COMPLETE_MARKER).write_text("\n".join(reqs) + "\n")
    return python


if __name__ == "__main__":
    print(ensure_airflow_venv())
