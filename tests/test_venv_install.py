"""mlopslab.platform.venv_install: pip only when the venv lacks something, drift still repaired.

Through real ansible runs of the module on localhost, on a real venv with real packages from the
package index: the first run installs; the second changes nothing and runs no pip; a dependency
removed by hand deep in the tree (idna, which only requests needs) is found by check mode and put
back by the next run; a requirement at another version is named with the version installed; an
option line in a requirements file is left to pip, which then changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.k8s_layer import REPO_ROOT, ansible_env

REQUESTS = "requests==2.32.3"


def module(tmp: Path, *flags: str, **args: Any) -> dict[str, Any]:
    """One run of the module; its result as JSON (the tree callback writes one file per host)."""
    tree = tmp / "tree"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "localhost", "-c", "local", "-m",
         "mlopslab.platform.venv_install", "-a", json.dumps({"python": sys.executable, **args}),
         "-e", f"ansible_python_interpreter={sys.executable}", "--tree", str(tree), *flags],
        cwd=REPO_ROOT, env=ansible_env({}), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads((tree / "localhost").read_text())
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("venv-install") / "venv"


def test_installs_then_changes_nothing(venv: Path, tmp_path: Path) -> None:
    first = module(tmp_path, venv=str(venv), packages=[REQUESTS])
    assert first["changed"] is True
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
