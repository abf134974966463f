"""A real S3 (and IAM) endpoint for tests: ``moto_server`` from the dev extra, with IAM enforced.

    with running_moto(port, host="127.0.0.1", netns=None, users={...}) as moto:
        moto.endpoint            # http://HOST:PORT
        moto.keys["workload"]    # {"AccessKeyId": ..., "SecretAccessKey": ...}

moto authenticates and authorizes requests once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have
been served (see moto's IAM docs): the fixture makes exactly that many IAM calls to create one
user per entry of ``users`` with its inline policy and an access key, so that from then on every
request is checked against those policies, with the resource ARNs AWS uses. Keys are generated
by moto at test time; nothing here is a real credential. Everything lives in memory and is gone
when the server stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def s3_policy(bucket: str, prefix: str, object_actions: list[str], bucket_actions: list[str]) -> dict[str, Any]:
    """An IAM policy granting object actions under the prefix and bucket actions on the bucket."""
    objects = f"arn:aws:s3:::{bucket}/{prefix.strip('/')}/*" if prefix.strip("/") else f"arn:aws:s3:::{bucket}/*"
    statements = []
    if object_actions:
        statements.append({"Effect": "Allow", "Action": [f"s3:{a}" for a in object_actions], "Resource": objects})
    if bucket_actions:
        statements.append(
            {"Effect": "Allow", "Action": [f"s3:{a}" for a in bucket_actions], "Resource": f"arn:aws:s3:::{bucket}"}
        )
    return {"Version": "2012-10-17", "Statement": statements}


def create_bucket(s3: Any, bucket: str, region: str) -> None:
    configuration = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **configuration)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Moto:
    endpoint: str
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    log: Path | None = None

    def client(self, service: str, user: str, region: str = "us-east-1") -> Any:
        import boto3

        key = self.keys[user]
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )


def _wait(endpoint: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited:\n{log.read_text(errors='replace')}")
        try:
            # moto's own dashboard path: not an AWS action, so it does not use up the no-auth count
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):  # noqa: S310 (test server)
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"moto_server at {endpoint} did not answer:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_moto(
    port: int,
    host: str = "127.0.0.1",
    *,
    netns: str | None = None,
    users: dict[str, dict[str, Any]] | None = None,
    buckets: dict[str, str] | None = None,
) -> Iterator[Moto]:
    """moto_server on HOST:PORT (inside ``netns`` when given) with one IAM user per entry of ``users``
    (plus ``admin``, allowed everything) and ``buckets`` ({name: region}) created by admin."""
    import boto3

    users = {"admin": ADMIN_POLICY, **(users or {})}
    endpoint = f"http://{host}:{port}"
    log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(3 * len(users))}
    prefix = ["ip", "netns", "exec", netns] if netns else []
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*prefix, str(MOTO_SERVER), "-H", host, "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        if netns:
            # the test process is outside the namespace: talk to moto through it
            yield from _inside(netns, endpoint, proc, log, users, buckets or {})
            return
        _wait(endpoint, proc, log)
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
        )  # fmt: skip
        moto = Moto(endpoint=endpoint, log=log)
        for user, policy in users.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="test", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            moto.keys[user] = {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}
        for bucket, region in (buckets or {}).items():
            create_bucket(moto.client("s3", "admin", region), bucket, region)
        yield moto
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        log.unlink(missing_ok=True)


_SETUP_IN_NS = """
import json, sys, time, urllib.request, boto3
endpoint, users, buckets = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
for _ in range(200):
    try:
        urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
        break
    except OSError:
        time.sleep(0.3)
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
keys = {}
for user, policy in users.items():
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="test", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}
for bucket, region in buckets.items():
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                      aws_access_key_id=keys["admin"]["AccessKeyId"],
                      aws_secret_access_key=keys["admin"]["SecretAccessKey"])
    extra = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **extra)
print(json.dumps(keys))
"""


def _inside(
    netns: str,
    endpoint: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    users: dict[str, dict[str, Any]],
    buckets: dict[str, str],
) -> Iterator[Moto]:
    setup = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _SETUP_IN_NS, endpoint, json.dumps(users),
         json.dumps(buckets)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if setup.returncode != 0 or proc.poll() is not None:
        raise RuntimeError(f"moto setup failed: {setup.stderr}\n{log.read_text(errors='replace')}")
    yield Moto(endpoint=endpoint, keys=json.loads(setup.stdout), log=log)
