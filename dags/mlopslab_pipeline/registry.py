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

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


# A registered model used as a mutex around the gate: creating a model is atomic in every
# MLflow backend (a unique name), so whoever creates it holds the lock.
GATE_LOCK_SUFFIX = ".gate-lock"
GATE_LOCK_TIMEOUT = 600.0  # seconds to wait for another gate
GATE_LOCK_STALE = 900.0  # a lock older than this belongs to a gate that died: break it


def _lock_age(client: Any, name: str) -> float | None:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return None
    return time.time() - (model.creation_timestamp or 0) / 1000.0


@contextmanager
def gate_lock(client: Any, model_name: str, holder: str, *, timeout: float = GATE_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the model's gate lock: one gate at a time across the DAG's runs and training Jobs.

    The DAG serialises its own gate task (``max_active_tis_per_dag=1``), but Jobs running
    ``python -m mlopslab_pipeline`` in parallel, or a Job beside the DAG, cannot be serialised by
    Airflow; two gates that read the same champion would both promote and both record it as the
    previous champion. The registry itself is the one thing they all share.
    """
    from mlflow.exceptions import MlflowException

    name = model_name + GATE_LOCK_SUFFIX
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(
                name, tags={"mlopslab.lock_holder": holder}, description=f"gate lock of {model_name}, held by {holder}"
            )
            break
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        age = _lock_age(client, name)
        if age is not None and age > GATE_LOCK_STALE:
            log.warning("breaking the gate lock of %s: held for %.0f s by a gate that did not finish", model_name, age)
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(name)
            continue
        if time.monotonic() >= deadline:
            raise TimeoutError(f"another gate of {model_name} held its lock ({name}) for more than {timeout:.0f} s")
        time.sleep(1.0)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(name)


def _score_against_champion(
    client: Any, model_name: str, version: str, dataset: str, min_accuracy: float, tolerance: float
) -> tuple[Decision, float, Any | None, float | None]:
    """(decision, candidate accuracy, the champion's ModelVersion or None, champion accuracy)."""
    from mlopslab_pipeline.training import TAG_DATASET

    champion = current_alias_version(client, model_name, CHAMPION_ALIAS)
    accuracy = heldout_accuracy(f"models:/{model_name}/{version}", dataset)
    if champion is None:
        return decide(accuracy, None, min_accuracy, tolerance, None), accuracy, None, None
    champion_version = str(champion.version)
    champion_dataset = champion.tags.get(TAG_DATASET)
    if champion_dataset and champion_dataset != dataset:
        reason = (
            f"champion v{champion_version} serves the {champion_dataset} data set and this "
            f"candidate was trained on {dataset}; promote across data sets by hand"
        )
        return Decision(False, reason), accuracy, champion, None
    champion_accuracy = heldout_accuracy(f"models:/{model_name}/{champion_version}", dataset)
    decision = decide(accuracy, champion_accuracy, min_accuracy, tolerance, champion_version)
    return decision, accuracy, champion, champion_accuracy


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

    One gate of a model runs at a time, whoever runs it (``gate_lock``).
    """
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
    with gate_lock(client, model_name, via):
        return _gate_locked(client, model_name, version, run_id, dataset, min_accuracy, tolerance, who, via)


def _gate_locked(
    client: Any,
    model_name: str,
    version: str,
    run_id: str,
    dataset: str,
    min_accuracy: float,
    tolerance: float,
    who: str,
    via: str,
) -> GateResult:
    decision, accuracy, champion, champion_accuracy = _score_against_champion(
        client, model_name, version, dataset, min_accuracy, tolerance
    )
    champion_version = str(champion.version) if champion is not None else None
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
    The move holds the gate lock, so a gate cannot promote between the check and the move.
    """
    with gate_lock(client, model_name, via):
        return _rollback_locked(client, model_name, plan, who=who, via=via)


def _rollback_locked(client: Any, model_name: str, plan: RollbackPlan, *, who: str, via: str) -> str:
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
