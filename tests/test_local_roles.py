"""Static conformance of the local platform's roles (docs/development.md, role anatomy).

Cheap checks that keep the roles honest between e2e runs: defaults and argument specs name
the same variables with the same defaults, secrets have no default and are no_log, every
variable is in the README, tasks/main.yml only includes tagged phase files, and the local
inventory wires every required variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES_DIR = ROOT / "collections" / "ansible_collections" / "mlopslab" / "platform" / "roles"
LOCAL_ROLES = ["supervised_service", "s3_local", "mlflow_local", "airflow_local", "serving_local"]
SECRETS = {
    "s3_local": {"s3_local_access_key_id", "s3_local_secret_access_key"},
    "mlflow_local": {
        "mlflow_local_db_password",
        "mlflow_local_aws_access_key_id",
        "mlflow_local_aws_secret_access_key",
    },
    "airflow_local": {
        "airflow_local_db_password",
        "airflow_local_fernet_key",
        "airflow_local_api_secret_key",
        "airflow_local_admin_password",
    },
    "serving_local": {
        "serving_local_reload_token",
        "serving_local_aws_access_key_id",
        "serving_local_aws_secret_access_key",
    },
}
# Required but not secret: what the caller names (supervised_service is called per service).


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _role_dir(role: str) -> Path:
    return ROOT / "roles" / role if role == "smoke" else ROLES_DIR / role


def _options(role: str) -> dict[str, dict[str, Any]]:
    spec = _load(_role_dir(role) / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert isinstance(spec, dict)
    return spec


@pytest.mark.parametrize("role", [*LOCAL_ROLES, "smoke"])
def test_secrets_are_required_without_default_and_no_log(role: str) -> None:
    """The key sets and defaults themselves are checked for every role by tests/test_argument_specs.py."""
    defaults = _load(_role_dir(role) / "defaults" / "main.yml") or {}
    options = _options(role)
    secrets = SECRETS.get(role, set()) | ({"smoke_airflow_password"} if role == "smoke" else set())
    assert not secrets & set(defaults), "a secret has a default"
    for name in secrets:
        assert options[name].get("required") is True
        assert "default" not in options[name]
        assert options[name].get("no_log") is True


@pytest.mark.parametrize("role", [*LOCAL_ROLES, "smoke"])
def test_readme_documents_every_variable(role: str) -> None:
    readme = (_role_dir(role) / "README.md").read_text()
    for name in _options(role):
        assert f"`{name}`" in readme, f"{name} missing from {role}/README.md"


@pytest.mark.parametrize("role", [*LOCAL_ROLES, "smoke"])
def test_main_only_includes_tagged_phase_files(role: str) -> None:
    tasks = _load(_role_dir(role) / "tasks" / "main.yml")
    for task in tasks:
        include = task["ansible.builtin.include_tasks"]
        phase = Path(include["file"]).stem
        assert (_role_dir(role) / "tasks" / include["file"]).exists()
        assert task["tags"] == [role, f"{role}_{phase}"]
        assert include["apply"]["tags"] == [role, f"{role}_{phase}"]


@pytest.mark.parametrize("role", [r for r in LOCAL_ROLES if r != "supervised_service"])
def test_local_inventory_wires_every_required_variable(role: str) -> None:
    wired = _load(ROOT / "inventories" / "local" / "group_vars" / "local_platform" / "main.yml")
    for name, option in _options(role).items():
        if option.get("required"):
            assert name in wired, f"{name} is required by {role} but not wired for local_platform"
            assert "mlopslab_" in str(wired[name]), f"{name} must come from an mlopslab_* variable"


def test_local_inventory_binds_every_service_to_loopback() -> None:
    wired = _load(ROOT / "inventories" / "local" / "group_vars" / "local_platform" / "main.yml")
    every = _load(ROOT / "inventories" / "local" / "group_vars" / "all" / "main.yml")
    assert every["mlopslab_local_bind_address"] == "127.0.0.1"
    for name in ("s3_local_bind_address", "mlflow_local_host", "airflow_local_host", "serving_local_host"):
        assert wired[name] == "{{ mlopslab_local_bind_address }}", name
