#!/usr/bin/python
"""Wait for a Helm release's workloads to come up; fail fast, and explain, when they cannot.

Why a module: ``helm --wait`` only says "timed out" after the whole timeout (20 minutes for an
image that can never be pulled), and ``--atomic`` then uninstalls the evidence. This module
polls the release's Deployments, StatefulSets, DaemonSets and Pods itself, stops at the first
state that will not heal by waiting (ErrImagePull/ImagePullBackOff, CrashLoopBackOff, a missing
Secret, an unschedulable pod), and returns what ``kubectl describe`` would have shown: every pod
of the namespace with its container states and last termination, and the latest events. The
release path (role helm_release) prints that before it rolls the release back.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule, env_fallback

DOCUMENTATION = r"""
module: k8s_release_watch
short_description: Wait until a release's workloads are up; fail fast with a diagnosis when they cannot be
description:
  - Polls the Deployments, StatefulSets, DaemonSets and Pods matching I(selector) in I(namespace).
  - Succeeds when every workload has rolled out and every pod (Job pods excepted) is Ready
    (I(wait_for=ready)) or has all its containers started (I(wait_for=started)).
  - Fails as soon as a pod has stayed for I(fail_fast_after) seconds in a state that waiting does not heal
    (ErrImagePull, ImagePullBackOff, InvalidImageName, ErrImageNeverPull, CrashLoopBackOff,
    CreateContainerConfigError, CreateContainerError, RunContainerError, or Unschedulable),
    or after I(timeout). The failure message names the release and the pod that is not up, followed by the
    namespace's pods, their container states and the latest events.
  - Check mode changes nothing and waits for nothing.
version_added: 0.1.0
author: mlops-lab maintainers
options:
  release:
    description: Release name, for the messages.
    type: str
    required: true
  namespace:
    description: Namespace of the release.
    type: str
    required: true
  selector:
    description: Label selector of the release's workloads and pods (e.g. C(app.kubernetes.io/instance=mlflow)).
    type: str
    required: true
  wait_for:
    description: C(ready) waits for Ready pods; C(started) only for started containers (a pod that is Ready
      only once something else exists, such as a model, is still "up").
    type: str
    choices: [ready, started]
    default: ready
  timeout:
    description: Longest wait, as a Helm-style duration (C(600), C(600s), C(10m), C(1h)).
    type: str
    default: 10m
  interval:
    description: Seconds between two polls.
    type: int
    default: 5
  fail_fast_after:
    description: Seconds a non-healing state must last before the watch gives up (a first ErrImagePull may be a
      passing registry hiccup).
    type: int
    default: 20
  events:
    description: How many of the namespace's latest events the diagnosis shows.
    type: int
    default: 20
  kubeconfig:
    description: Kubeconfig file (default K8S_AUTH_KUBECONFIG, then KUBECONFIG / ~/.kube/config, then in-cluster).
    type: path
  context:
    description: Kubeconfig context (default K8S_AUTH_CONTEXT, then the current context).
    type: str
requirements: [kubernetes]
"""

EXAMPLES = r"""
- name: Wait for the mlflow release
  mlopslab.platform.k8s_release_watch:
    release: mlflow
    namespace: mlops-training
    selector: app.kubernetes.io/instance=mlflow
    timeout: 10m
"""

RETURN = r"""
ready:
  description: Whether the release came up.
  type: bool
  returned: always
waited:
  description: Seconds spent watching.
  type: float
  returned: always
report:
  description: The diagnosis, line by line (pods, container states, latest events); empty when the release is up.
  type: list
  elements: str
  returned: always
