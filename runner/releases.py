"""The Helm releases of a cluster and their pods' readiness, as `python -m runner status` shows them.

Read from what Helm itself keeps, so that any chart is understood the same way and nothing else
needs recording: each release's newest record (a Secret labelled ``owner=helm``, ``name=<release>``
in the release's namespace) gives its status and revision, and its manifest the Deployments,
StatefulSets and DaemonSets it made; their selectors give the pods. A pod is ready when Kubernetes
says so (the Ready condition); one that is not is named with the reason its containers wait or
ended (what ``kubectl get pods`` would show). Pods of Jobs (hooks, the first champion) do not count.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROLES = Path(__file__).resolve().parents[1] / "collections/ansible_collections/mlopslab/platform/roles"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# Seconds per API request: status must answer even when the API server does not.
TIMEOUT = 10


@dataclass
class ReleaseState:
    release: str
    namespace: str
    status: str  # Helm's: deployed, failed, pending-install, ... or "not installed"
    revision: int = 0
    ready: int = 0
    pods: int = 0
    not_ready: list[str] = field(default_factory=list)  # "pod: reason"

    @property
    def healthy(self) -> bool:
        return self.status == "deployed" and self.pods > 0 and self.ready == self.pods


def helm_record(secret_data: str) -> dict[str, Any]:
    """A Helm 3 release record from its Secret's ``release`` value (base64 of base64 of gzip'd JSON)."""
    inner = base64.b64decode(base64.b64decode(secret_data))
    record: dict[str, Any] = json.loads(gzip.decompress(inner) if inner[:2] == b"\x1f\x8b" else inner)
    return record


def workload_selectors(manifest: str) -> list[dict[str, str]]:
    """The matchLabels of every Deployment, StatefulSet and DaemonSet in a rendered manifest."""
    selectors = []
    for doc in yaml.safe_load_all(manifest or ""):
        if isinstance(doc, dict) and doc.get("kind") in WORKLOADS:
            labels = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if labels:
                selectors.append({str(k): str(v) for k, v in labels.items()})
    return selectors


def pod_problem(pod: dict[str, Any]) -> str | None:
    """None for a Ready pod, else why not: a container's waiting or termination reason, or the phase."""
    status = pod.get("status") or {}
    if any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
        return None
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason") not in (None, "PodInitializing"):
            return f"{container.get('name')} {waiting['reason']}"
        if terminated and terminated.get("exitCode"):
            return f"{container.get('name')} exited {terminated['exitCode']} ({terminated.get('reason', '')})"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"not scheduled: {condition.get('message', condition.get('reason', ''))}"
    return f"not ready ({status.get('phase', 'Unknown')})"


def release_state(api: Any, release: str, namespace: str) -> ReleaseState:
    """One release's state through a kubernetes ``CoreV1Api`` (``api``)."""
    records = api.list_namespaced_secret(
        namespace, label_selector=f"owner=helm,name={release}", _request_timeout=TIMEOUT
    ).items
    if not records:
        return ReleaseState(release, namespace, "not installed")
    newest = max(records, key=lambda s: int((s.metadata.labels or {}).get("version", "0")))
    record = helm_record((newest.data or {}).get("release", ""))
    state = ReleaseState(release, namespace, str((record.get("info") or {}).get("status", "unknown")),
                         revision=int(record.get("version", 0)))  # fmt: skip
    seen: set[str] = set()
    for labels in workload_selectors(str(record.get("manifest", ""))):
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        for pod in api.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=TIMEOUT).items:
            doc = api.api_client.sanitize_for_serialization(pod)
            name = doc["metadata"]["name"]
            owners = {o.get("kind") for o in doc["metadata"].get("ownerReferences") or []}
            if name in seen or "Job" in owners:
                continue
            seen.add(name)
            state.pods += 1
            problem = pod_problem(doc)
            if problem is None:
                state.ready += 1
            else:
                state.not_ready.append(f"{name}: {problem}")
    return state


def releases_state(
    releases: list[tuple[str, str]], kubeconfig: str | None = None, context: str | None = None
) -> list[ReleaseState]:
    """The state of each (release, namespace), through the kubeconfig (default: KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client

    from runner.train_job import kube_client

    api = client.CoreV1Api(kube_client(kubeconfig, context))
    return [release_state(api, release, namespace) for release, namespace in releases]


def lab_releases(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(release, namespace) of each release the inventory lists in mlopslab_releases (all four when
    it does not say, as the playbooks' default): the release
    role ``<key>_release``'s ``<key>_release_release_name`` (the inventory's, else the role's
    default) and ``<key>_release_namespace``."""
    found = []
    listed = values.get("mlopslab_releases")
    for key in ("ingress_nginx", "mlflow", "airflow", "serving") if listed is None else listed:
        name = values.get(f"{key}_release_release_name")
        if not name:
            defaults = yaml.safe_load((ROLES / f"{key}_release/defaults/main.yml").read_text()) or {}
            name = defaults.get(f"{key}_release_release_name", key)
        found.append((str(name), str(values.get(f"{key}_release_namespace") or "default")))
    return found


# What lab_releases and releases_state read from the inventory.
RELEASE_VARIABLES = [
    "mlopslab_kubeconfig",
    "mlopslab_kube_context",
    *(f"{key}_release_{suffix}" for key in ("ingress_nginx", "mlflow", "airflow", "serving")
      for suffix in ("release_name", "namespace")),
]  # fmt: skip
