"""Reads a diagnose pod back: its verdicts (the probe's JSON lines), or why it did not run.

The connectivity_diagnosis role starts one short-lived pod per namespace; this filter turns what
the API says about it (the Pod object and its log) into the verdicts and, when the pod never got
to print them, into words that name the reason (image, missing Secret, scheduling). The
first_champion role reads its training Job's pods with the same words; pods_state says, for both,
when to stop waiting.
"""

from __future__ import annotations

import json
from typing import Any

_HINTS = {
    "ErrImagePull": "the nodes cannot get the image {image}: deliver it to them (playbooks/images.yml)",
    "ImagePullBackOff": "the nodes cannot get the image {image}: deliver it to them (playbooks/images.yml)",
    "ErrImageNeverPull": "the nodes do not have the image {image} and may not pull it: deliver it to them "
    "(playbooks/images.yml)",
    "InvalidImageName": "{image} is not an image reference: set mlopslab_diagnose_image",
    "CreateContainerConfigError": "a Secret, ConfigMap or key the pod reads is missing: run the cluster stage "
    "(k8s_secrets) first",
    "Unschedulable": "no node can take the pod",
}
# Reasons a container waits with that no waiting cures: every hinted reason but Unschedulable (a pod
# that is only unschedulable may yet be scheduled). Seeing one, the roles stop waiting and say why.
STUCK_REASONS = frozenset(_HINTS) - {"Unschedulable"}


def diagnose_pod_outcome(
    pod: dict[str, Any] | None,
    log: list[str] | str,
    timeout: int,
    image: str,
    what: str = "The probe pod did not print its verdicts",
) -> dict[str, Any]:
    """``{"finished", "phase", "words", "verdicts"}`` of a probe pod (``what`` opens the words of a
    pod that gave none: the training Job's pods are read with it too)."""
    pod = pod or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "missing"
    lines = log.splitlines() if isinstance(log, str) else list(log or [])
    verdicts = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "cause" in item:
                verdicts.append(item)
    if verdicts:
        return {"finished": True, "phase": phase, "words": "", "verdicts": verdicts}
    reasons = []
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        for kind in ("waiting", "terminated"):
            if state.get(kind):
                reason = state[kind].get("reason") or kind
                reasons.append((reason, state[kind].get("message") or ""))
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("reason"):
            reasons.append((condition["reason"], condition.get("message") or ""))
    if not reasons and phase == "Pending" and not status.get("conditions"):
        reasons.append(("NotScheduled", "no scheduler has placed the pod on a node"))
    told = "; ".join(f"{reason}: {message}" if message else reason for reason, message in reasons) or "no reason given"
    hints = [_HINTS[reason].format(image=image) for reason, _ in reasons if reason in _HINTS]
    words = f"{what} within {timeout} s: {phase} ({told})."
    if hints:
        words += " So " + "; ".join(dict.fromkeys(hints)) + "."
    if lines:
        words += " Its log: " + " | ".join(lines[-5:])
    return {"finished": False, "phase": phase, "words": words, "verdicts": []}


def diagnose_verdict_words(item: list[Any] | tuple[Any, Any]) -> str:
    """One line for a (pod outcome, verdict) pair: namespace / check (target): OK or the cause, what, fix."""
    outcome, verdict = item
    head = f"{outcome['namespace']} / {verdict['name']} ({verdict['target']}): "
    if verdict["ok"]:
        return head + "OK - " + verdict["summary"]
    fix = f" Fix: {verdict['fix']}" if verdict.get("fix") else ""
    return head + f"{verdict['cause']} - {verdict['summary']}{fix}"


def pods_state(pods: list[dict[str, Any]] | None, attempts: int = 1, final_exit_codes: list[int] | None = None) -> str:
    """Where a Job's pods (or one pod, ``attempts`` 1) stand: ``succeeded`` (one did), ``failed`` (one
    exited with a code a retry cannot change, or all ``attempts`` failed), ``stuck`` (a container
    waits for a reason in STUCK_REASONS: image, missing Secret) or ``running``. Used to stop waiting
    as soon as the answer is known, instead of at the deadline."""
    pods = pods or []
    phases = [(pod.get("status") or {}).get("phase") for pod in pods]
    if "Succeeded" in phases:
        return "succeeded"
    containers = [c for pod in pods for c in (pod.get("status") or {}).get("containerStatuses") or []]
    codes = {((c.get("state") or {}).get("terminated") or {}).get("exitCode") for c in containers}
    if codes & set(final_exit_codes or []) or phases.count("Failed") >= attempts:
        return "failed"
    waiting = {((c.get("state") or {}).get("waiting") or {}).get("reason") for c in containers}
    if waiting & STUCK_REASONS:
        return "stuck"
    return "running"


class FilterModule:
    """mlopslab.platform diagnosis filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "diagnose_pod_outcome": diagnose_pod_outcome,
            "diagnose_verdict_words": diagnose_verdict_words,
            "pods_state": pods_state,
        }
