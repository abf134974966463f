"""CustomResourceDefinitions the Kubernetes-layer tests install into the test cluster (tests/support/kube_cluster.py).

* ``ippool_crd()``: Calico's IPPool CRD (tests/fixtures/calico/crd.projectcalico.org_ippools.yaml,
  upstream's), with the one change the apiserver needs;
* ``installation_crd()``: the Tigera operator's Installation, reduced to the fields the tests use
  (tests/fixtures/calico/operator.tigera.io_installations.yaml);
* ``open_crd(group, kind, ...)``: a CRD whose objects may hold anything (for objects such as k3s's
  ``helm.cattle.io/v1`` HelmChart, which the tests only create and read).

``install_crd(api_client, body)`` creates one (a 409 means another test already did: the server is
shared by the session) and waits until it is Established.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "calico"


def ippool_crd() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((FIXTURES / "crd.projectcalico.org_ippools.yaml").read_text())
    body.pop("status", None)
    # Calico's generated file marks allowedUses uniqueItems, which the apiserver refuses ("runtime
    # complexity becomes quadratic"); a set list type says the same in the form it accepts.
    (version,) = body["spec"]["versions"]
    allowed_uses = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["allowedUses"]
    allowed_uses.pop("uniqueItems", None)
    allowed_uses["x-kubernetes-list-type"] = "set"
    return body


def installation_crd() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((FIXTURES / "operator.tigera.io_installations.yaml").read_text())
    return body


def open_crd(group: str, kind: str, plural: str, *, namespaced: bool = True, version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "scope": "Namespaced" if namespaced else "Cluster",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def install_crd(api_client: Any, body: dict[str, Any]) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + 60
    while True:
        conditions = ext.read_custom_resource_definition(body["metadata"]["name"]).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        assert time.monotonic() < deadline, f"CRD {body['metadata']['name']} not Established: {conditions}"
        time.sleep(0.5)
