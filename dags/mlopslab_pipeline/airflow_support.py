"""The few places the pipeline touches Airflow: settings from env or connections, and who ran it.

Airflow is imported inside the functions, so this module imports without Airflow installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlopslab_pipeline.config import ConfigError, ConnectionInfo, Settings, connection_url


def lookup_connection(conn_id: str) -> ConnectionInfo | None:
    """An Airflow connection (metadata DB, secrets backend or AIRFLOW_CONN_* env), or None."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return ConnectionInfo(
        url=connection_url(conn.conn_type, conn.host, conn.port, conn.schema),
        login=conn.login or None,
        password=conn.password or None,
    )


@contextmanager
def permanent_errors() -> Iterator[None]:
    """Fail the task without retries on errors a retry cannot fix (configuration, registry state)."""
    from airflow.sdk.exceptions import AirflowFailException

    from mlopslab_pipeline.registry import RollbackError
    from mlopslab_pipeline.serving_client import ServingRefused

    try:
        yield
    except (ConfigError, RollbackError, ServingRefused, ValueError) as error:
        raise AirflowFailException(f"{type(error).__name__}: {error}") from error


def settings() -> Settings:
    """The pipeline settings of this task process; exports MLflow's client variables."""
    with permanent_errors():
        resolved = Settings.from_env(os.environ, lookup_connection)
    os.environ.update(resolved.mlflow_env())
    return resolved


def who_and_via(context: Any) -> tuple[str, str]:
    """(the user who triggered the run, "<dag_id>/<run_id>") for registry tags."""
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None) or f"airflow ({dag_run.run_type})"
    return str(user), f"{dag_run.dag_id}/{dag_run.run_id}"
