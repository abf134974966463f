"""calico_vm_access in ippool mode: the seed's `kubectl edit ippool default-ipv4-ippool` fix.

Two levels:
* schema (no cluster): the role's own patch computation (vars/main.yml) is evaluated by
  Ansible for several current pools, and pool + patch is validated against Calico's IPPool CRD
  schema (tests/fixtures/calico/crd.projectcalico.org_ippools.yaml);
* k8s: the CRD is installed into the real loopback kube-apiserver (tests/support/kube_cluster.py),
  default-ipv4-ippool is created with ipipMode Always, and playbooks/network.yml runs the role from
  a k8s_control host: check mode reports the change without making it, the first run changes the
  pool, the second changes nothing (same resourceVersion), state absent reverts it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "collections/ansible_collections/mlopslab/platform/roles/calico_vm_access"
CRD_FILE = REPO / "tests/fixtures/calico/crd.projectcalico.org_ippools.yaml"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
POOL = "default-ipv4-ippool"


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def ippool_schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def ansible_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        **extra,
    }


def role_patches(tmp: Path, cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Evaluate the role's __calico_vm_access_ippool_patch for each (current spec, role vars) case.

    One ansible-playbook run, one play per case: the play vars are the role defaults plus the
    case's variables, and vars/main.yml (the computation under test) is loaded as is.
    """
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    plays = [
        {
            "name": f"Evaluate the IPPool patch of calico_vm_access, case {n}",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "vars/main.yml")],
            "vars": {
                **defaults,
                **role_vars,
                "ansible_python_interpreter": sys.executable,
                "__calico_vm_access_ippool": {"resources": [{"spec": current_spec}]},
            },
            "tasks": [
                {
                    "name": "Write the patch",
                    "ansible.builtin.copy": {
                        "content": "{{ __calico_vm_access_ippool_patch | to_json }}",
                        "dest": str(tmp / f"patch-{n}.json"),
                        "mode": "0600",
                    },
                }
            ],
        }
        for n, (current_spec, role_vars) in enumerate(cases)
    ]
    (tmp / "play.yml").write_text(yaml.safe_dump(plays))
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(tmp / "play.yml")],
        cwd=REPO, env=ansible_env(tmp), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads((tmp / f"patch-{n}.json").read_text()) for n in range(len(cases))]


