"""`airflow dags test` of both DAGs in the Airflow venv, against a real MLflow server and the
real model server: the whole train -> gate -> promote -> notify -> rollback story."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.dags.conftest import AirflowHome

pytestmark = [pytest.mark.airflow, pytest.mark.mlflow]


def _dag_test(
    airflow: AirflowHome, dag_id: str, conf: dict[str, object], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return airflow.run("dags", "test", dag_id, "--conf", json.dumps(conf), extra_env=env, timeout=900)


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return (done.stdout + done.stderr)[-6000:]


def test_train_gate_promote_and_rollback(
    airflow_home: AirflowHome, mlflow_tracking_uri: str, unique_model_name: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from tests.support.serving_app import TOKEN, UvicornServer

    client = MlflowClient(mlflow_tracking_uri)
    model = unique_model_name
    env = {"MLFLOW_TRACKING_URI": mlflow_tracking_uri, "MLOPSLAB_MODEL_NAME": model}

    def champion() -> str:
        return str(client.get_model_version_by_alias(model, "champion").version)

    # Nothing to roll back yet: the run fails (without retrying) and says why.
    nothing = _dag_test(airflow_home, "rollback_champion", {}, env)
    assert nothing.returncode != 0, _tail(nothing)
    assert "has no champion" in nothing.stdout + nothing.stderr

    # 1. The first run creates version 1 and makes it champion (no serving configured: skipped).
    first = _dag_test(airflow_home, "train_and_promote", {"n_estimators": 20, "run_name": "first"}, env)
    assert first.returncode == 0, _tail(first)
    assert champion() == "1"
    v1 = client.get_model_version(model, "1")
    assert v1.tags["mlopslab.gate_decision"] == "promoted"
    assert v1.tags["mlopslab.previous_champion"] == ""
    assert v1.tags["mlopslab.promoted_via"].startswith("train_and_promote/")
    assert v1.tags["mlopslab.promotion_run_id"] == v1.run_id
    assert client.get_run(v1.run_id).info.run_name == "first"
    assert "not notifying serving" in first.stdout + first.stderr

    # From here on the real model server serves the champion and is told about promotions.
    serving = UvicornServer(
        {
            "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
            "SERVING_MODEL_NAME": model,
            "SERVING_RELOAD_TOKEN": TOKEN,
            "SERVING_POLL_INTERVAL_SECONDS": "3600",  # only POST /reload makes it look again
        },
        tmp_path / "serving.log",
    )
    try:
        serving.wait_ready()

        def served() -> str:
            return str(httpx.get(f"{serving.url}/model", timeout=10).json()["version"])

        assert served() == "1"
        env |= {
            "MLOPSLAB_SERVING_URL": serving.url,
            "MLOPSLAB_SERVING_RELOAD_TOKEN": TOKEN,
            "MLOPSLAB_SERVING_WAIT_SECONDS": "90",
        }

        # 2. A deliberately worse run is rejected: champion unchanged, challenger set, reason kept.
        worse_conf = {"n_estimators": 3, "max_depth": 1, "min_accuracy": 0.95, "run_name": "worse"}
        worse = _dag_test(airflow_home, "train_and_promote", worse_conf, env)
        assert worse.returncode == 0, _tail(worse)
        assert champion() == "1"
        challenger = client.get_model_version_by_alias(model, "challenger")
        assert challenger.version == "2"
        assert challenger.tags["mlopslab.gate_decision"] == "rejected"
        assert "below the minimum 0.9500" in challenger.tags["mlopslab.gate_reason"]
        assert served() == "1"

        # 3. A good run promotes, records the previous champion, and serving reports it when the
        #    run ends (the DAG waited for it).
        good = _dag_test(airflow_home, "train_and_promote", {"n_estimators": 40, "run_name": "good"}, env)
        assert good.returncode == 0, _tail(good)
        assert champion() == "3"
        v3 = client.get_model_version(model, "3")
        assert v3.tags["mlopslab.previous_champion"] == "1"
        assert v3.tags["mlopslab.promoted_by"]
        assert v3.tags["mlopslab.promoted_at"]
        assert served() == "3"

        # 4. Rollback restores the previous champion from the tags and waits for serving. This
        #    time MLflow and serving come from Airflow connections instead of variables.
        connections = {
            "MLOPSLAB_MODEL_NAME": model,
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http", "host": mlflow_tracking_uri}),
            "AIRFLOW_CONN_MLOPSLAB_SERVING": json.dumps({"conn_type": "http", "host": serving.url, "password": TOKEN}),
            "MLOPSLAB_SERVING_WAIT_SECONDS": "90",
        }
        rollback = _dag_test(airflow_home, "rollback_champion", {}, connections)
        assert rollback.returncode == 0, _tail(rollback)
        assert champion() == "1"
        assert client.get_model_version(model, "1").tags["mlopslab.rolled_back_from"] == "3"
        assert served() == "1"
    finally:
        serving.stop()
