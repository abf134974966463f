"""Anatomy of the Kubernetes-layer roles: defaults, argument specs and READMEs agree; secrets are
required, have no default and never leave a task without no_log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.k8s_layer import ROLES_DIR, ansible_env, recap

K8S_ROLES = [
    "k8s_namespaces",
    "k8s_secrets",
    "k8s_log_volume",
    "helm_binary",
    "ingress_nginx_release",
    "mlflow_release",
    "airflow_release",
    "serving_release",
]
SECRETS = {
    "k8s_secrets": {
        "k8s_secrets_aws_access_key_id",
        "k8s_secrets_aws_secret_access_key",
        "k8s_secrets_mlflow_db_password",
        "k8s_secrets_airflow_db_password",
        "k8s_secrets_airflow_fernet_key",
        "k8s_secrets_airflow_api_secret_key",
        "k8s_secrets_airflow_jwt_secret",
        "k8s_secrets_airflow_git_ssh_private_key",
        "k8s_secrets_serving_reload_token",
    }
}
NO_LOG = "{{ not mlopslab_unsafe_show_logs | default(false) }}"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _options(role: str) -> dict[str, dict[str, Any]]:
    spec = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert isinstance(spec, dict)
    return spec


@pytest.mark.parametrize("role", K8S_ROLES)
def test_secrets_are_required_without_default_and_no_log(role: str) -> None:
    """The key sets and defaults themselves are checked for every role by tests/test_argument_specs.py."""
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml") or {}
    options = _options(role)
    secrets = SECRETS.get(role, set())
    assert not secrets & set(defaults), "a secret has a default"
    for name in secrets:
        assert options[name].get("required") is True
        assert "default" not in options[name]
        assert options[name].get("no_log") is True


@pytest.mark.parametrize("role", K8S_ROLES)
def test_readme_documents_every_variable(role: str) -> None:
    readme = (ROLES_DIR / role / "README.md").read_text()
    for name in _options(role):
        assert f"`{name}`" in readme, f"{name} missing from {role}/README.md"


@pytest.mark.parametrize("role", K8S_ROLES)
def test_main_only_includes_tagged_phase_files(role: str) -> None:
    tasks = _load(ROLES_DIR / role / "tasks" / "main.yml")
    phases = {"preflight", "install", "configure", "service"}
    for task in tasks:
        if "ansible.builtin.set_fact" in task:  # helm_binary publishes its result
            continue
        include = task["ansible.builtin.include_tasks"]
        phase = include["file"].removesuffix(".yml")
        assert phase in phases
        assert task["tags"] == [role, f"{role}_{phase}"]
        assert include["apply"]["tags"] == [role, f"{role}_{phase}"]


def test_every_task_touching_a_secret_has_no_log() -> None:
    names = SECRETS["k8s_secrets"]
    checked = 0
    for path in sorted((ROLES_DIR / "k8s_secrets" / "tasks").glob("*.yml")):
        for task in _load(path) or []:
            text = json.dumps(task)
            uses_secret = any(n in text for n in names) or "lookup('ansible.builtin.template'" in text
            if uses_secret:
                checked += 1
                assert task.get("no_log") == NO_LOG, f"{path.name}: {task.get('name')}"
    assert checked >= 2
    # the secret-bearing manifests are applied with diff off
    configure = _load(ROLES_DIR / "k8s_secrets" / "tasks" / "configure.yml")
    appliers = [t for t in configure if "kubernetes.core.k8s" in t]
    assert appliers
    assert all(t.get("diff") is False and t.get("no_log") == NO_LOG for t in appliers)


def test_airflow_release_reads_the_reload_token_secret_k8s_secrets_creates() -> None:
    # the release only names the Secret (secretKeyRef); both roles' defaults must agree on it
    secrets = _load(ROLES_DIR / "k8s_secrets" / "defaults" / "main.yml")
    airflow = _load(ROLES_DIR / "airflow_release" / "defaults" / "main.yml")
    assert (
        airflow["airflow_release_serving_token_secret_name"] == secrets["k8s_secrets_airflow_serving_token_secret_name"]
    )
    assert airflow["airflow_release_serving_token_secret_key"] == secrets["k8s_secrets_serving_reload_secret_key"]
    assert airflow["airflow_release_namespace"] == secrets["k8s_secrets_airflow_namespace"]
    # no variable of the release holds a secret value
    assert not any(o.get("no_log") or o.get("required") for o in _options("airflow_release").values())


# --- helm_binary, with stand-in helm executables (no download: get.helm.sh is unreachable here)


def _fake_helm(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n[ "$1" = version ] && echo "{version}" && exit 0\nexit 1\n')
    path.chmod(0o755)
    return path


def _helm_binary_play(tmp: Path, role_vars: dict[str, str], *flags: str) -> tuple[int, str]:
    playbook = tmp / "helm_binary.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Helm binary",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": [{"role": "mlopslab.platform.helm_binary", "vars": role_vars}],
                    "post_tasks": [
                        {"name": "Show", "ansible.builtin.debug": {"msg": "EXE={{ helm_binary_executable }}"}}
                    ],
                }
            ]
        )
    )
    exe = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run(
        [
            str(exe),
            str(playbook),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            *flags,
        ],
        cwd=ROLES_DIR.parents[4],
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_helm_binary_uses_a_given_helm_and_never_downloads(tmp_path: Path) -> None:
    helm = _fake_helm(tmp_path / "opt" / "helm", "v3.19.2")
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_path": str(helm)})
    assert rc == 0, out
    assert f"EXE={helm}" in out
    assert recap(out)["localhost"]["changed"] == 0
    assert "Download the helm release tarball" not in out


def test_helm_binary_refuses_a_given_helm_that_is_too_old_or_missing(tmp_path: Path) -> None:
    old = _fake_helm(tmp_path / "old" / "helm", "v3.12.0")
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_path": str(old)})
    assert rc != 0
    assert "helm >= 3.19.0 is needed" in out
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_path": str(tmp_path / "missing" / "helm")})
    assert rc != 0
    assert "not executable" in out


def test_helm_binary_keeps_a_usable_installed_helm_and_check_mode_reports_a_missing_one(tmp_path: Path) -> None:
    installed = _fake_helm(tmp_path / "bin" / "helm", "v3.19.0")
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_install_dir": str(installed.parent)})
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] == 0
    assert f"EXE={installed}" in out
    empty = tmp_path / "empty"
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_install_dir": str(empty)}, "--check")
    assert rc == 0, out
    assert "would install helm v3.19.0 from https://get.helm.sh/helm-v3.19.0-linux-amd64.tar.gz" in out
    assert recap(out)["localhost"]["changed"] == 1
    assert not empty.exists()