def validate_pool(spec: dict[str, Any]) -> None:
    pool = {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": POOL}, "spec": spec}
    jsonschema.validate(pool, ippool_schema())


SEED_POOL = {
    "cidr": "10.244.0.0/16",
    "blockSize": 26,
    "ipipMode": "Always",
    "natOutgoing": True,
    "nodeSelector": "all()",
}


def test_the_patch_sets_only_what_differs_and_fits_the_crd(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (SEED_POOL, {}),
        ({**SEED_POOL, "natOutgoing": False}, {}),
        ({"cidr": "10.244.0.0/16"}, {}),  # Calico omits natOutgoing when false and ipipMode when Never
        ({**SEED_POOL, "ipipMode": "Never"}, {}),
        ({**SEED_POOL, "ipipMode": "Never"}, {"calico_vm_access_state": "absent"}),
        (SEED_POOL, {"calico_vm_access_ippool_ipip_mode": "CrossSubnet"}),
    ]
    patches = role_patches(tmp_path, cases)
    assert patches == [
        {"ipipMode": "Never"},  # natOutgoing is already true: not sent
        {"ipipMode": "Never", "natOutgoing": True},
        {"natOutgoing": True},
        {},
        {"ipipMode": "Always"},
        {"ipipMode": "CrossSubnet"},
    ]
    for (current, _), patch in zip(cases, patches, strict=True):
        validate_pool({"cidr": "10.244.0.0/16", **current, **patch})


def test_the_crd_schema_rejects_what_calico_would() -> None:
    """The schema check above can fail: values Calico refuses are refused here too."""
    for bad in ({"ipipMode": "never"}, {"natOutgoing": "yes"}, {"blockSize": "26"}):
        with pytest.raises(jsonschema.ValidationError):
            validate_pool({**SEED_POOL, **bad})
    with pytest.raises(jsonschema.ValidationError):
        validate_pool({"ipipMode": "Never"})  # cidr is required


# --- against the real kube-apiserver ----------------------------------------------------------


def install_crd(api_client: Any) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    body = crd()
    body.pop("status", None)
    # Calico's generated file marks allowedUses uniqueItems, which the apiserver refuses ("runtime
    # complexity becomes quadratic"); a set list type says the same in the form it accepts.
    (version,) = body["spec"]["versions"]
    allowed_uses = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["allowedUses"]
    del allowed_uses["uniqueItems"]
    allowed_uses["x-kubernetes-list-type"] = "set"
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
        assert time.monotonic() < deadline, f"CRD not Established: {conditions}"
        time.sleep(0.5)


def read_pool(api_client: Any) -> dict[str, Any]:
    from kubernetes import client

    return client.CustomObjectsApi(api_client).get_cluster_custom_object("crd.projectcalico.org", "v1", "ippools", POOL)


def network_playbook(kube: Any, tmp: Path, *args: str) -> tuple[int, int, str]:
    inventory = {
        "all": {
            "vars": {"mlopslab_pod_cidr": "10.244.0.0/16", "mlopslab_kubeconfig": str(kube.kubeconfig)},
            "children": {
                "k8s_control": {
                    "hosts": {"control": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
                },
                "k8s_nodes": {"hosts": {}},
                "db_servers": {"hosts": {}},
                "nfs_servers": {"hosts": {}},
            },
        }
    }
    (tmp / "inventory.yml").write_text(yaml.safe_dump(inventory))
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(tmp / "inventory.yml"), "playbooks/network.yml",
         "-e", "mlopslab_calico_fix=ippool", *args],
        cwd=REPO, env=ansible_env(tmp), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    recap = re.search(r"control\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", out)
    assert recap, out
    return proc.returncode, int(recap.group(1)), " ".join(out.split())


@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_ippool_mode_against_a_real_apiserver(kube_cluster: Any, tmp_path: Path) -> None:
    from kubernetes import client

    with kube_cluster.api_client() as api:
        install_crd(api)
        objects = client.CustomObjectsApi(api)
        objects.create_cluster_custom_object(
            "crd.projectcalico.org", "v1", "ippools",
            {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": POOL},
             "spec": SEED_POOL},
        )  # fmt: skip
        try:
            created = read_pool(api)

            rc, changed, text = network_playbook(kube_cluster, tmp_path, "--check")
            assert rc == 0, text
            assert changed == 1, text
            assert read_pool(api)["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
            assert read_pool(api)["spec"]["ipipMode"] == "Always"
            assert "the IPPool fix is not in place" in text

            rc, changed, text = network_playbook(kube_cluster, tmp_path)
            assert rc == 0, text
            assert changed == 1, text
            fixed = read_pool(api)
            assert fixed["spec"] == {**SEED_POOL, "ipipMode": "Never", "vxlanMode": "Never"}
            assert "the IPPool fix is in place" in text

            rc, changed, text = network_playbook(kube_cluster, tmp_path)
            assert rc == 0, text
            assert changed == 0, text
            assert read_pool(api)["metadata"]["resourceVersion"] == fixed["metadata"]["resourceVersion"]

            rc, changed, text = network_playbook(kube_cluster, tmp_path, "-e", "mlopslab_calico_fix_state=absent")
            assert rc == 0, text
            assert changed == 1, text
            assert read_pool(api)["spec"]["ipipMode"] == "Always"
            rc, changed, text = network_playbook(kube_cluster, tmp_path, "-e", "mlopslab_calico_fix_state=absent")
            assert rc == 0, text
            assert changed == 0, text
        finally:
            objects.delete_cluster_custom_object("crd.projectcalico.org", "v1", "ippools", POOL)
