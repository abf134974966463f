"""The gate, promotion and rollback: aliases and tags on the MLflow model registry.

Every promotion tags the promoted version with who, when, which runs, and the champion it
replaced (``mlopslab.previous_champion``), so the registry alone tells the history and a
rollback needs nothing else. Tags written here:

    mlopslab.gate_decision         promoted | rejected
    mlopslab.gate_reason           one sentence
    mlopslab.gate_accuracy         the candidate's held-out accuracy as the gate measured it
    mlopslab.promoted_by / _at     who (Airflow's triggering user) and when (UTC, ISO 8601)
    mlopslab.promoted_via          "<dag_id>/<dag_run_id>"
    mlopslab.promotion_run_id      the MLflow run that produced the version
    mlopslab.previous_champion     the version that was champion before ("" when none)
    mlopslab.rolled_back_by / _at / _from   on the version a rollback restored
    mlopslab.demoted_by / _at / _reason     on the version a rollback removed
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from mlopslab_pipeline.config import CHALLENGER_ALIAS, CHAMPION_ALIAS

log = logging.getLogger(__name__)

TAG_PREVIOUS_CHAMPION = "mlopslab.previous_champion"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    candidate_accuracy: float,
    champion_accuracy: float | None,
    min_accuracy: float,
    tolerance: float,
    champion_version: str | None = None,
) -> Decision:
    """Promote when the candidate reaches min_accuracy and is not worse than the champion by
    more than tolerance (both scored on the same held-out rows)."""
    if candidate_accuracy < min_accuracy:
        return Decision(False, f"accuracy {candidate_accuracy:.4f} is below the minimum {min_accuracy:.4f}")
    if champion_accuracy is None:
        return Decision(True, f"accuracy {candidate_accuracy:.4f} >= {min_accuracy:.4f} and there is no champion yet")
    label = f"champion v{champion_version}" if champion_version else "the champion"
    if candidate_accuracy < champion_accuracy - tolerance:
        return Decision(
            False,
            f"accuracy {candidate_accuracy:.4f} is worse than {label} ({champion_accuracy:.4f}) "
            f"by more than the tolerance {tolerance:.4f}",
        )
    return Decision(
        True,
        f"accuracy {candidate_accuracy:.4f} >= {min_accuracy:.4f} and within {tolerance:.4f} of "
        f"{label} ({champion_accuracy:.4f})",
    )


@dataclass(frozen=True)
class GateResult:
    decision: str  # "promoted" | "rejected"
    reason: str
    version: str
    accuracy: float
    champion_version: str | None  # the champion after the gate
    previous_champion: str | None  # the champion before the gate
    champion_accuracy: float | None

    @property
    def promoted(self) -> bool:
        return self.decision == "promoted"

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def current_alias_version(client: Any, model_name: str, alias: str) -> Any | None:
    """The ModelVersion an alias points at, or None when the alias (or the model) is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def heldout_accuracy(model_uri: str, dataset: str) -> float:
    """Accuracy of a registered model on the data set's held-out rows."""
    import mlflow
    from sklearn.metrics import accuracy_score

    from mlopslab_pipeline.training import load_split

    split = load_split(dataset)
    model = mlflow.pyfunc.load_model(model_uri)
    return float(accuracy_score(split.y_test, model.predict(split.x_test)))


