"""Helpers of the Kubernetes-layer tests: chart-values checks, manifest validation, playbook runs.

The pinned upstream charts' values.yaml and values.schema.json come from
tests/support/chart_data.py (cache, the chart's repository, or MLOPSLAB_CHART_SCHEMAS).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.support.chart_data import chart_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO_ROOT / "collections" / "ansible_collections" / "mlopslab" / "platform" / "roles"
SERVING_CHART = REPO_ROOT / "charts" / "serving"
K8S_SCHEMA_VERSION = "1.30.0"

# Free-form maps of ingress-nginx's values.yaml: any key below them is fine.
INGRESS_NGINX_FREE_FORM = {
    "annotations",
    "labels",
    "nodeSelector",
    "config",
    "extraArgs",
    "podAnnotations",
    "podLabels",
    "resources",
    "affinity",
    "tolerations",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def helm_merge(base: Any, override: Any) -> Any:
    """Helm's coalescing: maps merge recursively, null deletes a key, lists and scalars replace."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def chart_defaults(chart: str) -> dict[str, Any]:
    data = load_yaml(chart_dir(chart) / "values.yaml")
    assert isinstance(data, dict)
    return data


def schema_errors(chart: str, overrides: dict[str, Any]) -> list[str]:
    """Errors of chart defaults + ``overrides`` against the chart's values.schema.json.

    For Airflow, whose schema leaves the root open, unknown top-level keys are errors too.
    """
    base = chart_dir(chart)
    schema = json.loads((base / "values.schema.json").read_text())
    merged = helm_merge(load_yaml(base / "values.yaml"), overrides)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(merged)]
    unknown = sorted(set(overrides) - set(schema.get("properties", {})))
    errors += [f"{key}: not a top-level key of the {chart} chart" for key in unknown]
    return errors


def _key_paths(data: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(data, dict):
        for key, value in data.items():
            path = (*prefix, str(key))
            yield path
            if str(key) not in INGRESS_NGINX_FREE_FORM:
                yield from _key_paths(value, path)


def ingress_nginx_unknown_paths(overrides: dict[str, Any]) -> list[str]:
    """Key paths of ``overrides`` that ingress-nginx 4.15.1's values.yaml does not have."""
    defaults = load_yaml(chart_dir("ingress-nginx") / "values.yaml")
    unknown = []
    for path in _key_paths(overrides):
        node: Any = defaults
        for part in path:
            if not isinstance(node, dict) or part not in node:
                unknown.append(".".join(path))
                break
            node = node[part]
    return unknown


def validate_manifest(doc: dict[str, Any]) -> None:
    """Strict validation against the Kubernetes 1.30 OpenAPI schemas (raises on error)."""
    kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)


def manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCAL_TEMP": env.get("ANSIBLE_LOCAL_TEMP", "/tmp/.ansible-mlopslab/tmp"),
        }
    )
    env.update(extra or {})
    return env


def run_playbook(args: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run ansible-playbook from the repository root; return stdout+stderr (raise on failure)."""
    venv_bin = REPO_ROOT / ".venv" / "bin"
    exe = venv_bin / "ansible-playbook"
    cmd = [str(exe) if exe.exists() else "ansible-playbook", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env or ansible_env(), capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed with {proc.returncode}:\n{output}")
    return output


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    result: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            result[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return result
