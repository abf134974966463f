"""`python -m runner train`: trigger `train_and_promote` on the inventory's Airflow and follow it.

The client itself is the pipeline's (``mlopslab_pipeline.airflow_api``: the in-cluster first
champion uses it too); this module adds what the control node needs around it: the params as
the CLI takes them, and progress printed with Rich. The pipeline package is importable here
because ``pyproject.toml`` installs ``dags/mlopslab_pipeline`` beside ``runner``.

    outcome = trigger_training(api_url, auth, TrainParams(...), wait=True, console=Console())
    raise typer.Exit(outcome.exit_code)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from mlopslab_pipeline import airflow_api
from mlopslab_pipeline.airflow_api import (
    DAG_ID,
    AirflowApiError,
    BearerTokenAuth,
    PasswordTokenAuth,
    TrainOutcome,
    auth_from_env,
    new_dag_run_id,
)
from mlopslab_pipeline.config import DEFAULT_MIN_ACCURACY, DEFAULT_TOLERANCE, TrainingParams
from rich.console import Console
from rich.markup import escape

TrainError = AirflowApiError


class TrainParams(TrainingParams):
    """The CLI's params: the pipeline's, with a run name required (it names the dag run)."""

    def __init__(
        self,
        n_estimators: int,
        max_depth: int | None,
        run_name: str,
        dataset: str = "iris",
        min_accuracy: float | None = None,
        tolerance: float | None = None,
    ) -> None:
        if not run_name.strip():
            raise ValueError("run_name must not be empty")
        super().__init__(
            n_estimators=n_estimators,
            max_depth=max_depth,
            run_name=run_name,
            dataset=dataset,
            min_accuracy=DEFAULT_MIN_ACCURACY if min_accuracy is None else min_accuracy,
            tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
        )


_STYLES = {"promoted:": "green", "rejected:": "yellow", "failed:": "red", "timeout:": "red"}


def _printer(console: Console, run_name: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        text = line.removeprefix(run_name).lstrip()
        style = next((s for word, s in _STYLES.items() if text.startswith(word)), "")
        if "cannot poll the run" in text:
            style = "yellow"
        body = f"[{style}]{escape(text)}[/{style}]" if style else escape(text)
        console.print(f"[bold]{escape(run_name)}[/bold] {body}")

    return say


def trigger_training(
    api_url: str,
    auth: httpx.Auth,
    params: TrainParams,
    wait: bool,
    console: Console,
    *,
    poll_interval: float = 3.0,
    timeout: float = 3600.0,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainOutcome:
    """``mlopslab_pipeline.airflow_api.trigger_training`` with its progress on ``console``."""
    return airflow_api.trigger_training(
        api_url,
        auth,
        params,
        wait,
        _printer(console, params.run_name or "run"),
        poll_interval=poll_interval,
        timeout=timeout,
        client=client,
        sleep=sleep,
    )


__all__ = [
    "DAG_ID",
    "BearerTokenAuth",
    "PasswordTokenAuth",
    "TrainError",
    "TrainOutcome",
    "TrainParams",
    "auth_from_env",
    "new_dag_run_id",
    "trigger_training",
]
