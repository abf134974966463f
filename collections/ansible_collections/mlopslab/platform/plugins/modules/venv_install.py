#!/usr/bin/python
# Copyright: mlops-lab maintainers
# Apache-2.0
"""Install requirements into a venv, and tell in a fraction of a second when they already are.

ansible.builtin.pip runs pip on every play: with a requirements file that is a full resolve
(26 s for Airflow's venv on a warm re-run of the local platform), with package names a
``pip freeze`` or two (3-12 s per venv); six venvs made a minute of a re-run that changes nothing.
This module reads the venv's installed distributions (their metadata files, no pip, no import of
what they contain) and checks every requirement and, recursively, every dependency each installed
distribution declares (extras and environment markers included, for the venv's Python version).
Only when something is missing or at a version outside its specifier does it run pip, with the
same requirements, so drift is still repaired: a package removed or replaced by hand, even deep
in the dependency tree, makes the next run install again. What it cannot judge (a direct URL, an
option line in a requirements file, no ``packaging`` library) is handed to pip.

The install itself runs uv when it is at hand (beside the interpreter running this module, as in
the project's .venv, or on the PATH): Airflow's venv took 103 s with pip and 9 s with uv from
empty caches on 2 cores; pip is the fallback. uv does not read pip's configuration, so the index
settings pip would use (index-url, extra-index-url, find-links, no-index and cert, from pip.conf
files and PIP_* variables, in pip's order) are handed to uv as its own options. uv is told to
compile the bytecode, as pip does by default: without it every process the venv runs compiles
what it imports from source each time it starts (and never keeps it where PYTHONDONTWRITEBYTECODE
is set), which made each module run and each service start slower.
"""

from __future__ import annotations

import configparser
import glob
import importlib.metadata
import os
import re
import shutil
import sys
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: venv_install
short_description: Install requirements into a venv; quick and unchanged when they are already installed
description:
  - Creates the venv with O(python) when it has no interpreter.
  - Checks O(packages) and the lines of O(requirements_file) against the venv's installed distributions,
    with every dependency they declare, recursively; runs pip only when one is missing or outside its specifier.
  - Check mode reports what would be installed without installing.
options:
  venv:
    description: Path of the venv.
    type: path
    required: true
  python:
    description: Interpreter that creates the venv when it does not exist.
    type: str
    default: python3
  packages:
    description: Requirement strings (PEP 508), e.g. C(mlflow==3.15.1).
    type: list
    elements: str
    default: []
  requirements_file:
    description: A requirements file (pip's format) installed as well.
    type: path
  installer:
    description:
      - What installs when something is missing. C(auto) is uv when it is beside the module's interpreter
        or on the PATH (with pip's index settings passed on), pip otherwise.
    type: str
    choices: [auto, uv, pip]
    default: auto
"""

RETURN = r"""
unsatisfied:
  description: Why pip ran (or would run), one line per requirement; empty when everything was installed.
  type: list
  elements: str
  returned: always
installer:
  description: The installer that ran (C(uv) or C(pip)); absent when nothing needed installing.
  type: str
  returned: when something was installed
"""

_OPTION_LINE = re.compile(r"^\s*-")


def _site_packages(venv: str) -> str | None:
    found = sorted(glob.glob(os.path.join(venv, "lib", "python*", "site-packages")))
    return found[-1] if found else None


def _venv_python_version(venv: str) -> str | None:
    """``3.11.2`` from pyvenv.cfg (the venv's interpreter, which may differ from this one)."""
    try:
        with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8") as cfg:
            for line in cfg:
                key, _, value = line.partition("=")
                if key.strip() in ("version", "version_info"):
                    return ".".join(value.strip().split(".")[:3])
    except OSError:
        return None
    return None


def _requirement_lines(packages: list[str], requirements_file: str | None) -> tuple[list[str], list[str]]:
    lines = [p.strip() for p in packages if p.strip()]
    unjudged: list[str] = []
    if requirements_file:
        with open(requirements_file, encoding="utf-8") as handle:
            for raw in handle:
                line = raw.split(" #", 1)[0].strip()
                if not line or line.startswith("#"):
                    continue
                if _OPTION_LINE.match(line):
                    unjudged.append(f"{line}: an option line, left to pip")
                    continue
                lines.append(line)
    return lines, unjudged


def unsatisfied(venv: str, packages: list[str], requirements_file: str | None) -> list[str]:
    """What is missing or at a wrong version in the venv (empty: nothing to install)."""
    try:
        from packaging.markers import default_environment
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name
    except ImportError:
        return ["the packaging library is not importable here: left to pip"]
    site = _site_packages(venv)
    version = _venv_python_version(venv)
    if site is None or version is None:
        return [f"{venv} is not a venv yet"]
    lines, problems = _requirement_lines(packages, requirements_file)
    environment: dict[str, str] = dict(default_environment())
    environment.update(
        python_version=".".join(version.split(".")[:2]), python_full_version=version, implementation_version=version
    )
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist
        for dist in importlib.metadata.distributions(path=[site])
        if dist.metadata["Name"]
    }

    def applies(requirement: Any, extras: set[str]) -> bool:
        if requirement.marker is None:
            return True
        return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras | {""})

    queue: list[tuple[Any, str]] = []
    for line in lines:
        try:
            queue.append((Requirement(line), line))
        except InvalidRequirement as error:
            problems.append(f"{line}: {error}")
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        requirement, wanted_by = queue.pop()
        name = canonicalize_name(requirement.name)
        if requirement.url:
            problems.append(f"{requirement} ({wanted_by}): a direct URL, left to pip")
            continue
        dist = installed.get(name)
        if dist is None:
            problems.append(f"{requirement} ({wanted_by}): not installed")
            continue
        if not requirement.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{requirement} ({wanted_by}): {dist.version} is installed")
            continue
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for declared in dist.requires or []:
            try:
                dependency = Requirement(declared)
            except InvalidRequirement:
                continue
            if applies(dependency, set(requirement.extras)):
                queue.append((dependency, str(dist.metadata["Name"])))
    return problems


_PIP_LIST_KEYS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links"}
_PIP_KEYS = ("index-url", "no-index", "cert", *_PIP_LIST_KEYS)


def pip_index_settings(venv: str) -> dict[str, list[str]]:
    """pip's index settings, read as pip does: config files in its order, PIP_* variables last."""
    home = os.path.expanduser("~")
    files = [
        "/etc/xdg/pip/pip.conf",
        "/etc/pip.conf",
        os.path.join(home, ".pip", "pip.conf"),
        os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "pip", "pip.conf"),
        os.environ.get("PIP_CONFIG_FILE", ""),
        os.path.join(venv, "pip.conf"),
    ]
    settings: dict[str, list[str]] = {}
    for path in filter(os.path.isfile, files):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error:
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for key in _PIP_KEYS:
                    if parser.has_option(section, key):
                        settings[key] = parser.get(section, key).split()
    for key in _PIP_KEYS:
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            settings[key] = value.split()
    return settings


