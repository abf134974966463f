"""`python -m runner train --via job`: one training run as a Kubernetes Job, followed to its outcome.

A cluster without Airflow (or a person running several experiments at once) still trains with the
pipeline's own code: playbooks/train.yml starts the first champion's Job (roles/first_champion,
start.yml) with the inventory's image, environment and Secrets, its own name and this run's params,
and the pod runs ``python -m mlopslab_pipeline train --via direct`` (train, gate, promote, notify
serving), exactly what a DAG run does. The playbook only starts it: following a pod's log is what
ansible cannot show while it happens, so this module does it with the kubernetes client, as a
person would with ``kubectl logs -f``:

- each attempt's log is printed as it comes (a retried pod's log follows the first one's);
- a pod that cannot start (an image the nodes lack, a missing Secret) is told at once, in the words
  the roles use (plugins/filter/diagnosis.py), instead of at the Job's deadline;
- the exit code is the pipeline's outcome (its ``MLOPSLAB_OUTCOME`` line): 0 promoted, 3 rejected by
  the gate, 1 failed, as for a DAG run.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from mlopslab_pipeline.job import Outcome, parse_outcome

from runner.paths import collection_plugin

CONTAINER = "train"  # the container's name in start.yml's Job
EXIT_FAILED = 1


def job_name(run_name: str, suffix: str | None = None) -> str:
    """A Job name of this run: ``train-<run name as a DNS label>-<6 hex>`` (runs may share a name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")[:40].strip("-") or "run"
    return f"train-{slug}-{suffix or secrets.token_hex(3)}"


def _diagnosis() -> ModuleType:
    """The collection's diagnosis filters (pods_state, diagnose_pod_outcome)."""
    return collection_plugin("filter", "diagnosis")


@dataclass(frozen=True)
class JobResult:
    exit_code: int
    summary: str


def _started(pod: dict[str, Any]) -> bool:
    """The container ran or runs, so it has a log to follow."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False


def _waiting_reasons(pod: dict[str, Any]) -> set[str]:
    return {
        ((status.get("state") or {}).get("waiting") or {}).get("reason") or ""
        for status in (pod.get("status") or {}).get("containerStatuses") or []
    } - {""}


def _job_finished(job: dict[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` once the Job controller has decided (retries and podFailurePolicy
    included), else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def _image_of(job: dict[str, Any]) -> str:
    """The image the Job's pods run (named when the nodes cannot get it)."""
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("image") or "")


def summary_of(outcome: dict[str, Any]) -> str:
    decision = outcome.get("decision", "failed")
    version = f"version {outcome['version']}" if outcome.get("version") else "no version"
    previous = f" (was v{outcome['previous_champion']})" if outcome.get("previous_champion") else ""
    return f"{decision}: {version}{previous}; {outcome.get('reason', '')}"


def follow_job(
    api_client: Any,
    namespace: str,
    name: str,
    say: Callable[[str], None],
    *,
    timeout: float = 3600.0,
    poll_interval: float = 2.0,
) -> JobResult:
    """Follow Job ``namespace/name`` to its end: print its pods' logs, return the pipeline's outcome."""
    from kubernetes import client, watch

    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    selector = f"batch.kubernetes.io/job-name={name}"
    followed: set[str] = set()
    told: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        job = api_client.sanitize_for_serialization(batch.read_namespaced_job(name, namespace))
        image = _image_of(job)
        items = core.list_namespaced_pod(namespace, label_selector=selector).items
        pods = sorted(
            (api_client.sanitize_for_serialization(item) for item in items),
            key=lambda pod: pod["metadata"].get("creationTimestamp") or "",
        )
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            if pod_name in followed:
                continue
            if _started(pod):
                say(f"pod {pod_name}: log follows")
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    core.read_namespaced_pod_log, name=pod_name, namespace=namespace, container=CONTAINER, follow=True
                )
                for line in stream:
                    lines.append(line)
                    say(line)
                followed.add(pod_name)
                continue
            if _diagnosis().pods_state([pod]) == "stuck":  # the roles' own rule (STUCK_REASONS)
                what = f"The Job's pod {pod_name} did not start"
                words = _diagnosis().diagnose_pod_outcome(pod, [], int(timeout), image, what)["words"]
                return JobResult(EXIT_FAILED, f"failed: {words}")
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            reasons = _waiting_reasons(pod)
            state = f"{phase} ({', '.join(sorted(reasons))})" if reasons else phase
            if told.get(pod_name) != state:
                told[pod_name] = state
                say(f"pod {pod_name}: {state}")
        finished = _job_finished(job)
        if finished and all(pod["metadata"]["name"] in followed for pod in pods if _started(pod)):
            break
        if time.monotonic() > deadline:
            return JobResult(
                EXIT_FAILED,
                f"timeout: the Job {namespace}/{name} is still running after {timeout:.0f} s; "
                f"follow it with: kubectl -n {namespace} logs -f job/{name}",
            )
        time.sleep(poll_interval)
    outcome = parse_outcome("\n".join(lines))
    if outcome is None:
        return JobResult(EXIT_FAILED, f"failed: the Job {namespace}/{name} ended {finished} without an outcome line")
    try:
        exit_code = Outcome(**outcome).exit_code
    except TypeError:
        exit_code = EXIT_FAILED
    return JobResult(exit_code, summary_of(outcome))


__all__ = ["JobResult", "follow_job", "job_name", "summary_of"]
