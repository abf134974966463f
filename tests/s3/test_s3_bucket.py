"""mlopslab.platform.s3_bucket against a real S3 endpoint: moto_server with IAM policies enforced.

One moto_server for the module (tests/support/moto_s3.py) with three users: ``admin`` (allowed
everything, used through a profile of a temporary shared credentials file, as the role's
s3_bucket_admin_profile), ``workload`` (least privilege on the artifact prefix, like the lab's
IAM user) and ``no_put`` (the same without s3:PutObject). The role runs from a real
ansible-playbook on localhost; only the endpoint URL differs from what it does against AWS.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.moto_s3 import Moto, create_bucket, free_port, running_moto, s3_policy
from tests.support.role_play import RoleRun, apply_role

BUCKET = "mlopslab-artifacts-test"
ELSEWHERE = "mlopslab-artifacts-frankfurt"
REGION = "ap-northeast-2"
PREFIX = "mlflow"
WORKLOAD_OBJECTS = ["PutObject", "GetObject", "DeleteObject"]


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    users = {
        "workload": s3_policy(BUCKET, PREFIX, WORKLOAD_OBJECTS, ["ListBucket"]),
        "no_put": s3_policy(BUCKET, PREFIX, ["GetObject", "DeleteObject"], ["ListBucket"]),
    }
    with running_moto(free_port(), users=users) as server:
        yield server


def run_role(moto: Moto, tmp: Path, user: str = "workload", *args: str, **role_vars: Any) -> RoleRun:
    credentials = tmp / "credentials"
    admin = moto.keys["admin"]
    credentials.write_text(
        f"[lab-admin]\naws_access_key_id = {admin['AccessKeyId']}\naws_secret_access_key = {admin['SecretAccessKey']}\n"
    )
    credentials.chmod(0o600)
    variables = {
        "s3_bucket_name": BUCKET,
        "s3_bucket_region": REGION,
        "s3_bucket_endpoint_url": moto.endpoint,
        "s3_bucket_prefix": PREFIX,
        "s3_bucket_admin_profile": "lab-admin",
        "s3_bucket_access_key_id": moto.keys[user]["AccessKeyId"],
        "s3_bucket_secret_access_key": moto.keys[user]["SecretAccessKey"],
        **role_vars,
    }
    env = {
        **os.environ,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": os.devnull,
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        env.pop(name, None)
    run = apply_role("mlopslab.platform.s3_bucket", variables, tmp, *args, env=env)
    for key in moto.keys.values():
        assert key["SecretAccessKey"] not in run.out, "a secret key was printed"
        assert key["AccessKeyId"] not in run.out, "an access key id was printed"
    return run


def test_bucket_is_created_configured_and_the_workload_proven(moto: Moto, tmp_path: Path) -> None:
    admin = moto.client("s3", "admin", REGION)

    check = run_role(moto, tmp_path, "workload", "--check")
    assert check.rc == 0, check.out
    assert check.changed == 1, check.out
    assert f"create bucket {BUCKET} in {REGION}" in check.text, check.out
    assert "Probe skipped: the bucket does not exist yet" in check.text, check.out
    assert BUCKET not in [b["Name"] for b in admin.list_buckets()["Buckets"]]

    applied = run_role(moto, tmp_path)
    assert applied.rc == 0, applied.out
    assert applied.changed == 1, applied.out
    assert admin.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == REGION
    assert admin.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = admin.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert "Status" not in admin.get_bucket_versioning(Bucket=BUCKET)
    assert f"The credentials can put, get, delete in s3://{BUCKET}/{PREFIX} (region {REGION})" in applied.text
    assert admin.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0, "the probe left an object behind"

    again = run_role(moto, tmp_path)
    assert again.rc == 0, again.out
    assert again.changed == 0, again.out
    converged_check = run_role(moto, tmp_path, "workload", "--check")
    assert converged_check.rc == 0, converged_check.out
    assert converged_check.changed == 0, converged_check.out

    versioned = run_role(moto, tmp_path, s3_bucket_versioning="enabled")
    assert versioned.rc == 0, versioned.out
    assert versioned.changed == 1, versioned.out
    assert admin.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    assert run_role(moto, tmp_path, s3_bucket_versioning="enabled").changed == 0


def test_a_missing_permission_is_named(moto: Moto, tmp_path: Path) -> None:
    create_bucket_if_missing(moto)
    denied = run_role(moto, tmp_path, "no_put")
    assert denied.rc != 0, denied.out
    assert denied.failed == 1, denied.out
    assert f"missing s3:PutObject on arn:aws:s3:::{BUCKET}/{PREFIX}/*" in denied.text, denied.out
    # outside the prefix the workload itself has no right either: the ARN follows the prefix
    outside = run_role(moto, tmp_path, "workload", s3_bucket_prefix="elsewhere")
    assert outside.rc != 0, outside.out
    assert f"missing s3:PutObject on arn:aws:s3:::{BUCKET}/elsewhere/*" in outside.text, outside.out


def test_a_wrong_secret_is_told_apart_from_a_missing_permission(moto: Moto, tmp_path: Path) -> None:
    create_bucket_if_missing(moto)
    wrong = run_role(moto, tmp_path, "workload", s3_bucket_secret_access_key="not-the-secret-" + "x" * 20)
    assert wrong.rc != 0, wrong.out
    assert "S3 knows the access key id, but the secret access key does not match it" in wrong.text, wrong.out


def test_a_bucket_in_another_region_fails_naming_it(moto: Moto, tmp_path: Path) -> None:
    create_bucket(moto.client("s3", "admin", "eu-central-1"), ELSEWHERE, "eu-central-1")
    wrong_region = run_role(moto, tmp_path, "admin", s3_bucket_name=ELSEWHERE)
    assert wrong_region.rc != 0, wrong_region.out
    assert f"Bucket {ELSEWHERE} exists in eu-central-1, not in {REGION}" in wrong_region.text, wrong_region.out
    assert "Set mlopslab_s3_region: eu-central-1" in wrong_region.text, wrong_region.out
    # s3_bucket_manage false only checks, and says the same
    checked_only = run_role(moto, tmp_path, "admin", s3_bucket_name=ELSEWHERE, s3_bucket_manage=False)
    assert checked_only.rc != 0, checked_only.out
    assert f"exists in eu-central-1, not in {REGION}" in checked_only.text, checked_only.out


def test_bad_settings_name_the_variable(moto: Moto, tmp_path: Path) -> None:
    bad = run_role(moto, tmp_path, "workload", s3_bucket_name="Not_A_Bucket")
    assert bad.rc != 0
    assert (
        's3_bucket_name must be an S3 bucket name (3-63 lower-case letters, digits, dots, hyphens; got "Not_A_Bucket")'
        in (bad.text)
    ), bad.out


def create_bucket_if_missing(moto: Moto) -> None:
    admin = moto.client("s3", "admin", REGION)
    if BUCKET not in [b["Name"] for b in admin.list_buckets()["Buckets"]]:
        create_bucket(admin, BUCKET, REGION)
