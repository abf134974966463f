"""The real preflight stage against copies of the lab inventory (nothing is contacted: preflight
runs on the control node only), with real ansible-vault encrypted secrets."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.runner.conftest import REPO, Result

VAULT_KEYS = [
    "vault_airflow_db_password",
    "vault_mlflow_db_password",
    "vault_aws_access_key_id",
    "vault_aws_secret_access_key",
    "vault_airflow_fernet_key",
    "vault_airflow_api_secret_key",
    "vault_airflow_jwt_secret",
    "vault_airflow_git_ssh_private_key",
    "vault_airflow_admin_password",
    "vault_serving_reload_token",
]


def run_runner(state: Path, *args: str) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        env={**os.environ, "MLOPSLAB_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return Result(proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture
def lab_copy(tmp_path: Path) -> Path:
    inventory = tmp_path / "lab"
    shutil.copytree(REPO / "inventories" / "lab", inventory)
    return inventory


def write_vault(inventory: Path, values: dict[str, str], password_file: Path) -> None:
    vault = inventory / "group_vars" / "all" / "vault.yml"
    vault.write_text(yaml.safe_dump(values))
    subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(password_file),
            str(vault),
        ],
        check=True,
        capture_output=True,
    )
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")


def set_group_var(inventory: Path, key: str, value: Any) -> None:
    path = inventory / "group_vars" / "all" / "main.yml"
    data = yaml.safe_load(path.read_text())
    data[key] = value
    path.write_text(yaml.safe_dump(data))


def files_containing(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits


def test_local_inventory_passes_preflight(tmp_path: Path) -> None:
    result = run_runner(tmp_path / "state", "bootstrap", "-i", "inventories/local", "--only", "preflight")
    assert result.rc == 0, result.output


def test_canary_secret_never_appears_in_output_artifacts_or_events(lab_copy: Path, tmp_path: Path) -> None:
    canary = "canary-" + secrets.token_hex(12)
    password_file = tmp_path / "vault-pass"
    password_file.write_text(secrets.token_urlsafe(24))
    write_vault(lab_copy, {key: f"{canary}-{key}" for key in VAULT_KEYS}, password_file)
    state = tmp_path / "state"

    result = run_runner(
        state,
        "bootstrap",
        "-i",
        str(lab_copy),
        "--only",
        "preflight",
        "--vault-password-file",
        str(password_file),
        "-vv",
    )

    assert result.rc == 0, result.output
    assert "Assert every needed secret is defined and filled in" in result.output, "the secrets were not checked"
    assert canary not in result.output
    assert files_containing(state, canary) == []
    # the job events are there (and were searched above)
    assert list(state.rglob("job_events/*.json"))


def test_missing_and_placeholder_secrets_are_named_not_shown(lab_copy: Path, tmp_path: Path) -> None:
    canary = "canary-" + secrets.token_hex(12)
    password_file = tmp_path / "vault-pass"
    password_file.write_text(secrets.token_urlsafe(24))
    values = {key: f"{canary}-{key}" for key in VAULT_KEYS if key != "vault_aws_secret_access_key"}
    values["vault_serving_reload_token"] = f"CHANGE-ME-{canary}"
    write_vault(lab_copy, values, password_file)
    state = tmp_path / "state"

    result = run_runner(
        state, "bootstrap", "-i", str(lab_copy), "--only", "preflight", "--vault-password-file", str(password_file)
    )

    assert result.rc == 1
    assert "mlopslab_aws_secret_access_key is undefined" in result.output
    assert "vault_aws_secret_access_key" in result.output
    assert "mlopslab_serving_reload_token is empty or still CHANGE-ME" in result.output
    assert canary not in result.output
    assert files_containing(state, canary) == []


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mlopslab_pod_cidr", "10.244.0.0/33", "mlopslab_pod_cidr"),
        ("mlopslab_pod_cidr", "10.244.1.0/16", "no host bits"),
        ("mlopslab_lab_subnet", "192.168.18/24", "mlopslab_lab_subnet"),
        ("mlopslab_pod_cidr", "192.168.0.0/16", "overlaps mlopslab_lab_subnet"),
        ("mlopslab_db_port", "54321x", "mlopslab_db_port"),
        ("mlopslab_releases", ["mlflow", "kubeflow"], '["mlflow", "kubeflow"] must be a list of releases of'),
        ("mlopslab_releases", "mlflow", 'mlopslab_releases = "mlflow" must be a list of releases'),
    ],
)
def test_bad_inventory_fails_preflight_naming_the_variable(
    lab_copy: Path, tmp_path: Path, key: str, value: Any, message: str
) -> None:
    set_group_var(lab_copy, key, value)
    result = run_runner(tmp_path / "state", "bootstrap", "-i", str(lab_copy), "--only", "preflight")
    assert result.rc == 1
    assert "stage preflight failed" in result.output
    assert message in result.output


def test_malformed_host_address_is_named(lab_copy: Path, tmp_path: Path) -> None:
    hosts = lab_copy / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("192.168.18.142", "192.168.18.300"))
    result = run_runner(tmp_path / "state", "bootstrap", "-i", str(lab_copy), "--only", "preflight")
    assert result.rc == 1
    assert "postgres-server" in result.output
    assert "192.168.18.300" in result.output


def test_preflight_knows_every_runner_stage() -> None:
    """The runner passes the stages it is about to run as preflight_stages; an argspec that lags
    behind runner/stages.py fails every bootstrap at its first task."""
    from runner.stages import STAGE_NAMES

    spec = yaml.safe_load((REPO / "roles/preflight/meta/argument_specs.yml").read_text())
    option = spec["argument_specs"]["main"]["options"]["preflight_stages"]
    assert set(option["choices"]) == set(STAGE_NAMES)
    defaults = yaml.safe_load((REPO / "roles/preflight/defaults/main.yml").read_text())
    assert option["default"] == defaults["preflight_stages"] == [s for s in STAGE_NAMES if s != "preflight"]
