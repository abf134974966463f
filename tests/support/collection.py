"""The collection's Python plugins, imported by path the way Ansible loads them (no install)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

COLLECTION = Path(__file__).resolve().parents[2] / "collections" / "ansible_collections" / "mlopslab" / "platform"


def plugin(kind: str, name: str) -> ModuleType:
    """plugins/<kind>/<name>.py as a module, e.g. ``plugin("filter", "image_refs")``."""
    path = COLLECTION / "plugins" / kind / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mlopslab_{kind}_{name}", path)
    assert spec is not None, path
    assert spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