def uv_options(settings: dict[str, list[str]]) -> tuple[list[str], dict[str, str]]:
    """The same index settings as uv's command-line options and environment."""
    options: list[str] = []
    if settings.get("index-url"):
        options += ["--index-url", settings["index-url"][0]]
    for key, flag in _PIP_LIST_KEYS.items():
        for value in settings.get(key, []):
            options += [flag, value]
    if (settings.get("no-index") or ["no"])[0].lower() in ("1", "yes", "true", "on"):
        options.append("--no-index")
    env = {"SSL_CERT_FILE": settings["cert"][0]} if settings.get("cert") else {}
    return options, env


def find_uv() -> str | None:
    """uv beside the interpreter running this module (the project's .venv), else on the PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    return beside if os.access(beside, os.X_OK) else shutil.which("uv")


def install_argv(
    installer: str, venv: str, packages: list[str], requirements_file: str | None
) -> tuple[str, list[str], dict[str, str]]:
    """Which installer runs, its argv and the environment it needs beyond the task's."""
    python = os.path.join(venv, "bin", "python")
    uv = find_uv() if installer in ("auto", "uv") else None
    requirements = ["-r", requirements_file] if requirements_file else []
    if uv:
        options, env = uv_options(pip_index_settings(venv))
        argv = [uv, "pip", "install", "--compile-bytecode", "--python", python, *options, *packages, *requirements]
        return "uv", argv, env
    return "pip", [python, "-m", "pip", "install", "--disable-pip-version-check", *packages, *requirements], {}


# What each installer prints when it changed the venv (pip's words are what ansible.builtin.pip reads).
_CHANGE = {
    "pip": re.compile(r"^Successfully (un)?installed ", re.MULTILINE),
    "uv": re.compile(r"^(Installed|Uninstalled) \d+ package", re.MULTILINE),
}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "venv": {"type": "path", "required": True},
            "python": {"type": "str", "default": "python3"},
            "packages": {"type": "list", "elements": "str", "default": []},
            "requirements_file": {"type": "path"},
            "installer": {"type": "str", "choices": ["auto", "uv", "pip"], "default": "auto"},
        },
        supports_check_mode=True,
    )
    venv = module.params["venv"]
    packages = module.params["packages"]
    requirements_file = module.params["requirements_file"]
    if not packages and not requirements_file:
        module.fail_json(msg="venv_install needs packages or requirements_file")
    if requirements_file and not os.path.isfile(requirements_file):
        module.fail_json(msg=f"requirements_file {requirements_file} does not exist")
    created = False
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        if module.check_mode:
            module.exit_json(changed=True, unsatisfied=[f"{venv} would be created"])
        rc, out, err = module.run_command([module.params["python"], "-m", "venv", venv])
        if rc != 0:
            module.fail_json(msg=f"could not create the venv {venv}: {err or out}")
        created = True
    problems = unsatisfied(venv, packages, requirements_file)
    if not problems:
        module.exit_json(changed=created, unsatisfied=[])
    if module.check_mode:
        module.exit_json(changed=True, unsatisfied=problems)
    installer, argv, env = install_argv(module.params["installer"], venv, packages, requirements_file)
    if installer == "pip" and module.params["installer"] == "uv":
        module.fail_json(msg="installer=uv: no uv beside the module's interpreter or on the PATH")
    # The task's environment (proxies, PIP_COMPILE) applies, and what uv needs of pip's settings.
    rc, out, err = module.run_command(argv, environ_update=env)
    if rc != 0:
        module.fail_json(msg=f"{installer} install failed ({rc}): {err[-4000:] or out[-4000:]}", unsatisfied=problems)
    # A requirement this module could not judge, found installed by the installer, is no change.
    changed = created or bool(_CHANGE[installer].search(out + "\n" + err))
    module.exit_json(changed=changed, unsatisfied=problems, installer=installer, stdout=(out + err)[-4000:])


if __name__ == "__main__":
    main()
