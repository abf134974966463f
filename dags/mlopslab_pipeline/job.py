"""The pipeline in one process, without Airflow: train, gate, promote, notify serving.

Why it exists: a cluster without Airflow still needs its first champion and its parallel
experiments (the k3s lab trained with a Kubernetes Job running
``train.sh --n-estimators 200 --max-depth 20 --run-name exp-1``), and the test harness has no
upstream Airflow chart to install. This runs the very functions the ``train_and_promote`` DAG's
tasks run, in the same order, with the same params, validation and registry tags:
``train_and_register`` -> ``gate_and_apply`` -> ``reload_and_wait``. A version promoted here
differs from one promoted by the DAG only in ``mlopslab.promoted_via`` (``job/<run id>``).

    python -m mlopslab_pipeline train --n-estimators 200 --max-depth 20 --run-name exp-1
    python -m mlopslab_pipeline train --via airflow --if-no-champion     # a new cluster's first champion

``--via airflow`` runs the same params through the ``train_and_promote`` DAG instead, over
Airflow's REST API (MLOPSLAB_AIRFLOW_URL, MLOPSLAB_AIRFLOW_USERNAME/PASSWORD or
MLOPSLAB_AIRFLOW_TOKEN: the client ``python -m runner train`` uses), and reports its outcome the
same way. ``--if-no-champion`` does nothing when the model already has a champion (decision
``kept``, exit 0): a platform's later bootstraps do not retrain.

Configuration is the task pods' environment (``config.py``: MLOPSLAB_MODEL_NAME,
MLFLOW_TRACKING_URI, MLOPSLAB_SERVING_URL, MLOPSLAB_SERVING_RELOAD_TOKEN, ...; Airflow
connections are not consulted). The run id (what a retried Job uses to find the version it
already registered) is MLOPSLAB_RUN_ID, else the pod's name (HOSTNAME), else a fresh one.

Progress goes to stderr as log lines; the last line on stdout is ``MLOPSLAB_OUTCOME <json>``
(decision, version, accuracy, reason, previous champion), which ``python -m runner train``
reads from the pod's log. Exit codes: 0 promoted, 3 rejected by the gate, 1 failed,
2 bad params or configuration (a retry cannot help).

Several Jobs may run at once: ``gate_and_apply`` scores again when another run moved the
champion while this one was being scored (the DAG also serialises its gate task).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlopslab_pipeline.config import (
    CHAMPION_ALIAS,
    DATASETS,
    DEFAULT_DATASET,
    DEFAULT_MIN_ACCURACY,
    DEFAULT_N_ESTIMATORS,
    DEFAULT_TOLERANCE,
    ConfigError,
    Settings,
    TrainingParams,
)

log = logging.getLogger("mlopslab_pipeline.job")

OUTCOME_PREFIX = "MLOPSLAB_OUTCOME "
EXIT_PROMOTED, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


@dataclass(frozen=True)
class Outcome:
    """What one run ended with; serialised as the last stdout line."""

    decision: str  # promoted | rejected | failed | kept (a champion existed and --if-no-champion)
    reason: str
    run_id: str
    version: str | None = None
    accuracy: float | None = None
    previous_champion: str | None = None
    served_version: str | None = None

    @property
    def exit_code(self) -> int:
        return {"promoted": EXIT_PROMOTED, "kept": EXIT_PROMOTED, "rejected": EXIT_REJECTED}.get(
            self.decision, EXIT_FAILED
        )

    def line(self) -> str:
        return OUTCOME_PREFIX + json.dumps(self.__dict__, sort_keys=True)


def parse_outcome(text: str) -> dict[str, Any] | None:
    """The outcome of a run from its output (the last MLOPSLAB_OUTCOME line), or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(OUTCOME_PREFIX):
            try:
                value = json.loads(line[len(OUTCOME_PREFIX) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlopslab_pipeline",
        description="Run the train -> gate -> promote -> notify pipeline in this process (no Airflow).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a RandomForest, gate it and promote it")
    train.add_argument("--n-estimators", type=int, default=DEFAULT_N_ESTIMATORS, help="trees in the forest")
    train.add_argument("--max-depth", type=int, default=None, help="tree depth (unlimited if unset)")
    train.add_argument("--run-name", default=None, help="MLflow run name (default: the run id)")
    train.add_argument("--dataset", default=DEFAULT_DATASET, choices=DATASETS, help="bundled data set")
    train.add_argument("--min-accuracy", type=float, default=DEFAULT_MIN_ACCURACY, help="quality gate threshold")
    train.add_argument(
        "--via",
        choices=("direct", "airflow"),
        default="direct",
        help="direct: in this process; airflow: through the train_and_promote DAG (MLOPSLAB_AIRFLOW_URL)",
    )
    train.add_argument("--if-no-champion", action="store_true", help="do nothing when the model has a champion")
    train.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="allowed drop vs the champion")
    return parser