"""


# Waiting reasons that no amount of waiting fixes without a change (image, Secret, command).
FAIL_FAST_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


def parse_duration(text: str) -> int:
    """Seconds of a Helm-style duration: ``600``, ``600s``, ``10m``, ``1h30m``."""
    match = _DURATION.match(str(text).strip())
    if not match or not any(match.groups()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 600, 600s, 10m, 1h)")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj or obj[key] is None:
            return default
        obj = obj[key]
    return obj


def owned_by_job(pod: dict[str, Any]) -> bool:
    """A Job's pod (a hook, the first champion): its end is the Job's business, not a release's readiness
    (runner status skips these too)."""
    return any(ref.get("kind") == "Job" for ref in _get(pod, "metadata", "ownerReferences", default=[]))


def _container_statuses(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    status = pod.get("status") or {}
    return [("init " + s["name"], s) for s in status.get("initContainerStatuses") or []] + [
        (s["name"], s) for s in status.get("containerStatuses") or []
    ]


def pod_problem(pod: dict[str, Any], wait_for: str) -> tuple[str, bool] | None:
    """Why a pod is not up yet, and whether waiting cannot fix it; None when it is up."""
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    if phase == "Succeeded":
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason") or "not scheduled"
            return f"{reason}: {condition.get('message', '')}".strip(": "), reason == "Unschedulable"
    for name, cs in _container_statuses(pod):
        waiting = _get(cs, "state", "waiting")
        if waiting and waiting.get("reason") in FAIL_FAST_REASONS:
            return f"container {name}: {waiting['reason']}: {waiting.get('message', '')}".strip(": "), True
    if phase == "Failed":
        return f"phase Failed: {status.get('reason', '')} {status.get('message', '')}".strip(), not owned_by_job(pod)
    if owned_by_job(pod):
        return None  # a Job's pod need not be Ready; its crashes are caught above
    if wait_for == "ready":
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if not ready:
            pending = [n for n, cs in _container_statuses(pod) if not cs.get("ready")]
            return f"not Ready ({', '.join(pending) or phase})", False
        return None
    not_started = [n for n, cs in _container_statuses(pod) if not n.startswith("init ") and not cs.get("started")]
    if phase != "Running" or not_started or not status.get("containerStatuses"):
        return f"containers not started ({', '.join(not_started) or phase})", False
    return None


def workload_problem(kind: str, obj: dict[str, Any], wait_for: str) -> str | None:
    """Why a Deployment/StatefulSet/DaemonSet has not rolled out; None when it has."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = f"{kind.lower()}/{meta.get('name')}"
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return f"{name}: the controller has not seen the new spec yet"
    if kind == "DaemonSet":
        desired = status.get("desiredNumberScheduled", 0)
        updated = status.get("updatedNumberScheduled", 0)
        ready = status.get("numberReady", 0) if wait_for == "ready" else desired
        if updated < desired or ready < desired:
            return f"{name}: {updated}/{desired} updated, {status.get('numberReady', 0)}/{desired} ready"
        return None
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    ready = status.get("availableReplicas" if kind == "Deployment" else "readyReplicas", 0)
    if updated < desired:
        return f"{name}: {updated}/{desired} replicas updated"
    if wait_for == "ready":
        if ready < desired:
            return f"{name}: {ready}/{desired} replicas ready"
        if kind == "Deployment" and status.get("replicas", 0) > updated:
            return f"{name}: old replicas still running"
    return None


def describe_pod(pod: dict[str, Any]) -> list[str]:
    """What kubectl describe would say about a pod's containers, in a few lines."""
    status = pod.get("status") or {}
    statuses = [cs for _, cs in _container_statuses(pod) if not _.startswith("init ")]
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(cs.get("restartCount", 0) for _, cs in _container_statuses(pod))
    lines = [
        f"  {pod['metadata']['name']}  {status.get('phase', '?')}  {ready}/{len(statuses)} ready  restarts {restarts}"
    ]
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            lines.append(f"    condition {condition['type']}: {condition.get('reason', '')} {condition['message']}")
    for name, cs in _container_statuses(pod):
        state = cs.get("state") or {}
        image = cs.get("image", "")
        if state.get("waiting"):
            waiting = state["waiting"]
            lines.append(f"    {name} ({image}): waiting {waiting.get('reason', '')}: {waiting.get('message', '')}")
        elif state.get("terminated"):
            term = state["terminated"]
            lines.append(f"    {name} ({image}): terminated {term.get('reason', '')} exit {term.get('exitCode')}")
        elif "running" in state:
            lines.append(f"    {name} ({image}): running{'' if cs.get('ready') else ', not ready'}")
        last = _get(cs, "lastState", "terminated")
        if last:
            message = (last.get("message") or "").strip().splitlines()[-1:] or [""]
            lines.append(
                f"      last termination: {last.get('reason', '')} exit {last.get('exitCode')} "
                f"at {last.get('finishedAt', '?')} {message[0]}".rstrip()
            )
    return lines


def _event_time(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or _get(event, "metadata", "creationTimestamp", default="")
        or ""
    )


def describe_events(events: list[dict[str, Any]], count: int) -> list[str]:
    latest = sorted(events, key=_event_time)[-count:] if count > 0 else []
    lines = []
    for event in latest:
        involved = event.get("involvedObject") or {}
        times = f" (x{event['count']})" if (event.get("count") or 1) > 1 else ""
        lines.append(
            f"  {_event_time(event)} {event.get('type', '')} {event.get('reason', '')} "
            f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}{times}: "
            f"{(event.get('message') or '').strip()}"
        )
    return lines


