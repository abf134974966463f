"""Where the runner finds the project and keeps its run artifacts."""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from types import ModuleType

PLUGINS = Path("collections/ansible_collections/mlopslab/platform/plugins")


def project_dir() -> Path:
    """The checkout holding site.yml, playbooks/ and ansible.cfg.

    MLOPSLAB_PROJECT_DIR overrides it (the runner's own tests point it at small test projects).
    """
    override = os.environ.get("MLOPSLAB_PROJECT_DIR")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parent.parent


@cache
def collection_plugin(kind: str, name: str) -> ModuleType:
    """The collection's ``plugins/<kind>/<name>.py``, loaded from its file as Ansible loads it (no
    install), so that the runner applies the roles' own rules (e.g. the release watch's pod verdict)."""
    path = project_dir() / PLUGINS / kind / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mlopslab_{kind}_{name}", path)
    assert spec is not None, path
    assert spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
