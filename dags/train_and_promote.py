"""Train a RandomForest, register it in MLflow, gate it against the champion, promote it.

1. ``train``: fits on a bundled scikit-learn data set, logs params, metrics and the model (with
   signature and input example) to MLflow and registers a new version of the model named by
   MLOPSLAB_MODEL_NAME. A retried task reuses the version its run already registered.
2. ``gate``: scores the new version and the current ``champion`` on the same held-out rows.
   It promotes when the candidate reaches ``min_accuracy`` and is not worse than the champion
   by more than ``tolerance``: the ``champion`` alias moves and the version is tagged with who,
   when, which run and the previous champion. Otherwise the version becomes ``challenger`` and
   its tags (and this task's return value) say why. One gate runs at a time across runs.
3. ``notify_serving``: ``POST /reload`` with the bearer token, then waits (bounded) until
   serving's ``GET /model`` reports the new version. Skipped when the candidate was rejected;
   a no-op with a log line when no serving URL is configured.

Configuration comes from the worker environment or Airflow connections (see
``mlopslab_pipeline/config.py``), never from this file.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from mlopslab_pipeline.config import (
    DATASETS,
    DEFAULT_DATASET,
    DEFAULT_MIN_ACCURACY,
    DEFAULT_N_ESTIMATORS,
    DEFAULT_TOLERANCE,
    GATE_TASK_ID,
    TRAIN_DAG_ID,
)


@dag(
    dag_id=TRAIN_DAG_ID,
    description="Train, register, gate and promote a RandomForest; notify serving",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    tags=["mlops-lab", "training", "mlflow"],
    default_args={"owner": "mlops-lab", "retries": 2, "retry_delay": timedelta(seconds=20)},
    doc_md=__doc__,
    params={
        "n_estimators": Param(DEFAULT_N_ESTIMATORS, type="integer", minimum=1, description="trees in the forest"),
        "max_depth": Param(None, type=["null", "integer"], minimum=1, description="tree depth (null: unlimited)"),
        "run_name": Param(None, type=["null", "string"], description="MLflow run name (default: the Airflow run id)"),
        "dataset": Param(DEFAULT_DATASET, type="string", enum=list(DATASETS), description="bundled data set"),
        "min_accuracy": Param(
            DEFAULT_MIN_ACCURACY,
            type="number",
            minimum=0,
            maximum=1,
            description="held-out accuracy to promote",
        ),
        "tolerance": Param(
            DEFAULT_TOLERANCE,
            type="number",
            minimum=0,
            maximum=1,
            description="how much worse than the champion a candidate may be and still be promoted",
        ),
    },
)
def train_and_promote() -> None:
    @task
    def train() -> dict[str, Any]:
        from mlopslab_pipeline.airflow_support import permanent_errors, settings
        from mlopslab_pipeline.config import TrainingParams
        from mlopslab_pipeline.training import train_and_register

        context = get_current_context()
        with permanent_errors():
            params = TrainingParams.from_params(context["params"])
        return train_and_register(settings(), params, context["dag_run"].run_id).to_xcom()

    # Serialised across runs: two gates reading the same champion would race to move it.
    @task(task_id=GATE_TASK_ID, max_active_tis_per_dag=1)
    def gate(trained: dict[str, Any]) -> dict[str, Any]:
        from mlflow import MlflowClient
        from mlopslab_pipeline.airflow_support import settings, who_and_via
        from mlopslab_pipeline.config import TrainingParams
        from mlopslab_pipeline.registry import gate_and_apply

        context = get_current_context()
        params = TrainingParams.from_params(context["params"])
        resolved = settings()
        who, via = who_and_via(context)
        result = gate_and_apply(
            MlflowClient(tracking_uri=resolved.tracking_uri),
            resolved.model_name,
            version=trained["version"],
            run_id=trained["run_id"],
            dataset=trained["dataset"],
            min_accuracy=params.min_accuracy,
            tolerance=params.tolerance,
            who=who,
            via=via,
        )
        return result.to_xcom()

    @task
    def notify_serving(gated: dict[str, Any]) -> str | None:
        import logging

        from airflow.sdk.exceptions import AirflowSkipException
        from mlopslab_pipeline.airflow_support import permanent_errors, settings
        from mlopslab_pipeline.serving_client import reload_and_wait

        if gated["decision"] != "promoted":
            raise AirflowSkipException(f"v{gated['version']} was rejected: {gated['reason']}")
        resolved = settings()
        if not resolved.serving_url:
            logging.getLogger(__name__).info(
                "no serving URL configured (MLOPSLAB_SERVING_URL or the mlopslab_serving connection): "
                "not notifying serving"
            )
            return None
        with permanent_errors():
            return reload_and_wait(
                resolved.serving_url,
                resolved.serving_reload_token,
                gated["version"],
                timeout=resolved.serving_wait_seconds,
            )

    notify_serving(gate(train()))


train_and_promote()
