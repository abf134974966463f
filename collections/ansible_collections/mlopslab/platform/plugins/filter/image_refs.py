"""Image references the cluster's nodes can get, and the checks that refuse the others.

One place for the rules, used by the container_images role's preflight (as Ansible filters) and
by tests that inspect rendered manifests and Helm values (import this file; stdlib only):

- a reference must carry a tag (or digest) other than ``latest``: kubelet re-pulls ``:latest``
  on every start (its default pull policy for it is Always), which fails without a registry;
- with delivery ``registry`` the nodes pull: the reference must name the inventory's registry.
  ``localhost/...`` (podman's name for a local image) is refused: containerd on a node treats
  ``localhost`` as a registry host and asks port 443 of the node itself. So is a reference
  without a registry host (containerd completes ``mlops-lab/serving`` to
  ``docker.io/mlops-lab/serving``). A loopback registry with a port (``127.0.0.1:5000``) is a
  real registry, reachable from a node that serves it itself (a single-node lab);
- with delivery ``load`` the nodes never pull: the reference must be fully qualified (the name
  ``ctr images import`` stores is the name pods ask for) and, when the loaded set is known, be
  one of the images loaded;
- the stock ``apache/airflow`` image lacks the DAGs' dependencies (mlflow, scikit-learn): while
  the pipeline DAGs are deployed, no Airflow component and no task pod may run it. The Airflow
  chart (1.22) resolves its images in three places (``images.airflow``, the KubernetesExecutor
  pod template's ``images.pod_template``, ``defaultAirflowRepository`` behind both and behind
  the migration job with ``images.useDefaultImageForMigration``), so all three are checked.

Every message names the variable that holds the bad reference, so the fix is obvious.
"""

from __future__ import annotations

import re
from typing import Any

