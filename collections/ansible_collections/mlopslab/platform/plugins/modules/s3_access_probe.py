#!/usr/bin/python
# Copyright: mlops-lab maintainers
# Apache-2.0
"""Prove that credentials can put, get and delete an object under a prefix; name what is missing."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mlopslab.platform.plugins.module_utils.connectivity import check_s3

DOCUMENTATION = r"""
module: s3_access_probe
short_description: Prove S3 credentials can use a prefix of a bucket, and name the missing permission
description:
  - Checks the bucket's region (HeadBucket), then runs each of O(operations) on a probe object under
    O(prefix) with the given credentials; the object is deleted afterwards, so nothing is left behind
    and the module reports no change (it also runs in check mode).
  - The module does not fail when access is refused; RV(verdict.ok) is false and RV(msg) names the
    cause, such as C(missing s3:PutObject on arn:aws:s3:::BUCKET/PREFIX/*), a wrong region, or a key
    S3 does not accept. Keys never appear in the result.
options:
  bucket:
    description: Bucket name.
    type: str
    required: true
  region:
    description: Region the workload is configured with.
    type: str
    required: true
  prefix:
    description: Key prefix the workload writes under (empty for the bucket root).
    type: str
    default: ""
  endpoint_url:
    description: S3 endpoint; empty for AWS.
    type: str
    default: ""
  access_key_id:
    description: The workload's access key id.
    type: str
    required: true
  secret_access_key:
    description: The workload's secret access key.
    type: str
    required: true
  operations:
    description: What to prove, in order.
    type: list
    elements: str
    choices: [put, get, delete, list]
    default: [put, get, delete]
author: mlops-lab maintainers
"""

EXAMPLES = r"""
- name: Prove the workload credentials
  mlopslab.platform.s3_access_probe:
    bucket: mlflow-artifacts-lab
    region: ap-northeast-2
    prefix: mlflow
    access_key_id: "{{ aws_access_key_id }}"
    secret_access_key: "{{ aws_secret_access_key }}"
  no_log: true
"""

RETURN = r"""
verdict:
  description: The check's verdict (check, name, target, ok, cause, summary, fix, detail).
  returned: always
  type: dict
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "bucket": {"type": "str", "required": True},
            "region": {"type": "str", "required": True},
            "prefix": {"type": "str", "default": ""},
            "endpoint_url": {"type": "str", "default": ""},
            "access_key_id": {"type": "str", "required": True, "no_log": True},
            "secret_access_key": {"type": "str", "required": True, "no_log": True},
            "operations": {
                "type": "list",
                "elements": "str",
                "default": ["put", "get", "delete"],
                "choices": ["put", "get", "delete", "list"],
            },
        },
        supports_check_mode=True,
    )
    params = module.params
    result = check_s3(
        params["bucket"],
        params["region"],
        params["prefix"],
        endpoint_url=params["endpoint_url"],
        access_key_id=params["access_key_id"],
        secret_access_key=params["secret_access_key"],
        operations=params["operations"],
        name="workload credentials",
    )
    # A refusal is the answer, not a module failure: the caller decides (and shows the words,
    # which never hold a key, even when its task hides the rest with no_log).
    module.exit_json(changed=False, verdict=result, msg=f"{result['summary']} {result['fix']}".strip())


if __name__ == "__main__":
    main()
