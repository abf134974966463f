"""The DAGs folder as Airflow's DAG processor sees it, in the Airflow venv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.dags.conftest import DAGS_DIR, AirflowHome

pytestmark = pytest.mark.airflow

# Runs inside the Airflow venv; writes what the test asserts on as JSON.
DAGBAG_SCRIPT = r"""
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "sklearn", "pandas", "skops"})
out.write_text(json.dumps({
    "errors": {path: str(error) for path, error in bag.import_errors.items()},
    "heavy_modules": heavy,
    "dags": {
        dag_id: {
            "file": Path(dag.fileloc).name,
            "tags": sorted(dag.tags),
            "catchup": dag.catchup,
            "schedule": repr(dag.schedule),
            "start_date_tz": str(dag.start_date.tzinfo) if dag.start_date and dag.start_date.tzinfo else None,
            "doc": bool(dag.doc_md),
            "params": sorted(dag.params.keys()),
            "retries": {task.task_id: task.retries for task in dag.tasks},
        }
        for dag_id, dag in bag.dags.items()
    },
}))
"""


@pytest.fixture(scope="module")
def dagbag(airflow_home: AirflowHome, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dagbag") / "dagbag.json"
    script = out.with_suffix(".py")
    script.write_text(DAGBAG_SCRIPT)
    done = subprocess.run(
        [str(airflow_home.python), str(script), str(DAGS_DIR), str(out)],
        env=airflow_home.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_no_import_errors(dagbag: dict) -> None:
    assert dagbag["errors"] == {}
    assert set(dagbag["dags"]) == {"train_and_promote", "rollback_champion"}


def test_parsing_imports_nothing_heavy(dagbag: dict) -> None:
    # MLflow, scikit-learn and pandas load inside tasks, never when the DAG processor parses.
    assert dagbag["heavy_modules"] == []


@pytest.mark.parametrize("dag_id", ["train_and_promote", "rollback_champion"])
def test_dag_conventions(dagbag: dict, dag_id: str) -> None:
    dag = dagbag["dags"][dag_id]
    assert dag["file"] == f"{dag_id}.py"
    assert dag["tags"], "every DAG has tags"
    assert dag["retries"], "the DAG has tasks"
    assert all(retries >= 1 for retries in dag["retries"].values()), dag["retries"]
    assert dag["catchup"] is False
    assert dag["start_date_tz"] is not None, "start_date must be timezone-aware"
    assert dag["doc"]


def test_training_params(dagbag: dict) -> None:
    params = dagbag["dags"]["train_and_promote"]["params"]
    assert params == sorted(["n_estimators", "max_depth", "run_name", "dataset", "min_accuracy", "tolerance"])


def test_helper_package_is_ignored_by_the_dag_processor() -> None:
    assert "mlopslab_pipeline/" in (Path(DAGS_DIR) / ".airflowignore").read_text().splitlines()
