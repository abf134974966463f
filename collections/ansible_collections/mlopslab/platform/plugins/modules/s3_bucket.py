#!/usr/bin/python
# Copyright: mlops-lab maintainers
# Apache-2.0
"""Ensure an S3 bucket exists in its region with public access blocked and default encryption.

amazon.aws is not part of the ansible 12 bundle this project pins (and Galaxy is unreachable
from its machines), so this small module does the few calls the artifact store needs with boto3,
a project dependency. It reads each setting first and changes only what differs, so a second run
reports no change and check mode reports what would change without changing it.
"""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mlopslab.platform.plugins.module_utils.connectivity import (
    bucket_region,
    explain_s3_error,
    s3_region_fix,
)

DOCUMENTATION = r"""
module: s3_bucket
short_description: Ensure an S3 bucket, its region, public access block, encryption and versioning
description:
  - Creates the bucket in O(region) when it does not exist, and fails when it exists in another region.
  - Blocks all public access, sets default encryption and, when asked, enables or suspends versioning;
    every setting is read first and changed only when it differs.
  - Works against AWS (no O(endpoint_url)) and against S3-compatible servers that implement these APIs.
options:
  name:
    description: Bucket name.
    type: str
    required: true
  region:
    description: Region the bucket must live in.
    type: str
    required: true
  endpoint_url:
    description: S3 endpoint; empty for AWS's endpoint of the region.
    type: str
    default: ""
  access_key_id:
    description: Access key id; empty for boto3's credential chain (O(profile), the environment).
    type: str
    default: ""
  secret_access_key:
    description: Secret of O(access_key_id).
    type: str
    default: ""
  profile:
    description: A named profile of the AWS shared credentials file; wins over the keys.
    type: str
    default: ""
  create:
    description: Create the bucket when missing (false fails instead).
    type: bool
    default: true
  block_public_access:
    description: Turn on all four public access block settings.
    type: bool
    default: true
  encryption:
    description: Default encryption.
    type: str
    choices: [AES256, "aws:kms"]
    default: AES256
  kms_key_id:
    description: KMS key for O(encryption=aws:kms); empty for the AWS managed key.
    type: str
    default: ""
  versioning:
    description: C(enabled) or C(suspended); empty leaves versioning as it is.
    type: str
    choices: ["", enabled, suspended]
    default: ""
author: mlops-lab maintainers
"""

EXAMPLES = r"""
- name: Ensure the artifact bucket
  mlopslab.platform.s3_bucket:
    name: mlflow-artifacts-lab
    region: ap-northeast-2
    access_key_id: "{{ aws_access_key_id }}"
    secret_access_key: "{{ aws_secret_access_key }}"
  no_log: true
"""

RETURN = r"""
bucket:
  description: The bucket name.
  returned: always
  type: str
region:
  description: The region it lives in.
  returned: success
  type: str
created:
  description: Whether the bucket was (or in check mode would be) created.
  returned: success
  type: bool
changes:
  description: The settings that were (or would be) changed, in words.
  returned: success
  type: list
  elements: str
"""

PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


# The IAM action behind each S3 API call this module makes (for "which permission is missing").
IAM_ACTIONS = {
    "CreateBucket": "s3:CreateBucket",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "PutBucketVersioning": "s3:PutBucketVersioning",
}


def _code(exc: Exception) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def failure_message(exc: Exception, bucket: str, region: str) -> str:
    """Words for a failed bucket-management call: the missing permission when S3 says AccessDenied."""
    operation = str(getattr(exc, "operation_name", ""))
    if _code(exc) in ("AccessDenied", "403") and operation in IAM_ACTIONS:
        return (
            f"{operation} on bucket {bucket} was denied: missing {IAM_ACTIONS[operation]} on arn:aws:s3:::{bucket}. "
            "Managing the bucket needs more than the workload's permissions: give s3_bucket_admin_profile a "
            "profile that has them, or set s3_bucket_manage: false and create the bucket yourself."
        )
    _, summary, fix = explain_s3_error(exc, bucket, "", region, "head")
    return f"{summary} {fix} ({exc})"


