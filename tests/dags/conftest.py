"""Fixtures of the DAG suites: the helper package on sys.path, the Airflow venv, an AIRFLOW_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.airflow_venv import ensure_airflow_venv

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = REPO_ROOT / "dags"
# The helper package imports as Airflow imports it: from the DAGs folder.
if str(DAGS_DIR) not in sys.path:
    sys.path.insert(0, str(DAGS_DIR))


@dataclass(frozen=True)
class AirflowHome:
    """An isolated Airflow (SQLite metadata, this checkout's dags folder) run from its own venv."""

    python: Path
    home: Path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPSLAB_", "MLFLOW_"))}
        env.pop("VIRTUAL_ENV", None)
        env.update(
            {
                "PATH": f"{self.python.parent}{os.pathsep}{env.get('PATH', '')}",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def run(
        self, *args: str, extra_env: Mapping[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python.parent / "airflow"), *args],
            env=self.env(extra_env),
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    """The Airflow venv's python (built from dags/requirements.txt when missing)."""
    return ensure_airflow_venv()


@pytest.fixture(scope="session")
def airflow_home(airflow_python: Path, tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    """An AIRFLOW_HOME with a migrated SQLite metadata database."""
    home = AirflowHome(airflow_python, tmp_path_factory.mktemp("airflow-home"))
    migrated = home.run("db", "migrate")
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return home
