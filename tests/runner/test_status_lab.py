"""`python -m runner status -i INVENTORY` on a cluster inventory: the components come from the
inventory's values, secrets from its (ansible-vault encrypted) vault file.

The inventory has the lab's shape with loopback addresses: S3 is a real moto_server with IAM
enforced (tests/support/moto_s3.py), PostgreSQL a closed port, MLflow, Airflow and serving names
nothing answers. The local platform's own status (endpoints.json, every component really up, then
PostgreSQL and MLflow stopped) is proven in tests/e2e/test_local_platform.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.moto_s3 import Moto, create_bucket, free_port, running_moto, s3_policy

REPO = Path(__file__).resolve().parents[2]
BUCKET = "mlopslab-status-test"


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with running_moto(
        free_port(), users={"workload": s3_policy(BUCKET, "", ["GetObject"], ["ListBucket", "GetBucketLocation"])}
    ) as m:
        create_bucket(m.client("s3", "admin", "eu-central-1"), BUCKET, "eu-central-1")
        yield m


def lab_inventory(tmp: Path, moto: Moto, region: str) -> tuple[Path, Path]:
    inventory = tmp / "inventory"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    closed = free_port()
    hosts = {"all": {"children": {
        "k8s_control": {"hosts": {"control": {"ansible_connection": "local"}}},
        "db_servers": {"hosts": {"db": {"ansible_host": "127.0.0.1"}}},
        "local_platform": {"hosts": {}},
    }}}  # fmt: skip
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    web = free_port()
    values = {
        "mlopslab_db_host": "{{ hostvars[groups['db_servers'][0]]['ansible_host'] }}",
        "mlopslab_db_port": closed,
        "mlopslab_airflow_db_name": "airflow_db",
        "mlopslab_airflow_db_user": "airflow_user",
        "mlopslab_mlflow_db_name": "mlflow_db",
        "mlopslab_mlflow_db_user": "mlflow_user",
        "mlopslab_airflow_db_password": "{{ vault_airflow_db_password }}",
        "mlopslab_mlflow_db_password": "{{ vault_mlflow_db_password }}",
        "mlopslab_aws_access_key_id": "{{ vault_aws_access_key_id }}",
        "mlopslab_aws_secret_access_key": "{{ vault_aws_secret_access_key }}",
        "mlopslab_s3_bucket": BUCKET,
        "mlopslab_s3_region": region,
        "mlopslab_s3_endpoint_url": moto.endpoint,
        "mlopslab_ingress_address": f"127.0.0.1:{web}",
        "mlopslab_ingress_domain": "lab.internal",
        "mlopslab_mlflow_host": "mlflow.{{ mlopslab_ingress_domain }}",
        "mlopslab_airflow_host": "airflow.{{ mlopslab_ingress_domain }}",
        "mlopslab_serving_host": "fastapi.{{ mlopslab_ingress_domain }}",
    }
    (inventory / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump(values))
    vault = {
        "vault_airflow_db_password": secrets.token_urlsafe(16),
        "vault_mlflow_db_password": secrets.token_urlsafe(16),
        "vault_aws_access_key_id": moto.keys["workload"]["AccessKeyId"],
        "vault_aws_secret_access_key": moto.keys["workload"]["SecretAccessKey"],
    }
    vault_file = inventory / "group_vars" / "all" / "vault.yml"
    vault_file.write_text(yaml.safe_dump(vault))
    password = tmp / "vault-pass"
    password.write_text(secrets.token_urlsafe(24) + "\n")
    subprocess.run(
        [str(Path(sys.executable).with_name("ansible-vault")), "encrypt", "--vault-password-file", str(password),
         str(vault_file)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return inventory, password


def status(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", "status", "-i", str(inventory), *args],
        # no kubeconfig: the releases cannot be read (the real cluster's: tests/cluster/test_serving_on_cluster.py)
        cwd=REPO, env={**os.environ, "MLOPSLAB_STATE_DIR": str(inventory.parent / "state"),
                       "KUBECONFIG": str(inventory.parent / "no-kubeconfig")},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_lab_status_reads_the_inventory_and_the_vault(moto: Moto, tmp_path: Path) -> None:
    inventory, password = lab_inventory(tmp_path, moto, "eu-central-1")
    result = status(inventory, "--vault-password-file", str(password), "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    components = {c["name"]: c for c in json.loads(result.stdout)["components"]}
    assert components["s3"]["healthy"], components
    assert f"The credentials can list in s3://{BUCKET}" in components["s3"]["detail"]
    assert not components["postgresql"]["healthy"]
    assert "Nothing accepts connections at 127.0.0.1:" in components["postgresql"]["detail"]
    for name in ("mlflow", "airflow", "serving"):
        assert not components[name]["healthy"], components
        assert "nothing answers at 127.0.0.1:" in components[name]["detail"], components
    assert moto.keys["workload"]["SecretAccessKey"] not in result.stdout + result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert any(note.startswith("Helm releases not checked: cannot read the cluster") for note in notes), notes

    # a wrong region is named with the bucket's, and the table tells every component in words
    inventory, password = lab_inventory(tmp_path / "wrong", moto, "us-west-2")
    wrong = json.loads(status(inventory, "--vault-password-file", str(password), "--json").stdout)["components"]
    s3 = next(c for c in wrong if c["name"] == "s3")
    assert f"Bucket {BUCKET} lives in eu-central-1, but the region configured is us-west-2" in s3["detail"], s3
    table = status(inventory, "--vault-password-file", str(password))
    assert table.returncode == 1, table.stdout
    assert "down: mlflow, airflow, serving, postgresql, s3" in table.stdout, table.stdout


def test_without_the_vault_password_it_says_what_it_cannot_check(moto: Moto, tmp_path: Path) -> None:
    inventory, _ = lab_inventory(tmp_path, moto, "eu-central-1")
    result = status(inventory)
    assert result.returncode == 2, result.stdout
    assert "cannot read" in result.stdout, result.stdout
    assert "vault" in result.stdout.lower(), result.stdout


def test_a_release_the_inventory_leaves_out_is_not_looked_for() -> None:
    """A lab without Airflow (mlopslab_releases without it) is not reported as an Airflow that is down."""
    from runner.health import lab_components

    hosts = {f"mlopslab_{name}_host": f"{name}.lab.internal" for name in ("mlflow", "airflow", "serving")}
    every, _ = lab_components(hosts)
    assert [c.name for c in every] == ["mlflow", "airflow", "serving"]
    chosen, _ = lab_components({**hosts, "mlopslab_releases": ["ingress_nginx", "mlflow", "serving"]})
    assert [c.name for c in chosen] == ["mlflow", "serving"]
    assert lab_components({**hosts, "mlopslab_releases": []})[0] == []
