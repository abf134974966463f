"""Every role's defaults/main.yml and meta/argument_specs.yml name the same variables.

Ansible does not apply argument-spec defaults to role variables, so defaults/main.yml is where
defaults live and the argument spec is where they are typed and described; this test keeps the
two key sets equal, for every role of the collection and of the top-level roles/ directory
(new roles are picked up automatically).

The rule, for the `main` entry point:

- every key of defaults/main.yml is an option of the argument spec, and
- every option of the argument spec is a key of defaults/main.yml, except the options that are
  ``required: true`` with no ``default``: those are the values only the caller can supply
  (secrets from the vault, above all) and they must NOT appear in defaults/main.yml, where a
  default would silently satisfy the requirement;
- the argument spec states each variable's default, equal to the value in defaults/main.yml;
- every option has a description and every public variable starts with ``<role>_``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROLE_DIRS = sorted(
    p
    for base in (REPO / "collections/ansible_collections/mlopslab/platform/roles", REPO / "roles")
    if base.is_dir()
    for p in base.iterdir()
    if p.is_dir() and (p / "tasks").is_dir()
)


def _load(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


@pytest.mark.parametrize("role", ROLE_DIRS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_defaults_match_argument_specs(role: Path) -> None:
    spec_file = role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"{role.name}: meta/argument_specs.yml is missing"
    specs = _load(spec_file).get("argument_specs", {})
    assert "main" in specs, f"{role.name}: argument_specs has no 'main' entry point"
    options: dict[str, dict] = specs["main"].get("options") or {}
    defaults = _load(role / "defaults" / "main.yml")

    caller_only = {
        name for name, opt in options.items() if (opt or {}).get("required") and "default" not in (opt or {})
    }
    undocumented = sorted(set(defaults) - set(options))
    missing = sorted(set(options) - caller_only - set(defaults))
    defaulted_secrets = sorted(caller_only & set(defaults))

    assert not undocumented, f"{role.name}: in defaults/main.yml but not in argument_specs: {undocumented}"
    assert not missing, f"{role.name}: in argument_specs but not in defaults/main.yml: {missing}"
    assert not defaulted_secrets, (
        f"{role.name}: required (no default) in argument_specs but given a default in "
        f"defaults/main.yml: {defaulted_secrets}"
    )
    for name, opt in options.items():
        assert (opt or {}).get("description"), f"{role.name}: option {name} has no description"
        if name in defaults:
            assert "default" in (opt or {}), f"{role.name}: option {name} states no default in argument_specs"
            assert opt["default"] == defaults[name], f"{role.name}: {name}: argspec default differs from defaults"
        assert name.startswith(f"{role.name}_"), f"{role.name}: option {name} lacks the role prefix"
