"""The Helm releases of a cluster and their pods' readiness, as `python -m runner status` shows them.

Read from what Helm itself keeps, so that any chart is understood the same way and nothing else
needs recording: each release's newest record (a Secret labelled ``owner=helm``, ``name=<release>``
in the release's namespace) gives its status and revision, and its manifest the Deployments,
StatefulSets and DaemonSets it made; their selectors give the pods. Whether a pod is Ready, and why
not, is the release watch's own verdict (plugins/modules/k8s_release_watch.py, what the release
path waits with). Pods of Jobs (hooks, the first champion) do not count.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from runner.paths import PLUGINS, collection_plugin, project_dir

# The releases an inventory may list in mlopslab_releases (roles <key>_release), in install order.
RELEASE_KEYS = ("ingress_nginx", "mlflow", "airflow", "serving")
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
    # The release watch's own verdict on a pod (the release path waits with it), for Ready pods.
    watch = collection_plugin("modules", "k8s_release_watch")
    seen: set[str] = set()
    for labels in workload_selectors(str(record.get("manifest", ""))):
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        for pod in api.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=TIMEOUT).items:
            doc = api.api_client.sanitize_for_serialization(pod)
            name = doc["metadata"]["name"]
            if name in seen or watch.owned_by_job(doc):
                continue
            seen.add(name)
            state.pods += 1
            problem = watch.pod_problem(doc, "ready")
            if problem is None:
                state.ready += 1
            else:
                state.not_ready.append(f"{name}: {problem[0]}")
    return state


def releases_state(
    releases: list[tuple[str, str]], kubeconfig: str | None = None, context: str | None = None
) -> list[ReleaseState]:
    """The state of each (release, namespace), through the kubeconfig (default: KUBECONFIG, ~/.kube/config)."""
    from kubernetes import client

    from runner.inventory import kube_client

    api = client.CoreV1Api(kube_client(kubeconfig, context))
    return [release_state(api, release, namespace) for release, namespace in releases]


def lab_releases(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(release, namespace) of each release the inventory lists in mlopslab_releases (all four when
    it does not say): the role ``<key>_release``'s ``<key>_release_release_name`` (the inventory's,
    else the role's default) and ``<key>_release_namespace``."""
    found = []
    listed = values.get("mlopslab_releases")
    for key in RELEASE_KEYS if listed is None else listed:
        name = values.get(f"{key}_release_release_name")
        if not name:
            defaults_file = project_dir() / PLUGINS.parent / "roles" / f"{key}_release/defaults/main.yml"
            defaults = yaml.safe_load(defaults_file.read_text()) or {}
            name = defaults.get(f"{key}_release_release_name", key)
        found.append((str(name), str(values.get(f"{key}_release_namespace") or "default")))
    return found


# What lab_releases and releases_state read from the inventory.
RELEASE_VARIABLES = [
    "mlopslab_kubeconfig",
    "mlopslab_kube_context",
    *(f"{key}_release_{suffix}" for key in RELEASE_KEYS for suffix in ("release_name", "namespace")),
]  # fmt: skip
