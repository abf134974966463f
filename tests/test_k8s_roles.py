"""The Kubernetes-layer roles: k8s_secrets keeps its secrets out of logs and diffs;
kubernetes.core.helm and kubernetes.core.k8s are each called from one task file; the release
roles hold only their values and preflight; helm_binary finds, checks or installs helm inside
its version window; k8s_log_volume renders each kind. The anatomy rules every role follows
(secrets required and no_log, generated READMEs, phase files, no lab data in defaults) are in
tests/test_role_anatomy.py; the inventories' wiring of required variables in
tests/test_inventory_wiring.py."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.k8s_layer import REPO_ROOT, ROLES_DIR, ansible_env, recap

K8S_ROLES = [
    "k8s_manifests",
    "k8s_namespaces",
    "k8s_secrets",
    "k8s_log_volume",
    "helm_binary",
    "helm_release",
    "ingress_nginx_release",
    "mlflow_release",
    "airflow_release",
    "serving_release",
]
RELEASE_ROLES = ["ingress_nginx_release", "mlflow_release", "airflow_release", "serving_release"]
COLLECTION = ROLES_DIR.parent
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
        "k8s_secrets_airflow_admin_password",
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


def test_every_task_touching_a_secret_has_no_log() -> None:
    names = SECRETS["k8s_secrets"]
    checked = 0
    for path in sorted((ROLES_DIR / "k8s_secrets" / "tasks").glob("*.yml")):
        for task in _load(path) or []:
            text = json.dumps(task)
            uses_secret = any(n in text for n in names) or "lookup('ansible.builtin.template'" in text
            uses_secret = uses_secret or "__k8s_secrets_secret_variables" in text
            if uses_secret:
                checked += 1
                assert task.get("no_log") == NO_LOG, f"{path.name}: {task.get('name')}"
    assert checked >= 2
    # the secret-bearing manifests go through k8s_manifests as sensitive: no_log and no diff there
    (include,) = [
        t for t in _load(ROLES_DIR / "k8s_secrets" / "tasks" / "configure.yml") if "ansible.builtin.include_role" in t
    ]
    assert include["ansible.builtin.include_role"]["name"] == "mlopslab.platform.k8s_manifests"
    assert include["vars"]["k8s_manifests_sensitive"] is True
    for task in _load(ROLES_DIR / "k8s_manifests" / "tasks" / "configure.yml"):
        if "kubernetes.core.k8s" in task or "ansible.builtin.copy" in task:
            assert task["no_log"] == "{{ __k8s_manifests_no_log }}"
            assert task["diff"] == "{{ not (k8s_manifests_sensitive | bool) }}"
    no_log = _load(ROLES_DIR / "k8s_manifests" / "vars" / "main.yml")["__k8s_manifests_no_log"]
    assert "k8s_manifests_sensitive" in no_log
    assert "mlopslab_unsafe_show_logs" in no_log


def _modules_used(task_file: Path) -> set[str]:
    found: set[str] = set()

    def walk(tasks: list[dict[str, Any]]) -> None:
        for task in tasks or []:
            found.update(key for key in task if "." in key)
            for nested in ("block", "rescue", "always"):
                walk(task.get(nested) or [])

    walk(_load(task_file) or [])
    return found


def test_helm_and_plain_manifests_each_have_one_task_file() -> None:
    users: dict[str, set[str]] = {"kubernetes.core.helm": set(), "kubernetes.core.k8s": set()}
    for path in sorted(p for role in K8S_ROLES for p in (ROLES_DIR / role / "tasks").glob("*.yml")):
        modules = _modules_used(path)
        for module, files in users.items():
            if module in modules:
                files.add(str(path.relative_to(ROLES_DIR)))
    assert users["kubernetes.core.helm"] == {"helm_release/tasks/install.yml"}
    others = [p for p in ROLES_DIR.glob("*/tasks/*.yml") if "kubernetes.core.helm" in _modules_used(p)]
    assert [str(p.relative_to(ROLES_DIR)) for p in others] == ["helm_release/tasks/install.yml"]
    # k8s_manifests applies manifests; the release path deletes the finished Jobs it replaces
    assert users["kubernetes.core.k8s"] == {"k8s_manifests/tasks/configure.yml", "helm_release/tasks/install.yml"}


@pytest.mark.parametrize("role", RELEASE_ROLES)
def test_release_roles_hold_only_their_values_and_preflight(role: str) -> None:
    tasks = sorted(p.name for p in (ROLES_DIR / role / "tasks").glob("*.yml"))
    assert tasks == ["install.yml", "main.yml", "preflight.yml"]
    assert not (ROLES_DIR / role / "templates").exists()
    (include,) = _load(ROLES_DIR / role / "tasks" / "install.yml")
    assert include["ansible.builtin.include_role"]["name"] == "mlopslab.platform.helm_release"
    # the mechanics' settings are the release path's, set once: none is declared per release
    for generic in (
        "chart_ref",
        "chart_repo_url",
        "chart_version",
        "helm_binary",
        "values_dir",
        "timeout",
        "extra_values",
    ):
        assert f"{role}_{generic}" not in _options(role), f"{role}_{generic} belongs to helm_release"


# --- helm_binary, with stand-in helm executables (no download: get.helm.sh is unreachable here)


def _fake_helm(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n[ "$1" = version ] && echo "{version}" && exit 0\nexit 1\n')
    path.chmod(0o755)
    return path


def _helm_binary_play(
    tmp: Path, role_vars: dict[str, str], *flags: str, path_dirs: tuple[Path, ...] = ()
) -> tuple[int, str]:
    """Run the role alone; PATH holds only path_dirs and the system's, so no other helm is found."""
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
    search = [str(d) for d in path_dirs] + [str(exe.parent), "/usr/bin", "/bin"]
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
        env=ansible_env({"PATH": ":".join(search)}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_helm_binary_uses_a_given_helm_and_never_downloads(tmp_path: Path) -> None:
    helm = _fake_helm(tmp_path / "opt" / "helm", "v3.19.2")
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_path": str(helm)})
    assert rc == 0, out
    assert f"EXE={helm}" in " ".join(out.split())
    assert recap(out)["localhost"]["changed"] == 0
    assert "Download the helm release tarball" not in out


def test_helm_binary_refuses_a_given_helm_outside_the_window_and_says_why(tmp_path: Path) -> None:
    old = _fake_helm(tmp_path / "old" / "helm", "v3.12.0")
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_path": str(old)})
    assert rc != 0
    assert "version 3.12.0" in " ".join(out.split())
    assert "helm >= 3.19.0 and < 4.0.0 is needed" in " ".join(out.split())
    helm4 = _fake_helm(tmp_path / "four" / "helm", "v4.0.1")
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_path": str(helm4)})
    assert rc != 0
    assert "version 4.0.1" in " ".join(out.split())
    assert "kubernetes.core#1038" in " ".join(out.split())
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_path": str(tmp_path / "missing" / "helm")})
    assert rc != 0
    assert "not executable" in " ".join(out.split())


def test_helm_binary_refuses_to_pin_helm_4(tmp_path: Path) -> None:
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_version": "v4.0.0", "helm_binary_install_dir": str(tmp_path)})
    assert rc != 0
    assert "helm_binary_version=v4.0.0 is outside the window" in " ".join(out.split())


def test_helm_binary_prefers_a_usable_helm_on_path(tmp_path: Path) -> None:
    on_path = _fake_helm(tmp_path / "built" / "helm", "v3.20.1")
    rc, out = _helm_binary_play(
        tmp_path, {"helm_binary_install_dir": str(tmp_path / "empty")}, path_dirs=(on_path.parent,)
    )
    assert rc == 0, out
    assert f"EXE={on_path}" in " ".join(out.split())
    assert recap(out)["localhost"]["changed"] == 0
    assert not (tmp_path / "empty").exists()


def test_helm_binary_passes_over_a_helm_4_on_path_and_says_why(tmp_path: Path) -> None:
    helm4 = _fake_helm(tmp_path / "four" / "helm", "v4.1.0")
    rc, out = _helm_binary_play(
        tmp_path, {"helm_binary_install_dir": str(tmp_path / "empty")}, "--check", path_dirs=(helm4.parent,)
    )
    assert rc == 0, out
    assert f"{helm4} is helm 4.1.0, not used" in " ".join(out.split())
    assert "kubernetes.core#1038" in " ".join(out.split())
    assert "would install helm v3.19.0" in " ".join(out.split())


def test_helm_binary_keeps_a_usable_installed_helm_and_check_mode_reports_a_missing_one(tmp_path: Path) -> None:
    installed = _fake_helm(tmp_path / "bin" / "helm", "v3.19.0")
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_install_dir": str(installed.parent)})
    assert rc == 0, out
    assert recap(out)["localhost"]["changed"] == 0
    assert f"EXE={installed}" in " ".join(out.split())
    empty = tmp_path / "empty"
    rc, out = _helm_binary_play(tmp_path, {"helm_binary_install_dir": str(empty)}, "--check")
    assert rc == 0, out
    # the tarball of this machine's OS and architecture (facts gathered for the download only)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
    assert f"would install helm v3.19.0 from https://get.helm.sh/helm-v3.19.0-linux-{arch}.tar.gz" in " ".join(
        out.split()
    )
    # the parent of the missing directory is writable: no privilege escalation
    assert "without privilege escalation" in " ".join(out.split())
    assert recap(out)["localhost"]["changed"] == 1
    assert not empty.exists()


# --- k8s_log_volume: the three kinds, rendered by the role itself (render-only mode)


def test_log_volume_kinds_render_valid_manifests(tmp_path: Path) -> None:
    from tests.support.k8s_layer import manifests, validate_manifest

    kinds = {
        "nfs": {"k8s_log_volume_server": "10.0.0.5", "k8s_log_volume_path": "/exports/logs"},
        "host_path": {"k8s_log_volume_path": "/var/lib/airflow-logs", "k8s_log_volume_node": "node-1"},
        "storage_class": {"k8s_log_volume_storage_class": "cephfs"},
    }
    plays = [
        {
            "name": f"Log volume {kind}",
            "hosts": "localhost",
            "gather_facts": False,
            "roles": [
                {
                    "role": "mlopslab.platform.k8s_log_volume",
                    "vars": {
                        "k8s_log_volume_kind": kind,
                        "k8s_log_volume_namespace": "airflow",
                        "k8s_manifests_render_dir": str(tmp_path / kind),
                        **settings,
                    },
                }
            ],
        }
        for kind, settings in kinds.items()
    ]
    playbook = tmp_path / "log_volume.yml"
    playbook.write_text(yaml.safe_dump(plays))
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
        ],
        cwd=REPO_ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = {kind: manifests((tmp_path / kind / "manifests" / "log-volume.yml").read_text()) for kind in kinds}
    for kind_docs in docs.values():
        for doc in kind_docs:
            validate_manifest(doc)
    nfs_pv, _ = docs["nfs"]
    assert nfs_pv["spec"]["nfs"] == {"server": "10.0.0.5", "path": "/exports/logs"}
    host_pv, host_pvc = docs["host_path"]
    assert host_pv["spec"]["hostPath"] == {"path": "/var/lib/airflow-logs", "type": "Directory"}
    term = host_pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert (term["key"], term["values"]) == ("kubernetes.io/hostname", ["node-1"])
    assert host_pvc["spec"]["volumeName"] == host_pv["metadata"]["name"]
    assert "nfs" not in host_pv["spec"]
    (claim,) = docs["storage_class"]
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["storageClassName"] == "cephfs"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "volumeName" not in claim["spec"]


def test_log_volume_refuses_a_kind_without_its_settings(tmp_path: Path) -> None:
    playbook = tmp_path / "bad.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Log volume without its server",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": [
                        {
                            "role": "mlopslab.platform.k8s_log_volume",
                            "vars": {
                                "k8s_log_volume_namespace": "airflow",
                                "k8s_manifests_render_dir": str(tmp_path / "out"),
                            },
                        }
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
        ],
        cwd=REPO_ROOT,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0
    assert "kind nfs needs k8s_log_volume_server" in said
    assert not (tmp_path / "out").exists()