def _client(params: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"})
    if params["profile"]:
        session = boto3.session.Session(profile_name=params["profile"], region_name=params["region"])
    else:
        session = boto3.session.Session(
            aws_access_key_id=params["access_key_id"] or None,
            aws_secret_access_key=params["secret_access_key"] or None,
            region_name=params["region"],
        )
    return session.client("s3", endpoint_url=params["endpoint_url"] or None, config=config)


def _current_public_access_block(s3: Any, bucket: str) -> dict[str, bool]:
    try:
        found: dict[str, bool] = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        return found
    except Exception as exc:
        if _code(exc) == "NoSuchPublicAccessBlockConfiguration":
            return {}
        raise


def _current_encryption(s3: Any, bucket: str) -> tuple[str, str]:
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except Exception as exc:
        if _code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
            return "", ""
        raise
    default = (rules[0] if rules else {}).get("ApplyServerSideEncryptionByDefault", {})
    return default.get("SSEAlgorithm", ""), default.get("KMSMasterKeyID", "")


def ensure(module: AnsibleModule, s3: Any) -> dict[str, Any]:
    params = module.params
    bucket, region = params["name"], params["region"]
    changes: list[str] = []
    actual, error = bucket_region(s3, bucket)
    code = _code(error) if error is not None else ""
    if actual and actual != region:
        module.fail_json(
            msg=f"Bucket {bucket} exists in {actual}, not in {region}. Either keep it there ({s3_region_fix(actual)}) "
            f"or choose another s3_bucket_name for {region}.",
            bucket=bucket,
            region=actual,
        )
    created = False
    if error is not None and code in ("404", "NoSuchBucket", "NotFound"):
        if not params["create"]:
            module.fail_json(msg=f"Bucket {bucket} does not exist and s3_bucket_manage is false.", bucket=bucket)
        created = True
        changes.append(f"create bucket {bucket} in {region}")
        if not module.check_mode:
            configuration = (
                {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            )
            try:
                s3.create_bucket(Bucket=bucket, **configuration)
            except Exception as exc:
                if _code(exc) == "BucketAlreadyExists":
                    module.fail_json(
                        msg=f"The bucket name {bucket} is taken by another AWS account (names are global): "
                        "choose another mlopslab_s3_bucket.",
                        bucket=bucket,
                    )
                raise
    elif error is not None:
        if code in ("403", "AccessDenied"):
            module.fail_json(
                msg=f"Bucket {bucket} exists but these credentials may not read it (HTTP 403): it belongs to another "
                "account, or they lack s3:ListBucket on arn:aws:s3:::" + bucket + ".",
                bucket=bucket,
            )
        raise error
    if created and module.check_mode:
        # Nothing to read yet: every setting below would be applied to the new bucket.
        if params["block_public_access"]:
            changes.append("block all public access")
        changes.append(f"default encryption {params['encryption']}")
        if params["versioning"]:
            changes.append(f"versioning {params['versioning']}")
        return {"changed": True, "bucket": bucket, "region": region, "created": True, "changes": changes}

    if params["block_public_access"] and _current_public_access_block(s3, bucket) != PUBLIC_ACCESS_BLOCK:
        changes.append("block all public access")
        if not module.check_mode:
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)

    algorithm, key_id = _current_encryption(s3, bucket)
    wanted_key = params["kms_key_id"] if params["encryption"] == "aws:kms" else ""
    if algorithm != params["encryption"] or (wanted_key and key_id != wanted_key):
        changes.append(f"default encryption {params['encryption']} (was {algorithm or 'none'})")
        if not module.check_mode:
            default: dict[str, str] = {"SSEAlgorithm": params["encryption"]}
            if wanted_key:
                default["KMSMasterKeyID"] = wanted_key
            s3.put_bucket_encryption(
                Bucket=bucket,
                ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": default}]},
            )

    if params["versioning"]:
        status = s3.get_bucket_versioning(Bucket=bucket).get("Status", "")
        wanted = params["versioning"].capitalize()
        # A bucket that never had versioning has no status; "suspended" asks for nothing there.
        if status != wanted and not (wanted == "Suspended" and not status):
            changes.append(f"versioning {params['versioning']} (was {status.lower() or 'never enabled'})")
            if not module.check_mode:
                s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": wanted})

    return {"changed": bool(changes), "bucket": bucket, "region": region, "created": created, "changes": changes}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "region": {"type": "str", "required": True},
            "endpoint_url": {"type": "str", "default": ""},
            "access_key_id": {"type": "str", "default": "", "no_log": True},
            "secret_access_key": {"type": "str", "default": "", "no_log": True},
            "profile": {"type": "str", "default": ""},
            "create": {"type": "bool", "default": True},
            "block_public_access": {"type": "bool", "default": True},
            "encryption": {"type": "str", "default": "AES256", "choices": ["AES256", "aws:kms"]},
            "kms_key_id": {"type": "str", "default": ""},
            "versioning": {"type": "str", "default": "", "choices": ["", "enabled", "suspended"]},
        },
        supports_check_mode=True,
    )
    try:
        s3 = _client(module.params)
    except ImportError:
        module.fail_json(msg="boto3 is required on the host that runs mlopslab.platform.s3_bucket")
    except Exception as exc:
        module.fail_json(msg=f"Cannot build an S3 client: {exc}")
    try:
        result = ensure(module, s3)
    except Exception as exc:
        module.fail_json(
            msg=failure_message(exc, module.params["name"], module.params["region"]), bucket=module.params["name"]
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
