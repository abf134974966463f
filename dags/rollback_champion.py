"""Move the ``champion`` alias back to the champion it replaced, and wait for serving.

The previous champion is read from the current champion's ``mlopslab.previous_champion`` tag
(written at promotion), or given as the ``to_version`` param. The restored version keeps its
own history, so running this again walks further back. Serving is notified as in
``train_and_promote`` (skipped with a log line when no serving URL is configured).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="rollback_champion",
    description="Restore the previous champion model version and wait until serving reports it",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["mlops-lab", "registry", "mlflow"],
    default_args={"owner": "mlops-lab", "retries": 2, "retry_delay": timedelta(seconds=20)},
    doc_md=__doc__,
    params={
        "to_version": Param(
            None,
            type=["null", "integer", "string"],
            description="version to restore (default: the current champion's previous champion)",
        ),
    },
)
def rollback_champion() -> None:
    @task
    def plan() -> dict[str, str]:
        from mlflow import MlflowClient
        from mlopslab_pipeline.airflow_support import permanent_errors, settings
        from mlopslab_pipeline.registry import plan_rollback

        resolved = settings()
        to_version = get_current_context()["params"].get("to_version")
        with permanent_errors():
            return plan_rollback(
                MlflowClient(tracking_uri=resolved.tracking_uri),
                resolved.model_name,
                str(to_version) if to_version not in (None, "") else None,
            ).to_xcom()

    @task
    def move_champion(planned: dict[str, str]) -> str:
        from mlflow import MlflowClient
        from mlopslab_pipeline.airflow_support import permanent_errors, settings, who_and_via
        from mlopslab_pipeline.registry import RollbackPlan, apply_rollback

        resolved = settings()
        who, via = who_and_via(get_current_context())
        with permanent_errors():
            return apply_rollback(
                MlflowClient(tracking_uri=resolved.tracking_uri),
                resolved.model_name,
                RollbackPlan(**planned),
                who=who,
                via=via,
            )

    @task
    def notify_serving(version: str) -> str | None:
        import logging

        from mlopslab_pipeline.airflow_support import permanent_errors, settings
        from mlopslab_pipeline.serving_client import reload_and_wait

        resolved = settings()
        if not resolved.serving_url:
            logging.getLogger(__name__).info("no serving URL configured: not notifying serving")
            return None
        with permanent_errors():
            return reload_and_wait(
                resolved.serving_url,
                resolved.serving_reload_token,
                version,
                timeout=resolved.serving_wait_seconds,
            )

    notify_serving(move_champion(plan()))


rollback_champion()
