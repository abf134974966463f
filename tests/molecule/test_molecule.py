"""Every Molecule scenario under molecule/, one pytest test each (marker ``molecule``).

Molecule prints no pytest summary, so this wrapper makes each ``molecule test -s NAME`` a test:
it runs from the repository root with the environment the scenarios need and, on failure,
shows the tail of Molecule's output (the whole log is kept under .artifacts/molecule/).

The session fixture runs scripts/build-base-image.sh, which builds (or imports from the cache
under ${MLOPSLAB_CACHE:-~/.cache/mlops-lab}) the systemd base image and the client image, and
writes the containers.conf that rootful podman needs here (runc, ulimits); it is exported as
CONTAINERS_CONF to Molecule and every podman call it makes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
LOG_DIR = REPO / ".artifacts" / "molecule"
# A cold scenario installs packages from the archive; a warm one takes one to three minutes.
SCENARIO_TIMEOUT = 1500
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="session")
def molecule_env() -> dict[str, str]:
    """Environment for `molecule test`: images present, CONTAINERS_CONF, the venv's tools on PATH."""
    if os.geteuid() != 0:
        pytest.skip("the Molecule scenarios need rootful podman (run as root)")
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run scripts/setup-host.sh (scripts/apt-packages.txt)")
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-base-image.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"scripts/build-base-image.sh failed:\n{build.stderr[-4000:]}")
    env = dict(os.environ)
    env.update(
        CONTAINERS_CONF=build.stdout.strip().splitlines()[-1],
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_FORCE_COLOR="0",
        PY_COLORS="0",
        NO_COLOR="1",
    )
    return env


@pytest.mark.molecule
@pytest.mark.timeout(SCENARIO_TIMEOUT)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(scenario: str, molecule_env: dict[str, str]) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{scenario}.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            ["molecule", "test", "-s", scenario],
            cwd=REPO,
            env=molecule_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=SCENARIO_TIMEOUT - 30,
            check=False,
        )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        tail = ANSI.sub("", log.read_text(errors="replace")).splitlines()[-120:]
        pytest.fail(
            f"molecule test -s {scenario} failed (rc={proc.returncode}, {elapsed:.0f} s); "
            f"full log: {log}\n" + "\n".join(tail),
            pytrace=False,
        )
    print(f"molecule test -s {scenario}: {elapsed:.0f} s")


def test_every_scenario_follows_the_naming_rule() -> None:
    """molecule/<role>_<scenario>: the role must exist in the collection or in roles/."""
    roles = {p.name for p in (REPO / "collections/ansible_collections/mlopslab/platform/roles").iterdir()}
    roles |= {p.name for p in (REPO / "roles").iterdir() if p.is_dir()}
    assert SCENARIOS, "no Molecule scenario found"
    for scenario in SCENARIOS:
        assert any(scenario.startswith(f"{role}_") for role in roles), scenario
