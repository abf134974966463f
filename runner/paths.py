"""Where the runner finds the project and keeps its run artifacts."""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The checkout holding site.yml, playbooks/ and ansible.cfg.

    MLOPSLAB_PROJECT_DIR overrides it (the runner's own tests point it at small test projects).
    """
    override = os.environ.get("MLOPSLAB_PROJECT_DIR")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    """Run artifacts and summaries live outside the checkout (they may hold host facts)."""
    override = os.environ.get("MLOPSLAB_STATE_DIR")
    if override:
        return Path(override).resolve()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mlops-lab"


def runs_dir() -> Path:
    return state_dir() / "runs"


def local_home() -> Path:
    """The local platform's data, venvs, secrets and endpoints: the one definition of where they live.

    MLOPSLAB_HOME overrides it. Every stage the runner starts gets it as MLOPSLAB_HOME, which is
    where inventories/local reads mlopslab_local_home from.
    """
    override = os.environ.get("MLOPSLAB_HOME")
    if override:
        return Path(override)
    return Path.home() / ".local" / "share" / "mlops-lab"