# The grammar of distribution/reference (what containerd and kubelet parse), simplified to what
# tells a registry host from a path: a first component with a dot or a colon, or "localhost".
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"(?:\[[0-9a-fA-F:]+\]|{_LABEL}(?:\.{_LABEL})*)(?::[0-9]+)?"
_HOST_RE = re.compile(rf"^{_HOST}$")
_NAME_RE = re.compile(rf"^(?P<path>{_PATH})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
# The official image under the names containerd gives it.
STOCK_AIRFLOW_REPOSITORIES = (
    "apache/airflow",
    "docker.io/apache/airflow",
    "index.docker.io/apache/airflow",
    "registry-1.docker.io/apache/airflow",
)
DELIVERIES = ("registry", "load", "none")


def _split_host(ref: str) -> tuple[str, str]:
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first, rest
    return "", ref


def image_ref_parse(ref: Any) -> dict[str, Any]:
    """Split a reference into registry host, path, tag and digest (``valid`` says if it parsed).

    ``repository`` is what a chart's ``image.repository`` takes (host and path, no tag).
    """
    text = ref if isinstance(ref, str) else ""
    host, remainder = _split_host(text)
    match = _NAME_RE.match(remainder) if text else None
    if not match or (host and not _HOST_RE.match(host)):
        return {
            "valid": False,
            "reference": text,
            "registry": "",
            "path": "",
            "repository": "",
            "tag": "",
            "digest": "",
        }
    path = match.group("path")
    return {
        "valid": True,
        "reference": text,
        "registry": host,
        "path": path,
        "repository": f"{host}/{path}" if host else path,
        "tag": match.group("tag") or "",
        "digest": match.group("digest") or "",
    }


def _registry_host(registry: str) -> str:
    """The host[:port] of a registry setting, which may carry a path prefix (host/project)."""
    return (registry or "").strip().rstrip("/").split("/", 1)[0]


def image_ref_problems(
    ref: Any,
    variable: str,
    delivery: str = "registry",
    registry: str = "",
    loaded: list[str] | None = None,
) -> list[str]:
    """Why the nodes could not run ``ref`` (held in ``variable``) under ``delivery``; [] when they can.

    ``registry`` is the registry the nodes pull from (``host[:port][/prefix]``), checked with
    delivery ``registry``; ``loaded`` is the list of references loaded into the nodes' containerd,
    checked with delivery ``load`` when given.
    """
    if delivery not in DELIVERIES:
        return [f"unknown image delivery {delivery!r} (checking {variable}): choose one of {', '.join(DELIVERIES)}"]
    if not isinstance(ref, str) or not ref.strip():
        return [f"{variable} is empty: set it to an image reference the nodes can get"]
    parsed = image_ref_parse(ref)
    if not parsed["valid"]:
        return [f"{variable}: {ref!r} is not an image reference ([host[:port]/]path:tag, lower-case path)"]
    problems: list[str] = []
    if not parsed["digest"] and parsed["tag"] in ("", "latest"):
        problems.append(
            f"{variable}: {ref!r} has no fixed tag: kubelet pulls ':latest' again on every start (pull policy "
            "Always); use a content tag such as the ones the container_images role publishes"
        )
    host = parsed["registry"]
    if delivery == "registry":
        if not host:
            problems.append(
                f"{variable}: {ref!r} names no registry: containerd on the nodes would complete it to "
                f"docker.io/{parsed['path']} and pull from Docker Hub; use the inventory's registry "
                f"({registry or 'container_images_registry'})"
            )
        elif host.lower() in LOOPBACK_HOSTS or re.fullmatch(r"127(\.[0-9]+){3}", host):
            problems.append(
                f"{variable}: {ref!r} points at {host}: containerd on a node treats it as a registry on the node "
                "itself (port 443) and the pull fails; push the image to a registry the nodes reach, or deliver "
                "it with container_images_delivery: load"
            )
        elif registry and host != _registry_host(registry):
            problems.append(
                f"{variable}: {ref!r} is not in the registry the nodes pull from ({_registry_host(registry)})"
            )
    elif delivery == "load":
        if not host:
            problems.append(
                f"{variable}: {ref!r} is not fully qualified: give it a registry host "
                f"(e.g. localhost/{parsed['path']}) "
                "so that the name ctr images import stores is the name the pods ask for"
            )
        elif loaded is not None and ref not in loaded:
            problems.append(
                f"{variable}: {ref!r} is not among the images loaded into the nodes' containerd "
                f"({', '.join(sorted(loaded)) or 'none'}); with no registry the nodes cannot get it"
            )
    return problems


def _get(values: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(values, dict):
            return None
        values = values.get(key)
    return values


def airflow_chart_images(values: dict[str, Any]) -> dict[str, str]:
    """The image each part of the official Airflow chart (1.22) runs, from its values.

    ``values`` are the release's values merged over the chart's defaults (at least
    ``defaultAirflowRepository``/``defaultAirflowTag`` must be present, as in the chart's own
    values.yaml). Keys: ``airflow`` (scheduler, DAG processor, API server, triggerer and, through
    ``[kubernetes_executor] worker_container_repository``, the task pods), ``pod_template`` (the
    KubernetesExecutor pod template file), ``migrations`` (migration job and wait-for-migrations).
    """
    # Absent keys take the chart's own defaults (values.yaml of 1.22): the stock image.
    default_repo = _get(values, "defaultAirflowRepository") or "apache/airflow"
    default_tag = str(_get(values, "defaultAirflowTag") or "")
    default_digest = _get(values, "defaultAirflowDigest") or ""

    def ref(repository: str, tag: str, digest: str = "") -> str:
        return f"{repository}@{digest}" if digest else f"{repository}:{tag}"

    airflow = ref(
        _get(values, "images", "airflow", "repository") or default_repo,
        str(_get(values, "images", "airflow", "tag") or default_tag),
        _get(values, "images", "airflow", "digest") or default_digest,
    )
    # The executor's own setting wins over the pod template's image (the chart's values.yaml says so).
    worker_repo = _get(values, "config", "kubernetes_executor", "worker_container_repository")
    worker_tag = _get(values, "config", "kubernetes_executor", "worker_container_tag")
    if isinstance(worker_repo, str) and worker_repo and "{{" not in worker_repo:
        tasks = ref(worker_repo, str(worker_tag or default_tag))
    else:
        tasks = ref(
            _get(values, "images", "airflow", "repository") or default_repo,
            str(_get(values, "images", "airflow", "tag") or default_tag),
        )
    pod_template = ref(
        _get(values, "images", "pod_template", "repository") or default_repo,
        str(_get(values, "images", "pod_template", "tag") or default_tag),
    )
    migrations = (
        ref(default_repo, default_tag, default_digest)
        if _get(values, "images", "useDefaultImageForMigration")
        else airflow
    )
    return {"airflow": airflow, "tasks": tasks, "pod_template": pod_template, "migrations": migrations}


_AIRFLOW_IMAGE_KEYS = {
    "airflow": ("images.airflow", "scheduler, DAG processor, API server and triggerer"),
    "tasks": ("config.kubernetes_executor.worker_container_repository (default images.airflow)", "the task pods"),
    "pod_template": ("images.pod_template (default defaultAirflowRepository)", "the task pod template"),
    "migrations": ("defaultAirflowRepository (images.useDefaultImageForMigration)", "the migration job"),
}


def airflow_image_problems(values: dict[str, Any], variable: str, pipeline_dags: bool = True) -> list[str]:
    """Refuse the stock apache/airflow image anywhere the pipeline's code runs (see the module doc).

    ``variable`` names where the values come from (e.g. ``airflow_release_image``).
    """
    if not pipeline_dags:
        return []
    problems = []
    for part, image in airflow_chart_images(values).items():
        repository = image_ref_parse(image)["repository"] or image.split("@")[0].rsplit(":", 1)[0]
        if repository in STOCK_AIRFLOW_REPOSITORIES:
            key, who = _AIRFLOW_IMAGE_KEYS[part]
            problems.append(
                f"{variable}: {who} would run the stock image {image} (chart value {key}), which has neither "
                "mlflow nor scikit-learn: every train/gate/rollback task fails with ModuleNotFoundError. Use the "
                "airflow image of the container_images role (container_images_published.airflow)"
            )
    return problems


def container_images_publish(results: list[dict[str, Any]], registry: str, length: int = 12) -> dict[str, Any]:
    """name -> repository, tag, ref and digest, from container_image_context results over the definitions.

    The tag is ``<version>-<first length hex digits of the content digest>``.
    """
    published = {}
    for result in results:
        item = result["item"]
        repository = f"{registry.rstrip('/')}/{item['name']}"
        tag = f"{item['version']}-{result['digest'][: int(length)]}"
        published[item["name"]] = {
            "repository": repository,
            "tag": tag,
            "ref": f"{repository}:{tag}",
            "digest": result["digest"],
        }
    return published


def image_inspect_id(inspected: Any) -> str:
    """The image ID (``sha256:<hex>``) from ``podman/docker image inspect`` or ``buildah inspect`` JSON."""
    record = inspected[0] if isinstance(inspected, list) and inspected else inspected
    if not isinstance(record, dict):
        return ""
    image_id = str(record.get("Id") or record.get("FromImageID") or "")
    return image_id if not image_id or image_id.startswith("sha256:") else f"sha256:{image_id}"


def images_missing_on_node(refs: list[str], node_images: dict[str, Any], image_ids: dict[str, str]) -> list[str]:
    """The references a node lacks: absent, or held with another config digest than the image ID.

    ``node_images`` is the ``images`` result of the containerd_image_info module, ``image_ids``
    maps each reference to the builder's image ID (the config digest).
    """
    missing = []
    for ref in refs:
        held = (node_images or {}).get(ref) or {}
        if not held.get("present") or held.get("config_digest") != (image_ids or {}).get(ref):
            missing.append(ref)
    return missing


_POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


def manifest_images(documents: list[Any]) -> list[dict[str, str]]:
    """Every container image of rendered manifests: kind, name, container and image, in order."""
    found = []
    for doc in documents or []:
        if not isinstance(doc, dict) or doc.get("kind") not in _POD_SPEC_PATHS:
            continue
        spec = _get(doc, *_POD_SPEC_PATHS[doc["kind"]]) or {}
        for section in ("initContainers", "containers"):
            for container in spec.get(section) or []:
                found.append(
                    {
                        "kind": doc["kind"],
                        "name": str(_get(doc, "metadata", "name") or ""),
                        "container": str(container.get("name") or ""),
                        "image": str(container.get("image") or ""),
                    }
                )
    return found


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "image_ref_parse": image_ref_parse,
            "image_ref_problems": image_ref_problems,
            "airflow_chart_images": airflow_chart_images,
            "airflow_image_problems": airflow_image_problems,
            "manifest_images": manifest_images,
            "container_images_publish": container_images_publish,
            "image_inspect_id": image_inspect_id,
            "images_missing_on_node": images_missing_on_node,
        }
