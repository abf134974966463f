"""Both inventories give every role the variables it requires, and the local one binds loopback.

Roles hold no lab knowledge: what has no sane default is ``required: true`` in their argument
specs, and the playbooks or the group_vars of the group a play runs on supply it (from the
``mlopslab_*`` settings). The plays and roles are discovered from playbooks/*.yml, so a new
play, role or required variable is checked without listing it here. A play whose group has
no host in an inventory never runs there and is not checked for it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[1]
ROLE_BASES = {
    "mlopslab.platform.": ROOT / "collections/ansible_collections/mlopslab/platform/roles",
    "": ROOT / "roles",
}
INVENTORIES = ("local", "lab")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) or {}


def _role_dir(name: str) -> Path:
    for prefix, base in ROLE_BASES.items():
        if prefix and name.startswith(prefix):
            return base / name.removeprefix(prefix)
    return ROLE_BASES[""] / name


def _required(role: Path) -> set[str]:
    options = _load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"].get("options") or {}
    return {name for name, opt in options.items() if (opt or {}).get("required") and "default" not in (opt or {})}


def _plays() -> list[tuple[str, dict[str, Any]]]:
    plays = []
    for playbook in sorted((ROOT / "playbooks").glob("*.yml")):
        for play in _load(playbook):
            if "hosts" in play and play.get("roles"):
                plays.append((f"{playbook.name}: {play['name']}", play))
    return plays


@cache
def _groups(inventory: str) -> dict[str, list[str]]:
    groups = load_inventory(ROOT / "inventories" / inventory).groups
    return {**groups, "localhost": ["localhost"]}


def _group_vars(inventory: str, group: str) -> dict[str, Any]:
    wired: dict[str, Any] = {}
    for name in ("all", group):
        for path in sorted((ROOT / "inventories" / inventory / "group_vars" / name).glob("*.yml")):
            wired.update(_load(path))
    return wired


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize(("label", "play"), _plays(), ids=[label for label, _ in _plays()])
def test_every_required_role_variable_is_wired(inventory: str, label: str, play: dict[str, Any]) -> None:
    if not _groups(inventory).get(play["hosts"]):
        pytest.skip(f"no host in {play['hosts']} in inventories/{inventory}")
    available = set(_group_vars(inventory, play["hosts"])) | set(play.get("vars") or {})
    for entry in play["roles"]:
        role = entry["role"] if isinstance(entry, dict) else entry
        given = set(entry) | set(entry.get("vars") or {}) if isinstance(entry, dict) else set()
        missing = sorted(_required(_role_dir(role)) - available - given)
        assert not missing, f"{label}: {role} requires {missing}, which inventories/{inventory} does not wire"


def test_local_inventory_binds_every_service_to_loopback() -> None:
    wired = _group_vars("local", "local_platform")
    assert wired["mlopslab_local_bind_address"] == "127.0.0.1"
    for name in ("s3_local_bind_address", "mlflow_local_host", "airflow_local_host", "serving_local_host"):
        assert wired[name] == "{{ mlopslab_local_bind_address }}", name
    db = _group_vars("local", "db_servers")
    assert db["postgresql_server_listen_addresses"] == ["{{ mlopslab_local_bind_address }}"]
