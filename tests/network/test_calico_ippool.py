"""calico_vm_access in ippool mode: the seed's `kubectl edit ippool default-ipv4-ippool` fix.

Two levels:
* schema (no cluster): the role's own patch computation (vars/main.yml) is evaluated by
  Ansible for several current pools, and pool + patch is validated against Calico's IPPool CRD
  schema (tests/fixtures/calico/crd.projectcalico.org_ippools.yaml);
* cluster: the CRD is installed into the real single-node cluster (tests/support/kube_cluster.py),
  default-ipv4-ippool is created with ipipMode Always, and playbooks/network.yml runs the role from
  a k8s_control host: check mode reports the change without making it, the first run changes the
  pool, the second changes nothing (same resourceVersion), state absent reverts it. The same for a
  VXLAN pool (vxlanMode, never ipipMode), and for a pool the Tigera operator owns: the role changes
  the operator's Installation and leaves the IPPool (which the operator would reset) alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.crds import install_crd, installation_crd, ippool_crd

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "collections/ansible_collections/mlopslab/platform/roles/calico_vm_access"
CRD_FILE = REPO / "tests/fixtures/calico/crd.projectcalico.org_ippools.yaml"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
POOL = "default-ipv4-ippool"
ANNOTATION = "mlopslab.platform/calico-vm-access-encapsulation"


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
    # (the patch is {"spec": ..., "metadata": {"annotations": ...}}; these cases compare the spec)
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(tmp / "play.yml")],
        cwd=REPO, env=ansible_env(tmp), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads((tmp / f"patch-{n}.json").read_text()).get("spec", {}) for n in range(len(cases))]


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
        (SEED_POOL, {"calico_vm_access_ippool_encapsulation_mode": "CrossSubnet"}),
        ({**SEED_POOL, "ipipMode": "Never", "vxlanMode": "Always"}, {}),
    ]
    patches = role_patches(tmp_path, cases)
    assert patches == [
        {"ipipMode": "Never"},  # natOutgoing is already true: not sent
        {"ipipMode": "Never", "natOutgoing": True},
        {"natOutgoing": True},
        {},
        {"ipipMode": "Always"},
        {"ipipMode": "CrossSubnet"},
        {"vxlanMode": "Never"},
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


def read_pool(api_client: Any, name: str = POOL) -> dict[str, Any]:
    from kubernetes import client

    return client.CustomObjectsApi(api_client).get_cluster_custom_object("crd.projectcalico.org", "v1", "ippools", name)


def create_pool(api_client: Any, spec: dict[str, Any], name: str = POOL) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api_client).create_cluster_custom_object(
        "crd.projectcalico.org", "v1", "ippools",
        {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec},
    )  # fmt: skip


def delete_pool(api_client: Any, name: str = POOL) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api_client).delete_cluster_custom_object("crd.projectcalico.org", "v1", "ippools", name)


def network_playbook(kube: Any, tmp: Path, *args: str) -> tuple[int, int, str]:
    """playbooks/network.yml in ippool mode from a k8s_control host; (rc, changed, output as one line)."""
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
         "-e", "mlopslab_calico_fix=ippool",
         # the port check is tests/test_k8s_node.py's (other suites may leave hostPort DaemonSets here)
         "-e", '{"k8s_node_check_ingress_ports": false}', *args],
        cwd=REPO, env=ansible_env(tmp), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    recap = re.search(r"control\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", out)
    assert recap, out
    return proc.returncode, int(recap.group(1)), " ".join(out.split())


@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_ippool_mode_against_a_real_apiserver(kube_cluster: Any, tmp_path: Path) -> None:

    with kube_cluster.api_client() as api:
        install_crd(api, ippool_crd())
        create_pool(api, SEED_POOL)
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
            assert fixed["metadata"]["annotations"] == {ANNOTATION: "IPIP"}
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
            delete_pool(api)


@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_a_vxlan_pool_gets_its_own_field(kube_cluster: Any, tmp_path: Path) -> None:
    vxlan_pool = {"cidr": "10.244.0.0/16", "blockSize": 26, "vxlanMode": "Always", "ipipMode": "Never",
                  "natOutgoing": False, "nodeSelector": "all()"}  # fmt: skip
    with kube_cluster.api_client() as api:
        install_crd(api, ippool_crd())
        create_pool(api, vxlan_pool)
        try:
            rc, changed, text = network_playbook(kube_cluster, tmp_path)
            assert rc == 0, text
            assert changed == 1, text
            fixed = read_pool(api)
            assert fixed["spec"] == {**vxlan_pool, "vxlanMode": "Never", "natOutgoing": True}
            validate_pool(fixed["spec"])
            assert "has no encapsulation and natOutgoing true: the IPPool fix is in place" in text

            rc, changed, text = network_playbook(kube_cluster, tmp_path)
            assert (rc, changed) == (0, 0), text

            rc, changed, text = network_playbook(kube_cluster, tmp_path, "-e", "mlopslab_calico_fix_state=absent")
            assert (rc, changed) == (0, 1), text
            reverted = read_pool(api)
            # VXLAN back on, IPIP left off: never both
            assert (reverted["spec"]["vxlanMode"], reverted["spec"]["ipipMode"]) == ("Always", "Never")
            assert ANNOTATION not in (reverted["metadata"].get("annotations") or {})
            assert "has VXLAN encapsulation (vxlanMode Always)" in text
        finally:
            delete_pool(api)


@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_an_operator_pool_is_changed_in_the_installation(kube_cluster: Any, tmp_path: Path) -> None:
    from kubernetes import client

    installation = {
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "metadata": {"name": "default"},
        "spec": {"calicoNetwork": {"ipPools": [
            {"name": POOL, "cidr": "10.244.0.0/16", "blockSize": 26, "encapsulation": "IPIP",
             "natOutgoing": "Enabled", "nodeSelector": "all()"},
        ]}},
    }  # fmt: skip
    with kube_cluster.api_client() as api:
        install_crd(api, ippool_crd())
        install_crd(api, installation_crd())
        objects = client.CustomObjectsApi(api)
        objects.create_cluster_custom_object("operator.tigera.io", "v1", "installations", installation)
        create_pool(api, SEED_POOL)  # what the operator made of it
        try:
            pool_before = read_pool(api)
            rc, changed, text = network_playbook(kube_cluster, tmp_path)
            assert rc == 0, text
            assert changed == 1, text
            got = objects.get_cluster_custom_object("operator.tigera.io", "v1", "installations", "default")
            (pool,) = got["spec"]["calicoNetwork"]["ipPools"]
            assert (pool["encapsulation"], pool["natOutgoing"], pool["cidr"]) == ("None", "Enabled", "10.244.0.0/16")
            assert got["metadata"]["annotations"] == {ANNOTATION: "IPIP"}
            # the IPPool is the operator's to update: untouched
            assert read_pool(api)["metadata"]["resourceVersion"] == pool_before["metadata"]["resourceVersion"]
            assert "owned by the Tigera operator" in text

            rc, changed, text = network_playbook(kube_cluster, tmp_path)
            assert (rc, changed) == (0, 0), text

            rc, changed, text = network_playbook(kube_cluster, tmp_path, "-e", "mlopslab_calico_fix_state=absent")
            assert (rc, changed) == (0, 1), text
            got = objects.get_cluster_custom_object("operator.tigera.io", "v1", "installations", "default")
            assert got["spec"]["calicoNetwork"]["ipPools"][0]["encapsulation"] == "IPIP"
        finally:
            objects.delete_cluster_custom_object("operator.tigera.io", "v1", "installations", "default")
            delete_pool(api)