class Cluster:
    """The few reads the watch needs, through the kubernetes client."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        if kubeconfig or os.path.exists(os.path.expanduser(os.environ.get("KUBECONFIG") or "~/.kube/config")):
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
        else:
            config.load_incluster_config()
            api = client.ApiClient()
        self._api = api
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)

    def _items(self, result: Any) -> list[dict[str, Any]]:
        data: dict[str, Any] = self._api.sanitize_for_serialization(result)
        return list(data.get("items") or [])

    def workloads(self, namespace: str, selector: str) -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        for kind, lister in (
            ("Deployment", self._apps.list_namespaced_deployment),
            ("StatefulSet", self._apps.list_namespaced_stateful_set),
            ("DaemonSet", self._apps.list_namespaced_daemon_set),
        ):
            found += [(kind, obj) for obj in self._items(lister(namespace, label_selector=selector))]
        return found

    def pods(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        return self._items(self._core.list_namespaced_pod(namespace, label_selector=selector or ""))

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self._items(self._core.list_namespaced_event(namespace))


def watch(cluster: Any, params: dict[str, Any], sleep: Any = time.sleep, clock: Any = time.monotonic) -> dict[str, Any]:
    """Poll until the release is up, a non-healing state outlasts fail_fast_after, or the timeout."""
    namespace, selector, wait_for = params["namespace"], params["selector"], params["wait_for"]
    timeout = parse_duration(params["timeout"])
    started = clock()
    first_seen: dict[tuple[str, str], float] = {}
    while True:
        now = clock()
        problems: list[str] = []
        fatal: tuple[str, str] | None = None
        workloads = cluster.workloads(namespace, selector)
        for kind, obj in workloads:
            problem = workload_problem(kind, obj, wait_for)
            if problem:
                problems.append(problem)
        pods = [p for p in cluster.pods(namespace, selector) if not _get(p, "metadata", "deletionTimestamp")]
        seen_now = set()
        for pod in pods:
            found = pod_problem(pod, wait_for)
            if found is None:
                continue
            text, cannot_heal = found
            name = pod["metadata"]["name"]
            problems.append(f"pod {name}: {text}")
            if cannot_heal:
                key = (name, ":".join(text.split(":")[:2]))  # container and reason, not the changing message
                seen_now.add(key)
                first_seen.setdefault(key, now)
                if fatal is None and now - first_seen[key] >= params["fail_fast_after"]:
                    fatal = (name, text)
        first_seen = {k: v for k, v in first_seen.items() if k in seen_now}
        if not workloads:
            problems.insert(0, f"no Deployment, StatefulSet or DaemonSet matches {selector!r} yet")
        waited = round(now - started, 1)
        if not problems:
            return {"ready": True, "waited": waited, "report": [], "msg": f"release {params['release']} is up"}
        if fatal is not None or now - started >= timeout:
            if fatal is not None:
                head = (
                    f"release {params['release']} (namespace {namespace}) cannot come up: "
                    f"pod {fatal[0]}: {fatal[1]} (for {params['fail_fast_after']}s or more, after {waited}s)"
                )
            else:
                head = f"release {params['release']} (namespace {namespace}) is not up after {waited}s: {problems[0]}"
            report = ["not up yet:", *[f"  {p}" for p in problems], f"pods in namespace {namespace}:"]
            for pod in sorted(cluster.pods(namespace), key=lambda p: p["metadata"]["name"]):
                report += describe_pod(pod)
            report.append(f"latest events in namespace {namespace}:")
            report += describe_events(cluster.events(namespace), params["events"])
            return {"ready": False, "waited": waited, "report": report, "msg": "\n".join([head, *report])}
        sleep(params["interval"])


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "release": {"type": "str", "required": True},
            "namespace": {"type": "str", "required": True},
            "selector": {"type": "str", "required": True},
            "wait_for": {"type": "str", "choices": ["ready", "started"], "default": "ready"},
            "timeout": {"type": "str", "default": "10m"},
            "interval": {"type": "int", "default": 5},
            "fail_fast_after": {"type": "int", "default": 20},
            "events": {"type": "int", "default": 20},
            "kubeconfig": {"type": "path", "fallback": (env_fallback, ["K8S_AUTH_KUBECONFIG"])},
            "context": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_CONTEXT"])},
        },
        supports_check_mode=True,
    )
    try:
        parse_duration(module.params["timeout"])
    except ValueError as exc:
        module.fail_json(msg=f"timeout: {exc}")
    if module.check_mode:
        module.exit_json(changed=False, ready=False, waited=0.0, report=[], msg="check mode: not watched")
    try:
        cluster = Cluster(module.params["kubeconfig"], module.params["context"])
    except ImportError:
        module.fail_json(msg="the kubernetes Python package is missing on the host that runs the watch")
    result = watch(cluster, module.params)
    if not result["ready"]:
        module.fail_json(changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
