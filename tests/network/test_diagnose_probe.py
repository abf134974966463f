"""The connectivity probe, run the way a diagnose pod runs it, against a deliberately broken lab.

The probe (plugins/module_utils/connectivity.py, the file `python -m runner diagnose` mounts into
its pods) runs inside the pod namespace of the seed network (tests/network/seed_network.py,
seed_services.py), with the workload's settings as environment variables, as a pod gets them from
its Secrets and the downward API: a real PostgreSQL login, an NFS write as uid 50000 over the
user-space libnfs client, an S3 put/get/delete against moto with IAM enforced. Each broken lab
(no SNAT, wrong pg_hba CIDR, root-owned log directory, wrong S3 region) must give exactly one named
cause; a healthy lab, none. The verdicts are printed (pytest -s shows them) for the record.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.network.seed_network import (
    DB_ADDR,
    DB_NAME,
    DB_PASSWORD,
    DB_PORT,
    DB_USER,
    LAB_SUBNET,
    NFS_ADDR,
    NODE_ADDR,
    POD_ADDR,
    POD_CIDR,
    in_ns,
)
from tests.network.seed_services import BUCKET, BUCKET_REGION, PREFIX, S3_ADDR, SeedServices

pytestmark = [pytest.mark.netns, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "collections/ansible_collections/mlopslab/platform/plugins/module_utils/connectivity.py"


def spec(services: SeedServices) -> dict[str, Any]:
    """What runner/diagnose.py puts in the ConfigMap for the training namespace (no secret in it)."""
    return {
        "pod_ip_env": "POD_IP",
        "node_ip_env": "HOST_IP",
        "checks": [
            {"kind": "postgresql", "name": "airflow metadata database", "uri_env": "AIRFLOW_DB_URI"},
            {"kind": "nfs", "name": "airflow logs (uid 50000)", "server": NFS_ADDR, "path": str(services.export),
             "uid": 50000, "gid": 0},
            {"kind": "s3", "name": "mlflow artifacts", "bucket": BUCKET, "prefix": PREFIX,
             "region_env": "AWS_DEFAULT_REGION", "endpoint_url_env": "MLFLOW_S3_ENDPOINT_URL",
             "access_key_id_env": "AWS_ACCESS_KEY_ID", "secret_access_key_env": "AWS_SECRET_ACCESS_KEY"},
        ],
    }  # fmt: skip


def probe(services: SeedServices, tmp: Path, region: str = BUCKET_REGION) -> list[dict[str, Any]]:
    (tmp / "spec.json").write_text(json.dumps(spec(services)))
    env = {
        "PATH": "/usr/bin:/bin",
        "POD_IP": POD_ADDR,
        "HOST_IP": NODE_ADDR,
        "AIRFLOW_DB_URI": f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@{DB_ADDR}:{DB_PORT}/{DB_NAME}",
        "AWS_ACCESS_KEY_ID": services.s3_key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": services.s3_key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": region,
        "MLFLOW_S3_ENDPOINT_URL": services.s3_endpoint,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), sys.executable, str(PROBE), str(tmp / "spec.json")]
    done = in_ns(services.net.pod, *argv, check=False, timeout=180)
    assert done.returncode in (0, 1), done.stderr
    for secret in (DB_PASSWORD, services.s3_key["SecretAccessKey"]):
        assert secret not in done.stdout + done.stderr, "the probe printed a secret"
    verdicts = [json.loads(line) for line in done.stdout.splitlines()]
    assert [v["check"] for v in verdicts] == ["postgresql", "nfs", "s3"], done.stdout
    assert done.returncode == (0 if all(v["ok"] for v in verdicts) else 1)
    print(f"\n--- probe output ({tmp.name}) ---\n{done.stdout}", end="")
    return verdicts


def causes(verdicts: list[dict[str, Any]]) -> set[str]:
    return {v["cause"] for v in verdicts if not v["ok"]}


def snat(services: SeedServices, on: bool) -> None:
    """The SNAT fix on the node, for the three VM addresses (what calico_vm_access does)."""
    for vm in (DB_ADDR, NFS_ADDR, S3_ADDR):
        rule = ["-s", POD_CIDR, "-d", f"{vm}/32", "-j", "MASQUERADE"]
        present = in_ns(services.net.node, "iptables", "-w", "5", "-t", "nat", "-C", "POSTROUTING", *rule, check=False)
        if on and present.returncode != 0:
            in_ns(services.net.node, "iptables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", *rule)
        elif not on and present.returncode == 0:
            in_ns(services.net.node, "iptables", "-w", "5", "-t", "nat", "-D", "POSTROUTING", *rule)


@pytest.fixture
def healthy_lab(seed_services: SeedServices) -> Iterator[SeedServices]:
    """SNAT on, pg_hba admitting the node subnet, the log directory the workload's: then one fault per test."""
    snat(seed_services, on=True)
    seed_services.net.admit(LAB_SUBNET)
    seed_services.own_logs_dir(50000, 0, 0o775)
    yield seed_services
    snat(seed_services, on=True)
    seed_services.net.admit(LAB_SUBNET)
    seed_services.own_logs_dir(50000, 0, 0o775)


