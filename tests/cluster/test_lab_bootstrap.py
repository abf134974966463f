"""The lab's first four stages through `python -m runner bootstrap` on the real single-node cluster,
then `python -m runner diagnose` on a healthy and on a deliberately broken lab, and `runner down`.

The inventory is the lab's own group_vars with the harness's hosts (tests/support/harness_lab.py):
the PostgreSQL VM and the NFS VM are systemd containers (tests/support/lab_vms.py) that the hosts
stage turns into the lab's servers with the real roles (PostgreSQL with airflow_db and mlflow_db,
pg_hba admitting the node's addresses only; nfs-ganesha exporting Airflow's log directory owned by
uid 50000 with root_squash); S3 is moto_server on the harness's host address with IAM enforced,
where the hosts stage creates the bucket (public access blocked, encrypted) and proves the
workload keys. The network stage puts the SNAT fix on the node over ssh, the cluster stage makes
the namespaces, Secrets and the log volume, the images stage builds the platform's images and
loads them into the node's containerd (the diagnose pods run one of them). The pods reach the VMs
as the lab's pods do: routed through the node, which the VMs see only through the SNAT fix.

`runner diagnose` then runs its probe pods in both namespaces with the workloads' Secrets: a
healthy lab passes every check; each fault (no SNAT, a pg_hba entry for the wrong subnet, a
root-owned log directory, the wrong S3 region in the Secrets) gets exactly one named cause, and
the runner's output is printed (pytest -s) for the record. The faults that do not hide one another
are made at once (one run names three causes, each on its own check); a missing SNAT, which hides
the others, is made alone. The network stage repairs the SNAT it
lost, the cluster stage the Secrets; a second bootstrap of the hosts and network stages changes
nothing; `runner down` takes the SNAT fix back and keeps the databases, the export, the bucket and
the Secrets (a second down, and a second run of the cluster and images stages: the serving test).

The namespaces and the log volume carry a suffix of this module's own, so that the serving test
(tests/cluster/test_serving_on_cluster.py, the lab's names) can share the cluster.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness_lab import LAB_VALUES, HarnessLab, HarnessS3, harness_lab
from tests.support.kube_cluster import KubeCluster
from tests.support.lab_vms import LabVms
from tests.support.moto_s3 import Moto, free_port, running_moto, s3_policy

pytestmark = [pytest.mark.cluster, pytest.mark.images, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
SUFFIX = uuid.uuid4().hex[:6]
TRAINING, SERVING, INGRESS = (f"lab-training-{SUFFIX}", f"lab-serving-{SUFFIX}", f"lab-ingress-{SUFFIX}")
PV = f"airflow-logs-pv-{SUFFIX}"
BUCKET = f"mlopslab-harness-{SUFFIX}"
REGION = "eu-central-1"
LOGS = LAB_VALUES["mlopslab_airflow_logs_path"]
CHAIN = "MLOPSLAB-VM-SNAT"
FIRST_STAGES = ("hosts", "network", "cluster", "images")
# "<namespace> / <check> (<target>): <cause> - <summary>", one line per verdict in the runner's output
VERDICT = re.compile(r"\s*(\S+) / (.+) \(([^()]*)\): (OK|[a-z0-9_]+) - ")


@pytest.fixture(scope="module")
def s3(kube_cluster: KubeCluster) -> Iterator[Moto]:
    """moto on the host's end of the node's veth, where pods reach it; the workload may do anything
    to the bucket (the hosts stage makes it with those keys: s3_bucket_admin_profile is empty)."""
    everything = s3_policy(BUCKET, "", ["*"], ["*"])
    with running_moto(free_port(kube_cluster.host_ip), kube_cluster.host_ip, users={"workload": everything}) as moto:
        yield moto


@pytest.fixture(scope="module")
def lab(
    kube_cluster: KubeCluster, lab_vms: LabVms, s3: Moto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HarnessLab]:
    key = s3.keys["workload"]
    store = HarnessS3(s3.endpoint, BUCKET, REGION, key["AccessKeyId"], key["SecretAccessKey"])
    overrides = {
        "mlopslab_namespace_training": TRAINING,
        "mlopslab_namespace_serving": SERVING,
        "mlopslab_namespace_ingress": INGRESS,
        "k8s_log_volume_pv_name": PV,
    }
    lab = harness_lab(tmp_path_factory.mktemp("lab-bootstrap"), kube_cluster, vms=lab_vms, s3=store,
                      overrides=overrides)  # fmt: skip
    yield lab
    for namespace in (TRAINING, SERVING, INGRESS):
        kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    kube_cluster.kubectl("delete", "pv", PV, "--wait=false", check=False)
    # whatever a failed test left: the node must not masquerade for the tests that follow
    kube_cluster.node_exec(["iptables", "-w", "5", "-t", "nat", "-D", "POSTROUTING", "-j", CHAIN], check=False)


def _ok(proc: Any, what: str) -> str:
    output: str = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{what} failed:\n{output[-8000:]}"
    return output


def _bootstrap(lab: HarnessLab, *stages: str) -> dict[str, dict[str, int]]:
    _ok(lab.runner("bootstrap", *(arg for stage in stages for arg in ("--only", stage))), f"bootstrap {stages}")
    return lab.stages()


def _verdicts(output: str) -> list[tuple[str, str, str, str]]:
    found = (VERDICT.match(line) for line in output.splitlines())
    return [(m[1], m[2], m[3], m[4]) for m in found if m]


def _diagnose(lab: HarnessLab) -> tuple[int, list[tuple[str, str, str, str]], str]:
    proc = lab.runner("diagnose", timeout=900)
    output = proc.stdout + proc.stderr
    print(f"\n--- python -m runner diagnose (exit {proc.returncode}) ---\n{output}")
    return proc.returncode, _verdicts(output), output


def _psql(vms: LabVms, sql: str) -> str:
    return vms.postgres.exec(["runuser", "-u", "postgres", "--", "psql", "-tAc", sql]).stdout.strip()


def _snat_rules(cluster: KubeCluster) -> str:
    return cluster.node_exec(["iptables", "-w", "5", "-t", "nat", "-S"]).stdout


def test_the_first_four_stages_make_the_lab_on_empty_machines(
    lab: HarnessLab, kube_cluster: KubeCluster, lab_vms: LabVms, s3: Moto
) -> None:
    stages = _bootstrap(lab, *FIRST_STAGES)
    assert list(stages) == ["preflight", *FIRST_STAGES], stages
    for stage in FIRST_STAGES:
        assert stages[stage]["failed"] == 0, (stage, stages[stage])
        assert stages[stage]["changed"] > 0, (stage, stages[stage])

    # PostgreSQL: both databases owned by their users, listening on every address, pg_hba for the
    # node's addresses only (what pods become through SNAT).
    owners = _psql(lab_vms, "SELECT datname || ':' || pg_get_userbyid(datdba) FROM pg_database ORDER BY 1")
    assert {"airflow_db:airflow_user", "mlflow_db:mlflow_user"} <= set(owners.split()), owners
    hba = _psql(lab_vms, "SELECT database[1] || ' ' || user_name[1] || ' ' || address || '/' || "
                         "netmask || ' ' || auth_method FROM pg_hba_file_rules WHERE type = 'host'")  # fmt: skip
    subnet = json.loads((lab.inventory / "host_vars" / "control.json").read_text())["mlopslab_lab_subnet"]
    address, prefix = subnet.split("/")
    assert f"airflow_db airflow_user {address}/255.255.255.252 scram-sha-256" in hba, hba
    assert prefix == "30"
    # NFS: the export's directory belongs to uid 50000, group 0, mode 775, and ganesha listens.
    stat = lab_vms.nfs.exec(["stat", "-c", "%u:%g %a", LOGS]).stdout.strip()
    assert stat == "50000:0 775", stat
    # S3: the bucket, made in its region, public access blocked, encrypted.
    admin = s3.client("s3", "admin", REGION)
    assert admin.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == REGION
    block = admin.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values()), block
    assert admin.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    # The node masquerades pod traffic to the two VMs, in the role's own chain.
    rules = _snat_rules(kube_cluster)
    for vm in (lab_vms.postgres, lab_vms.nfs):
        assert f"-A {CHAIN} -s {kube_cluster.pod_cidr} -d {vm.ip}/32" in rules, rules
    # The workloads' Secrets, and the diagnose image in the node's containerd.
    secrets = kube_cluster.kubectl("-n", TRAINING, "get", "secrets", "-o", "name").stdout.split()
    assert {"secret/airflow-db-secret", "secret/mlflow-db-secret", "secret/aws-credentials-secret"} <= set(secrets)
    node_images = kube_cluster.ssh("ctr -n k8s.io images ls -q").stdout.split()
    assert any("/mlops-lab/diagnose:" in ref for ref in node_images), node_images


def test_diagnose_finds_nothing_wrong_in_a_healthy_lab(lab: HarnessLab, kube_cluster: KubeCluster) -> None:
    rc, verdicts, output = _diagnose(lab)
    assert rc == 0, output[-6000:]
    checks = {(namespace, check.strip()) for namespace, check, _, _ in verdicts}
    assert len(checks) == 5, verdicts  # training: two logins, the NFS write, S3; serving: S3
    assert {cause for *_, cause in verdicts} == {"OK"}, verdicts
    assert f"(the server sees this client as {kube_cluster.node_ip})" in " ".join(output.split())


@contextmanager
def _no_snat(lab: HarnessLab, cluster: KubeCluster, vms: LabVms) -> Iterator[None]:
    cluster.node_exec(["iptables", "-w", "5", "-t", "nat", "-F", CHAIN])
    yield
    # the network stage finds the rules gone and puts them back
    assert _bootstrap(lab, "network")["network"]["changed"] > 0
    assert f"-d {vms.postgres.ip}/32" in _snat_rules(cluster)


@contextmanager
def _wrong_pg_hba(lab: HarnessLab, cluster: KubeCluster, vms: LabVms) -> Iterator[None]:
    conf = _psql(vms, "SHOW hba_file")
    original = vms.postgres.exec(["cat", conf]).stdout
    subnet = json.loads((lab.inventory / "host_vars" / "control.json").read_text())["mlopslab_lab_subnet"]
    assert subnet in original
    vms.postgres.exec(["tee", conf], input=original.replace(subnet, "198.51.200.0/24"))
    _psql(vms, "SELECT pg_reload_conf()")
    yield
    vms.postgres.exec(["tee", conf], input=original)
    _psql(vms, "SELECT pg_reload_conf()")


@contextmanager
def _root_owned_logs(lab: HarnessLab, cluster: KubeCluster, vms: LabVms) -> Iterator[None]:
    vms.nfs.exec(["sh", "-c", f"chown 0:0 {LOGS} && chmod 755 {LOGS}"])
    yield
    vms.nfs.exec(["sh", "-c", f"chown 50000:0 {LOGS} && chmod 775 {LOGS}"])


@contextmanager
def _wrong_region(lab: HarnessLab, cluster: KubeCluster, vms: LabVms) -> Iterator[None]:
    patch = json.dumps({"stringData": {"AWS_DEFAULT_REGION": "us-west-2"}})
    for namespace in (TRAINING, SERVING):
        cluster.kubectl("-n", namespace, "patch", "secret", "aws-credentials-secret", "-p", patch)
    yield
    # the cluster stage finds the Secrets changed and puts the inventory's region back
    assert _bootstrap(lab, "cluster")["cluster"]["changed"] > 0


FAULTS = {
    "snat_missing": _no_snat,
    "pg_hba_cidr": _wrong_pg_hba,
    "nfs_ownership": _root_owned_logs,
    "s3_wrong_region": _wrong_region,
}


# What the verdict of each fault must say: the cause in words and its fix.
WORDS = {
    "snat_missing": ["saw this pod's own address", "Apply the SNAT fix"],
    "pg_hba_cidr": ["saw the node address {node_ip} (so SNAT works)", "pg_hba.conf has no entry for {node_ip}"],
    "nfs_ownership": ["uid 50000 may not create files", "chown 50000:0"],
    "s3_wrong_region": [f"Bucket {BUCKET} lives in {REGION}, but the region configured is us-west-2",
                        f"Set mlopslab_s3_region: {REGION}"],
}  # fmt: skip


# Faults that do not hide one another are made together, and one diagnose run must name each.
# Without SNAT the VMs see pod addresses, which hides what pg_hba and the export would say: alone.
BROKEN_LABS = {"no_snat": ("snat_missing",), "three_faults": ("pg_hba_cidr", "nfs_ownership", "s3_wrong_region")}


@pytest.mark.parametrize("causes", list(BROKEN_LABS.values()), ids=list(BROKEN_LABS))
def test_diagnose_names_each_fault_of_a_broken_lab(
    lab: HarnessLab, kube_cluster: KubeCluster, lab_vms: LabVms, causes: tuple[str, ...]
) -> None:
    with ExitStack() as faults:
        for cause in causes:
            faults.enter_context(FAULTS[cause](lab, kube_cluster, lab_vms))
        rc, verdicts, output = _diagnose(lab)
    assert rc == 1, output[-6000:]
    # each check that fails names one cause, and every fault made is named
    assert {found for *_, found in verdicts} - {"OK"} == set(causes), verdicts
    words = " ".join(output.split())
    assert "Causes found: " + ", ".join(sorted(causes, key=words.find)) in words, output[-3000:]
    for cause in causes:
        for phrase in WORDS[cause]:
            assert phrase.format(node_ip=kube_cluster.node_ip) in words, phrase
    if len(causes) > 1:  # one cause per check: the two logins, the NFS write and the S3 checks apart
        kinds = {"Airflow metadata database": "pg_hba_cidr", "MLflow backend store": "pg_hba_cidr",
                 "Airflow logs (uid 50000)": "nfs_ownership", "S3 artifacts": "s3_wrong_region"}  # fmt: skip
        found_by_check = {(namespace, check.strip()): found for namespace, check, _, found in verdicts}
        for (namespace, check), found in found_by_check.items():
            expected = next(cause for name, cause in kinds.items() if check.startswith(name))
            assert found == expected, (namespace, check, found)


def test_a_second_bootstrap_changes_nothing(lab: HarnessLab) -> None:
    """The hosts and network stages (the cluster and images stages' second run is the serving test's)."""
    stages = _bootstrap(lab, "hosts", "network")
    changed = {stage: counts["changed"] for stage, counts in stages.items() if counts["changed"]}
    assert changed == {}, f"a second bootstrap changed {changed}; logs in {lab.work}"


def test_down_takes_the_network_fix_back_and_keeps_the_data(
    lab: HarnessLab, kube_cluster: KubeCluster, lab_vms: LabVms, s3: Moto
) -> None:
    secrets = kube_cluster.kubectl("-n", TRAINING, "get", "secrets", "-o", "name").stdout.split()
    _ok(lab.runner("down"), "down")
    assert CHAIN not in _snat_rules(kube_cluster)
    # kept: the databases, the export with its owner, the bucket, the Secrets
    owners = _psql(lab_vms, "SELECT datname FROM pg_database")
    assert {"airflow_db", "mlflow_db"} <= set(owners.split())
    assert lab_vms.nfs.exec(["stat", "-c", "%u", LOGS]).stdout.strip() == "50000"
    assert s3.client("s3", "admin", REGION).head_bucket(Bucket=BUCKET)
    assert kube_cluster.kubectl("-n", TRAINING, "get", "secrets", "-o", "name").stdout.split() == secrets