def training_params(args: argparse.Namespace) -> TrainingParams:
    """The params of ``train``'s parsed arguments (TrainingParams.cli_args is the other way)."""
    return TrainingParams(
        n_estimators=args.n_estimators,
        max_depth=args.max_depth,
        run_name=args.run_name,
        dataset=args.dataset,
        min_accuracy=args.min_accuracy,
        tolerance=args.tolerance,
    )


def run_id_from(env: Mapping[str, str]) -> str:
    """MLOPSLAB_RUN_ID, else the pod name (stable across a Job's container restarts), else fresh."""
    return env.get("MLOPSLAB_RUN_ID") or env.get("HOSTNAME") or f"job-{secrets.token_hex(4)}"


def run_training(params: TrainingParams, env: Mapping[str, str]) -> Outcome:
    """Train, gate and (when promoted) notify serving; never raises for a failed run."""
    from mlflow import MlflowClient

    from mlopslab_pipeline.registry import gate_and_apply
    from mlopslab_pipeline.serving_client import ServingError, reload_and_wait
    from mlopslab_pipeline.training import train_and_register

    run_id = run_id_from(env)
    settings = Settings.from_env(env)
    os.environ.update(settings.mlflow_env())
    trained = train_and_register(settings, params, run_id)
    log.info("registered %s v%s (held-out accuracy %.4f)", settings.model_name, trained.version, trained.accuracy)
    gated = gate_and_apply(
        MlflowClient(tracking_uri=settings.tracking_uri),
        settings.model_name,
        version=trained.version,
        run_id=trained.run_id,
        dataset=trained.dataset,
        min_accuracy=params.min_accuracy,
        tolerance=params.tolerance,
        who=env.get("MLOPSLAB_TRIGGERED_BY") or "kubernetes job",
        via=f"job/{run_id}",
    )
    common: dict[str, Any] = {
        "run_id": run_id,
        "version": gated.version,
        "accuracy": gated.accuracy,
        "previous_champion": gated.previous_champion,
        "reason": gated.reason,
    }
    if not gated.promoted:
        log.warning("v%s rejected: %s", gated.version, gated.reason)
        return Outcome(decision="rejected", **common)
    log.info("v%s is %s: %s", gated.version, CHAMPION_ALIAS, gated.reason)
    if not settings.serving_url:
        log.info("no serving URL configured (MLOPSLAB_SERVING_URL): not notifying serving")
        return Outcome(decision="promoted", **common)
    try:
        served = reload_and_wait(
            settings.serving_url,
            settings.serving_reload_token,
            gated.version,
            timeout=settings.serving_wait_seconds,
        )
    except ServingError as error:
        return Outcome(decision="failed", **{**common, "reason": f"promoted, but serving did not follow: {error}"})
    return Outcome(decision="promoted", served_version=served, **common)


def existing_champion(env: Mapping[str, str]) -> Outcome | None:
    """The outcome "kept" when the model already has a champion, else None."""
    from mlflow import MlflowClient

    from mlopslab_pipeline.registry import current_alias_version

    settings = Settings.from_env(env)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    champion = current_alias_version(client, settings.model_name, CHAMPION_ALIAS)
    if champion is None:
        return None
    return Outcome(
        decision="kept",
        reason=f"{settings.model_name} already has a {CHAMPION_ALIAS} (v{champion.version}): not training",
        run_id=run_id_from(env),
        version=str(champion.version),
    )


def run_through_airflow(params: TrainingParams, env: Mapping[str, str]) -> Outcome:
    """The same params through the train_and_promote DAG, followed to its end."""
    from mlopslab_pipeline.airflow_api import auth_from_env, trigger_training

    url = env.get("MLOPSLAB_AIRFLOW_URL", "").rstrip("/")
    if not url:
        raise ConfigError("--via airflow needs MLOPSLAB_AIRFLOW_URL (the Airflow API server's URL)")
    wait = float(env.get("MLOPSLAB_AIRFLOW_WAIT_SECONDS") or 3600)
    result = trigger_training(
        url, auth_from_env(url, env), params, True, log.info, timeout=wait, note="python -m mlopslab_pipeline"
    )
    decision = result.result if result.result in ("promoted", "rejected") else "failed"
    return Outcome(
        decision=decision,
        reason=result.reason or result.summary(),
        run_id=result.dag_run_id,
        version=result.version,
        accuracy=result.accuracy,
        previous_champion=result.previous_champion,
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    run_id = run_id_from(env)
    try:
        params = training_params(args)
        kept = existing_champion(env) if args.if_no_champion else None
        if kept is not None:
            outcome = kept
        elif args.via == "airflow":
            outcome = run_through_airflow(params, env)
        else:
            outcome = run_training(params, env)
    except (ConfigError, ValueError) as error:
        print(Outcome(decision="failed", reason=f"{type(error).__name__}: {error}", run_id=run_id).line(), flush=True)
        return EXIT_USAGE
    except Exception as error:  # a failed run is an outcome the caller reads, not a traceback only
        log.exception("the run failed")
        print(Outcome(decision="failed", reason=f"{type(error).__name__}: {error}", run_id=run_id).line(), flush=True)
        return EXIT_FAILED
    print(outcome.line(), flush=True)
    return outcome.exit_code