def test_a_healthy_lab_has_no_cause(healthy_lab: SeedServices, tmp_path: Path) -> None:
    verdicts = probe(healthy_lab, tmp_path)
    assert causes(verdicts) == set(), verdicts
    pg, nfs, s3 = verdicts
    assert f"(the server sees this client as {NODE_ADDR})" in pg["summary"]
    assert "uid 50000 can create, read and remove files" in nfs["summary"]
    assert "could not be removed" not in nfs["summary"]
    assert list(healthy_lab.export.iterdir()) == [], "the NFS probe left a file"
    assert f"The credentials can put, get, delete in s3://{BUCKET}/{PREFIX}" in s3["summary"]


def test_no_snat_is_named(healthy_lab: SeedServices, tmp_path: Path) -> None:
    snat(healthy_lab, on=False)
    verdicts = probe(healthy_lab, tmp_path)
    assert causes(verdicts) == {"snat_missing"}, verdicts
    pg, nfs, s3 = verdicts
    assert f"saw this pod's own address {POD_ADDR}" in pg["summary"]
    assert "Apply the SNAT fix" in pg["fix"]
    assert nfs["cause"] == "snat_missing", nfs
    assert s3["ok"], s3  # S3 answers any address (AWS does): not part of this fault


def test_a_wrong_pg_hba_cidr_is_named(healthy_lab: SeedServices, tmp_path: Path) -> None:
    healthy_lab.net.admit("198.51.200.0/24")
    verdicts = probe(healthy_lab, tmp_path)
    assert causes(verdicts) == {"pg_hba_cidr"}, verdicts
    pg = verdicts[0]
    assert (
        f"saw the node address {NODE_ADDR} (so SNAT works), but pg_hba.conf has no entry for {NODE_ADDR}"
        in (pg["summary"])
    )


def test_a_root_owned_log_directory_is_named(healthy_lab: SeedServices, tmp_path: Path) -> None:
    healthy_lab.own_logs_dir(0, 0, 0o755)
    verdicts = probe(healthy_lab, tmp_path)
    assert causes(verdicts) == {"nfs_ownership"}, verdicts
    nfs = verdicts[1]
    assert "uid 50000 may not create files" in nfs["summary"]
    assert "chown 50000:0" in nfs["fix"]


def test_a_wrong_s3_region_is_named(healthy_lab: SeedServices, tmp_path: Path) -> None:
    verdicts = probe(healthy_lab, tmp_path, region="us-west-2")
    assert causes(verdicts) == {"s3_wrong_region"}, verdicts
    s3 = verdicts[2]
    assert f"Bucket {BUCKET} lives in {BUCKET_REGION}, but the region configured is us-west-2" in s3["summary"]
    assert f"Set mlopslab_s3_region: {BUCKET_REGION}" in s3["fix"]
