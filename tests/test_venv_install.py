"""mlopslab.platform.venv_install: pip only when the venv lacks something, drift still repaired.

Through real ansible runs of the module on localhost, on a real venv with real packages from the
package index: the first run installs; the second changes nothing and runs no pip; a dependency
removed by hand deep in the tree (idna, which only requests needs) is found by check mode and put
back by the next run; a requirement at another version is named with the version installed; an
option line in a requirements file is left to pip, which then changes nothing. uv (a project
dependency, so beside the interpreter) installs, pip where asked, and pip's index settings reach uv.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.collection import run_module

REQUESTS = "requests==2.32.3"


def module(tmp: Path, *flags: str, **args: Any) -> dict[str, Any]:
    return run_module("venv_install", {"python": sys.executable, **args}, tmp, *flags)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("venv-install") / "venv"


def test_installs_then_changes_nothing(venv: Path, tmp_path: Path) -> None:
    first = module(tmp_path, venv=str(venv), packages=[REQUESTS])
    assert first["changed"] is True
    assert first["installer"] == "uv", "uv is beside the project's interpreter (a project dependency)"
    assert any("not installed" in line for line in first["unsatisfied"]), first["unsatisfied"]
    subprocess.run([str(venv / "bin" / "python"), "-c", "import requests, idna"], check=True)

    again = module(tmp_path, venv=str(venv), packages=[REQUESTS])
    assert again["changed"] is False
    assert again["unsatisfied"] == []
    assert "stdout" not in again, "pip ran although everything was installed"


def test_a_dependency_removed_by_hand_is_found_and_put_back(venv: Path, tmp_path: Path) -> None:
    module(tmp_path, venv=str(venv), packages=[REQUESTS])
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "idna"], check=True)

    predicted = module(tmp_path, "--check", venv=str(venv), packages=[REQUESTS])
    assert predicted["changed"] is True
    assert any(line.startswith("idna") and "(requests)" in line for line in predicted["unsatisfied"]), predicted
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import idna"], check=False).returncode != 0

    repaired = module(tmp_path, venv=str(venv), packages=[REQUESTS])
    assert repaired["changed"] is True
    subprocess.run([str(venv / "bin" / "python"), "-c", "import idna"], check=True)


def test_another_version_is_named_with_the_installed_one(venv: Path, tmp_path: Path) -> None:
    module(tmp_path, venv=str(venv), packages=[REQUESTS])
    predicted = module(tmp_path, "--check", venv=str(venv), packages=["requests==2.32.2"])
    assert predicted["changed"] is True
    assert predicted["unsatisfied"] == ["requests==2.32.2 (requests==2.32.2): 2.32.3 is installed"]


def test_an_option_line_is_left_to_pip(venv: Path, tmp_path: Path) -> None:
    module(tmp_path, venv=str(venv), packages=[REQUESTS])
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(REQUESTS + "\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"-c {constraints}\nrequests  # the HTTP client\n")
    result = module(tmp_path, venv=str(venv), requirements_file=str(requirements))
    assert any("an option line" in line for line in result["unsatisfied"]), result
    assert result["changed"] is False, "pip found everything installed"


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_each_installer_installs_and_reports_the_change(installer: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    first = module(tmp_path, venv=str(venv), packages=["idna==3.10"], installer=installer)
    assert (first["changed"], first["installer"]) == (True, installer), first
    other = module(tmp_path, venv=str(venv), packages=["idna==3.9"], installer=installer)
    assert other["changed"] is True, other
    assert other["unsatisfied"] == ["idna==3.9 (idna==3.9): 3.10 is installed"]
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import idna; print(idna.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert version == "3.9"


def test_pips_index_settings_reach_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """uv does not read pip.conf: with no-index and find-links there, only the module passing them on
    lets uv find the wheel (and without find-links, no index at all would make it fail)."""
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)  # they would override the venv's pip.conf, for pip too
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), "idna==3.8"], check=True
    )
    venv = tmp_path / "venv"
    module(tmp_path, venv=str(venv), packages=["six"], installer="pip")
    (venv / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {wheels}\n")
    result = module(tmp_path, venv=str(venv), packages=["idna==3.8"])
    assert (result["changed"], result["installer"]) == (True, "uv"), result
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import idna; print(idna.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert installed == "3.8"