def gate_and_apply(
    client: Any,
    model_name: str,
    *,
    version: str,
    run_id: str,
    dataset: str,
    min_accuracy: float,
    tolerance: float,
    who: str,
    via: str,
) -> GateResult:
    """Score the candidate and the champion on the same held-out rows, then either move
    `champion` to the candidate (with the promotion tags) or point `challenger` at it.

    Callers must not run two gates of one model at once (the DAG serialises this task), or
    both could compare against the same champion and the later one would win regardless.
    """
    from mlopslab_pipeline.training import TAG_DATASET

    champion = current_alias_version(client, model_name, CHAMPION_ALIAS)
    if champion is not None and str(champion.version) == version:
        # A retry after the alias moved: the promotion already happened.
        return GateResult(
            "promoted",
            champion.tags.get("mlopslab.gate_reason", "already champion"),
            version,
            heldout_accuracy(f"models:/{model_name}/{version}", dataset),
            version,
            champion.tags.get(TAG_PREVIOUS_CHAMPION) or None,
            None,
        )
    accuracy = heldout_accuracy(f"models:/{model_name}/{version}", dataset)
    champion_accuracy: float | None = None
    champion_version = str(champion.version) if champion is not None else None
    decision: Decision | None = None
    if champion is not None:
        champion_dataset = champion.tags.get(TAG_DATASET)
        if champion_dataset and champion_dataset != dataset:
            decision = Decision(
                False,
                f"champion v{champion_version} serves the {champion_dataset} data set and this "
                f"candidate was trained on {dataset}; promote across data sets by hand",
            )
        else:
            champion_accuracy = heldout_accuracy(f"models:/{model_name}/{champion_version}", dataset)
    if decision is None:
        decision = decide(accuracy, champion_accuracy, min_accuracy, tolerance, champion_version)

    tags = {
        "mlopslab.gate_decision": "promoted" if decision.promote else "rejected",
        "mlopslab.gate_reason": decision.reason,
        "mlopslab.gate_accuracy": f"{accuracy:.6f}",
        "mlopslab.gate_at": _now(),
        "mlopslab.gate_via": via,
    }
    if decision.promote:
        tags.update(
            {
                "mlopslab.promoted_by": who,
                "mlopslab.promoted_at": tags["mlopslab.gate_at"],
                "mlopslab.promoted_via": via,
                "mlopslab.promotion_run_id": run_id,
                TAG_PREVIOUS_CHAMPION: champion_version or "",
            }
        )
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_tag(run_id, "mlopslab.gate_decision", tags["mlopslab.gate_decision"])
    client.set_tag(run_id, "mlopslab.gate_reason", decision.reason)
    # The alias moves last: tags first, so whoever sees the new champion also sees its history.
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
        log.info(
            "promoted %s v%s to %s (was %s): %s",
            model_name,
            version,
            CHAMPION_ALIAS,
            champion_version,
            decision.reason,
        )
    else:
        client.set_registered_model_alias(model_name, CHALLENGER_ALIAS, version)
        log.warning("rejected %s v%s (now %s): %s", model_name, version, CHALLENGER_ALIAS, decision.reason)
    return GateResult(
        decision="promoted" if decision.promote else "rejected",
        reason=decision.reason,
        version=version,
        accuracy=accuracy,
        champion_version=version if decision.promote else champion_version,
        previous_champion=champion_version,
        champion_accuracy=champion_accuracy,
    )


@dataclass(frozen=True)
class RollbackPlan:
    from_version: str
    to_version: str

    def to_xcom(self) -> dict[str, str]:
        return asdict(self)


class RollbackError(RuntimeError):
    pass


def plan_rollback(client: Any, model_name: str, to_version: str | None = None) -> RollbackPlan:
    """From the current champion to the champion it replaced (or to an explicit version)."""
    champion = current_alias_version(client, model_name, CHAMPION_ALIAS)
    if champion is None:
        raise RollbackError(f"{model_name} has no {CHAMPION_ALIAS}: nothing to roll back")
    current = str(champion.version)
    target = to_version or champion.tags.get(TAG_PREVIOUS_CHAMPION) or ""
    if not target:
        raise RollbackError(
            f"{model_name} v{current} records no previous champion ({TAG_PREVIOUS_CHAMPION}): nothing to roll back to"
        )
    if target == current:
        raise RollbackError(f"{model_name} v{current} is already {CHAMPION_ALIAS}")
    client.get_model_version(model_name, target)  # raises when the version does not exist
    return RollbackPlan(from_version=current, to_version=target)


def apply_rollback(client: Any, model_name: str, plan: RollbackPlan, *, who: str, via: str) -> str:
    """Move `champion` per the plan; idempotent, and refuses if the champion moved meanwhile.

    The restored version keeps its own previous-champion tag, so a second rollback walks
    further back in history instead of toggling between two versions.
    """
    champion = current_alias_version(client, model_name, CHAMPION_ALIAS)
    current = str(champion.version) if champion is not None else None
    if current == plan.to_version:
        log.info("%s v%s is already %s", model_name, plan.to_version, CHAMPION_ALIAS)
        return plan.to_version
    if current != plan.from_version:
        raise RollbackError(
            f"{CHAMPION_ALIAS} moved to v{current} since the rollback was planned "
            f"(from v{plan.from_version}); re-run the rollback"
        )
    now = _now()
    for key, value in {
        "mlopslab.rolled_back_by": who,
        "mlopslab.rolled_back_at": now,
        "mlopslab.rolled_back_via": via,
        "mlopslab.rolled_back_from": plan.from_version,
    }.items():
        client.set_model_version_tag(model_name, plan.to_version, key, value)
    for key, value in {
        "mlopslab.demoted_by": who,
        "mlopslab.demoted_at": now,
        "mlopslab.demoted_reason": f"rollback to v{plan.to_version} via {via}",
    }.items():
        client.set_model_version_tag(model_name, plan.from_version, key, value)
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, plan.to_version)
    log.info("rolled %s %s back from v%s to v%s", model_name, CHAMPION_ALIAS, plan.from_version, plan.to_version)
    return plan.to_version
