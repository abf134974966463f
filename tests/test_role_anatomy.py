"""Role anatomy (docs/development.md): every rule applies to every role that exists.

Roles are discovered, never listed: every directory with a tasks/ folder under the
collection's roles/ and under the repository's roles/ (the site roles). A new role is checked
the moment it exists.

- The argument spec is the one description of a role's variables (tests/test_argument_specs.py
  keeps its defaults and defaults/main.yml equal).
- Every option has a description and starts with ``<role>_``; every computed variable in vars/
  starts with ``__<role>_``; every key of defaults/main.yml has a comment line above it.
- A secret (an option named like one) is ``no_log``; a ``no_log`` option is required with no
  default, or optional with the empty default; every task that names one has ``no_log`` (a
  role it passes the secret to is checked by the same rule; an assertion, whose result shows
  its conditions unrendered, only when its messages template one).
- The README exists and its variable tables are what scripts/role_docs.py renders from the
  argument spec (run ``python scripts/role_docs.py`` after changing one).
- tasks/main.yml only includes or imports phase files, tagged ``<role>`` and
  ``<role>_<phase>`` (include_tasks also applies those tags to the included tasks); every
  task file is reached from main.yml, another task file or an argument-spec entry point.
- defaults/main.yml holds no lab data: what has no neutral default is required, and the lab's
  values live in inventories/lab.
- A collection role has galaxy_info with platforms in meta/main.yml.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import role_docs

REPO = Path(__file__).resolve().parents[1]
COLLECTION_ROLES = REPO / "collections/ansible_collections/mlopslab/platform/roles"
ROLE_DIRS = role_docs.role_dirs()
# Option names that hold secret material (not the names of Secrets or of their keys).
SECRET_NAME = re.compile(
    r"(password|_secret_access_key|_access_key_id|_reload_token|_fernet_key|_api_secret_key|"
    r"_jwt_secret|_private_key)$"
)
INCLUDES = ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks")
ROLE_CALLS = ("ansible.builtin.include_role", "ansible.builtin.import_role")
# What the lab's inventory holds and a role's defaults must not (docs/development.md): the
# lab's values live in inventories/lab.
LAB_DATA = (
    "192.168.",
    "airflow_db",
    "mlflow_db",
    "airflow_user",
    "mlflow_user",
    "ap-northeast-2",
    "iris_classifier",
    "iris-serving",
    "/mnt/nfs_share",
    "mlops-training",
    "mlops-serving",
    "mlflow-artifacts",
    "keonho",
    "airflow.local",
    "mlflow.local",
    "fastapi.local",
)


def _params() -> list[Any]:
    return [
        pytest.param(role, id=f"{'collection' if role.is_relative_to(COLLECTION_ROLES) else 'site'}/{role.name}")
        for role in ROLE_DIRS
    ]


def _load(path: Path) -> Any:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def _specs(role: Path) -> dict[str, Any]:
    spec_file = role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"{role.name}: meta/argument_specs.yml is missing"
    specs: dict[str, Any] = _load(spec_file).get("argument_specs", {})
    assert "main" in specs, f"{role.name}: argument_specs has no 'main' entry point"
    return specs


def _options(role: Path, entry: str = "main") -> dict[str, dict[str, Any]]:
    return {name: opt or {} for name, opt in (_specs(role)[entry].get("options") or {}).items()}


def _tasks(items: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    """Every task of a task list, inside blocks, rescues and always sections too."""
    for item in items or []:
        nested = [item.get(section) for section in ("block", "rescue", "always") if item.get(section)]
        if nested:
            for section in nested:
                yield from _tasks(section)
        else:
            yield item


@pytest.mark.parametrize("role", _params())
def test_variables_are_described_and_prefixed(role: Path) -> None:
    for entry in _specs(role):
        for name, opt in _options(role, entry).items():
            assert opt.get("description"), f"{role.name}: option {name} ({entry}) has no description"
            assert name.startswith(f"{role.name}_"), f"{role.name}: option {name} lacks the role prefix"
    for vars_file in sorted((role / "vars").glob("*.yml")):
        for name in _load(vars_file):
            assert name.startswith(f"__{role.name}_"), f"{role.name}: {vars_file.name}: {name} lacks __{role.name}_"


@pytest.mark.parametrize("role", _params())
def test_every_default_has_a_comment(role: Path) -> None:
    path = role / "defaults" / "main.yml"
    lines = path.read_text().splitlines() if path.is_file() else []
    for number, line in enumerate(lines):
        key = re.match(r"^([A-Za-z0-9_]+):", line)
        if key:
            above = next((text for text in reversed(lines[:number]) if text.strip()), "")
            assert above.startswith("#"), f"{role.name}: defaults/main.yml: {key.group(1)} has no comment above it"


@pytest.mark.parametrize("role", _params())
def test_secrets_are_required_without_default_and_no_log(role: Path) -> None:
    defaults = _load(role / "defaults" / "main.yml")
    for name, opt in _options(role).items():
        if SECRET_NAME.search(name):
            assert opt.get("no_log") is True, f"{role.name}: {name} looks like a secret but is not no_log"
        if opt.get("no_log") and opt.get("required"):
            assert "default" not in opt, f"{role.name}: secret {name} has a default in argument_specs"
            assert name not in defaults, f"{role.name}: secret {name} has a default in defaults/main.yml"
        elif opt.get("no_log"):  # an optional secret: empty unless the caller gives one
            assert opt.get("default") == "" == defaults.get(name), f"{role.name}: optional secret {name} is not empty"


@pytest.mark.parametrize("role", _params())
def test_tasks_naming_a_secret_are_no_log(role: Path) -> None:
    secrets = [name for name, opt in _options(role).items() if opt.get("no_log")]
    for path in sorted((role / "tasks").glob("*.yml")):
        for task in _tasks(_load(path) or []):
            if any(call in task for call in ROLE_CALLS):
                continue
            text = json.dumps(task)
            if "ansible.builtin.assert" in task:
                # An assertion's result holds its conditions as written, unrendered: only the
                # expressions templated into its messages could carry a secret's value.
                messages = json.dumps([task["ansible.builtin.assert"].get(key) for key in ("fail_msg", "success_msg")])
                text = " ".join(re.findall(r"\{\{.*?\}\}", messages))
            named = [name for name in secrets if re.search(rf"\b{name}\b", text)]
            if named:
                where = f"{role.name}: {path.name}: {task.get('name')!r}"
                assert task.get("no_log"), f"{where} names {named} without no_log"


@pytest.mark.parametrize("role", _params())
def test_readme_tables_are_generated_from_the_argument_spec(role: Path) -> None:
    problem = role_docs.stale(role)
    assert problem is None, f"{problem} (run: python scripts/role_docs.py)"


@pytest.mark.parametrize("role", _params())
def test_main_only_includes_tagged_phase_files(role: Path) -> None:
    tasks = _load(role / "tasks" / "main.yml")
    assert tasks, f"{role.name}: tasks/main.yml is empty"
    for task in tasks:
        module = next((key for key in INCLUDES if key in task), None)
        assert module, f"{role.name}: tasks/main.yml: {task.get('name')!r} is not an include of a phase file"
        spec = task[module]
        file = spec if isinstance(spec, str) else spec["file"]
        phase = Path(file).stem
        expected = [role.name, f"{role.name}_{phase}"]
        assert (role / "tasks" / file).is_file(), f"{role.name}: tasks/{file} does not exist"
        assert task.get("tags", [])[:2] == expected, f"{role.name}: {file} must be tagged {expected}"
        if module == "ansible.builtin.include_tasks":
            applied = spec.get("apply", {}).get("tags", []) if isinstance(spec, dict) else []
            assert applied[:2] == expected, f"{role.name}: {file} must apply the tags {expected}"


@pytest.mark.parametrize("role", _params())
def test_every_task_file_is_reached(role: Path) -> None:
    files = sorted((role / "tasks").glob("*.yml"))
    texts = {path.name: path.read_text() for path in files}
    entry_points = {f"{entry}.yml" for entry in _specs(role)}
    for path in files:
        reached = path.name in entry_points or any(
            re.search(rf"\b{re.escape(path.name)}\b", text) for name, text in texts.items() if name != path.name
        )
        assert reached, f"{role.name}: tasks/{path.name} is included by no task file and is no entry point"


@pytest.mark.parametrize("role", [p for p in _params() if p.values[0].is_relative_to(COLLECTION_ROLES)])
def test_collection_role_metadata(role: Path) -> None:
    galaxy_info = _load(role / "meta" / "main.yml").get("galaxy_info", {})
    assert galaxy_info.get("role_name") == role.name, f"{role.name}: meta/main.yml role_name"
    assert galaxy_info.get("platforms"), f"{role.name}: meta/main.yml lists no platforms"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


@pytest.mark.parametrize("role", _params())
def test_role_defaults_hold_no_lab_data(role: Path) -> None:
    values = list(_strings(_load(role / "defaults" / "main.yml")))
    found = [(marker, value) for value in values for marker in LAB_DATA if marker in value]
    assert not found, f"{role.name}: defaults/main.yml holds lab data {found}: make it required or neutral"
