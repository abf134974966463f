# Copyright: mlops-lab maintainers
# Apache-2.0
"""The platform's connectivity checks, in one place, each ending in a verdict with a named cause.

A verdict is a dict: ``check`` (postgresql, nfs, s3), ``name``, ``target``, ``ok``, ``cause``
(``ok`` or one of CAUSES), ``summary`` (what happened, in words), ``fix`` (what to change) and
``detail`` (the raw error). Every check does the real thing: a PostgreSQL login, an NFS write
as the workload's uid, a signed S3 request; none ever prints a password or a key.

Who uses it:
* the ``s3_bucket`` and ``s3_access_probe`` modules of this collection import it;
* ``python3 connectivity.py SPEC.json`` (or ``-`` for stdin) runs the checks of a spec and
  prints one JSON verdict per line, exit 0 when all are ok: ``python -m runner diagnose`` runs
  it in a short-lived pod of each namespace that uses the VMs (the ``diagnose`` image has
  psycopg2, boto3 and libnfs-utils), ``python -m runner status`` on the control node.

A spec is ``{"pod_ip_env": "POD_IP", "node_ip_env": "HOST_IP", "checks": [...]}``; every field
of a check may be given as ``FIELD_env``, the name of an environment variable that holds it, so
that secrets reach the probe only through the environment (a pod's Secret references):

    {"kind": "postgresql", "name": "airflow", "uri_env": "AIRFLOW_DB_URI"}
    {"kind": "postgresql", "host": "10.0.0.5", "port": 5432, "database": "mlflow_db",
     "user_env": "DB_USER", "password_env": "DB_PASSWORD"}
    {"kind": "nfs", "server": "10.0.0.4", "path": "/srv/logs", "uid": 50000, "gid": 0}
    {"kind": "s3", "bucket": "b", "prefix": "mlflow", "region_env": "AWS_DEFAULT_REGION",
     "endpoint_url_env": "MLFLOW_S3_ENDPOINT_URL", "operations": ["put", "get", "delete"]}

Standard library, plus psycopg2 for PostgreSQL, boto3 for S3 and libnfs (``nfs-cp``, ``nfs-cat``,
``nfs-ls`` and libnfs.so for the clean-up) for NFS, each imported only by the check that needs it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from typing import Any
from urllib.parse import unquote, urlsplit

Verdict = dict[str, Any]

CAUSES = {
    "snat_missing": "pod traffic reaches the VM with the pod's own address (no SNAT on the node)",
    "pg_hba_cidr": "pg_hba.conf does not admit the address PostgreSQL sees",
    "pg_password": "the password is not the database user's",
    "pg_database_missing": "the database does not exist",
    "refused": "nothing accepts connections at the address and port",
    "unreachable": "no answer: packets are dropped on the way",
    "dns": "the host name does not resolve",
    "nfs_export_refused": "the NFS server refuses to export the path to this client",
    "nfs_ownership": "the export's directory does not let the workload's uid write (root_squash/ownership)",
    "s3_wrong_region": "the bucket lives in another region than the configured one",
    "s3_bad_key": "S3 does not accept the access key or the secret",
    "s3_permission": "the credentials lack an S3 permission",
    "s3_no_bucket": "the bucket does not exist",
    "config": "the check is missing a setting",
    "error": "an unexpected error",
}

SNAT_FIX = (
    "Apply the SNAT fix on every node (mlopslab_calico_fix: snat; python -m runner bootstrap --only network), "
    "so that pods reach the VMs as their node's address, which the VMs admit."
)


def verdict(check: str, name: str, target: str, cause: str, summary: str, fix: str = "", detail: str = "") -> Verdict:
    """One check's result; ``cause`` is "ok" or a key of CAUSES."""
    if cause != "ok" and cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r}")
    return {
        "check": check,
        "name": name,
        "target": target,
        "ok": cause == "ok",
        "cause": cause,
        "summary": summary,
        "fix": fix,
        "detail": detail,
    }


# --- PostgreSQL --------------------------------------------------------------------------------

_NO_HBA_ENTRY = re.compile(r'no pg_hba\.conf entry for host "([^"]+)"')


def parse_database_uri(uri: str) -> dict[str, Any]:
    """host, port, database, user, password of a SQLAlchemy/libpq URI (Airflow's `connection`)."""
    parts = urlsplit(uri)
    if not parts.scheme.startswith("postgres") or not parts.hostname:
        raise ValueError("not a postgresql:// URI with a host")
    return {
        "host": parts.hostname,
        "port": parts.port or 5432,
        "database": unquote(parts.path.lstrip("/")),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }


def explain_postgresql_error(
    message: str, host: str, port: int, database: str, user: str, pod_ip: str = "", node_ip: str = ""
) -> tuple[str, str, str]:
    """(cause, summary, fix) of a failed PostgreSQL login, from libpq's message."""
    target = f"{host}:{port}"
    seen = _NO_HBA_ENTRY.search(message)
    if seen:
        address = seen.group(1)
        if pod_ip and address == pod_ip:
            return (
                "snat_missing",
                f"PostgreSQL at {target} saw this pod's own address {address} (\"no pg_hba.conf entry for host "
                f'{address}"): pod traffic is not masqueraded on its node.',
                SNAT_FIX,
            )
        if node_ip and address == node_ip:
            return (
                "pg_hba_cidr",
                f"PostgreSQL at {target} saw the node address {address} (so SNAT works), but pg_hba.conf has no "
                f"entry for {address}, user {user}, database {database}.",
                f"Add the nodes' subnet to pg_hba for {user}@{database} (postgresql_server_hba_entries: "
                f"address mlopslab_lab_subnet, which must contain {address}); then reload PostgreSQL.",
            )
        return (
            "pg_hba_cidr",
            f"PostgreSQL at {target} saw the address {address} and pg_hba.conf has no entry for it "
            f"(user {user}, database {database}).",
            f"Admit {address} (or its subnet) for {user}@{database} in postgresql_server_hba_entries, "
            "or make the client reach PostgreSQL from an address that is admitted.",
        )
    if "password authentication failed" in message:
        return (
            "pg_password",
            f"PostgreSQL at {target} admits the address but refuses the password of {user}.",
            "Make the Secret's password and the database user's the same (vault_*_db_password, then "
            "python -m runner bootstrap --only hosts --only cluster).",
        )
    if "does not exist" in message and "database" in message:
        return (
            "pg_database_missing",
            f"PostgreSQL at {target} has no database {database}.",
            "Create it with the postgresql_server role (postgresql_server_databases).",
        )
    if "Connection refused" in message:
        return (
            "refused",
            f"Nothing accepts connections at {target}: PostgreSQL is not running or not listening there.",
            "Start PostgreSQL, and check listen_addresses and the port (postgresql_server_listen_addresses).",
        )
    if "timeout expired" in message or "timed out" in message or "No route to host" in message:
        return (
            "unreachable",
            f"No answer from {target}: packets are dropped on the way (the seed's symptom when a VM drops "
            "pod traffic), or a firewall filters the port.",
            SNAT_FIX + " If the node itself cannot connect either, open the VM's firewall.",
        )
    if "could not translate host name" in message:
        return ("dns", f"The host name {host} does not resolve.", "Use the VM's address or fix DNS.")
    return ("error", f"PostgreSQL login at {target} failed.", "Read the detail.")


def check_postgresql(
    host: str,
    port: int,
    database: str,
    user: str,
    password: str,
    *,
    name: str = "",
    pod_ip: str = "",
    node_ip: str = "",
    timeout: int = 5,
) -> Verdict:
    """Log in as ``user`` on ``database`` and ask who the server thinks we are."""
    target = f"{host}:{port}/{database}"
    label = name or f"{user}@{database}"
    try:
        import psycopg2
    except ImportError:
        return verdict("postgresql", label, target, "config", "psycopg2 is not installed here.", "pip install psycopg2")
    try:
        connection = psycopg2.connect(
            host=host,
            port=port,
            dbname=database,
            user=user,
            password=password,
            connect_timeout=timeout,
            sslmode="prefer",
            application_name="mlopslab-connectivity",
        )
    except psycopg2.Error as exc:
        message = " ".join(str(exc).split())
        cause, summary, fix = explain_postgresql_error(message, host, int(port), database, user, pod_ip, node_ip)
        return verdict("postgresql", label, target, cause, summary, fix, message)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT inet_client_addr()::text, current_user, current_database()")
            seen, current_user, current_db = cursor.fetchone()
    finally:
        connection.close()
    seen_as = f" (the server sees this client as {seen.split('/')[0]})" if seen else ""
    return verdict("postgresql", label, target, "ok", f"PostgreSQL accepts {current_user} on {current_db}{seen_as}.")


# --- NFS ---------------------------------------------------------------------------------------


def _nfs_url(server: str, path: str, uid: int, gid: int, version: int) -> str:
    return f"nfs://{server}/{path.strip('/')}?version={version}&uid={uid}&gid={gid}"


def _nfs_owner(server: str, path: str, uid: int, gid: int, version: int, timeout: int) -> str:
    """`drwxr-xr-x uid gid` of the export's directory, as the server shows it ("" if unreadable)."""
    parent, base = os.path.split(path.rstrip("/"))
    try:
        listing = subprocess.run(
            ["nfs-ls", _nfs_url(server, parent or "/", uid, gid, version)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[-1] == base:
            return f"{fields[0]} uid {fields[2]} gid {fields[3]}"
    return ""


def _nfs_unlink(server: str, path: str, name: str, uid: int, gid: int, version: int) -> str:
    """Remove the probe file with libnfs (nfs-cp has no rm); "" on success, else the error."""
    library = ctypes.util.find_library("nfs") or "libnfs.so.13"
    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        return f"libnfs not loadable: {exc}"
    lib.nfs_init_context.restype = ctypes.c_void_p
    lib.nfs_get_error.restype = ctypes.c_char_p
    lib.nfs_get_error.argtypes = [ctypes.c_void_p]
    for function in (lib.nfs_set_uid, lib.nfs_set_gid, lib.nfs_set_version):
        function.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.nfs_unlink.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]
    context = lib.nfs_init_context()
    if not context:
        return "nfs_init_context failed"
    try:
        lib.nfs_set_uid(context, uid)
        lib.nfs_set_gid(context, gid)
        lib.nfs_set_version(context, version)
        if lib.nfs_mount(context, server.encode(), ("/" + path.strip("/")).encode()) != 0:
            return (lib.nfs_get_error(context) or b"mount failed").decode(errors="replace")
        if lib.nfs_unlink(context, ("/" + name).encode()) != 0:
            return (lib.nfs_get_error(context) or b"unlink failed").decode(errors="replace")
        return ""
    finally:
        lib.nfs_destroy_context(context)


def check_nfs_write(
    server: str,
    path: str,
    *,
    uid: int = 50000,
    gid: int = 0,
    version: int = 4,
    name: str = "",
    timeout: int = 20,
) -> Verdict:
    """Create, read back and remove a file in the export as ``uid``:``gid`` (AUTH_SYS, like the pods)."""
    target = f"{server}:{path}"
    label = name or f"write as uid {uid}"
    if shutil.which("nfs-cp") is None:
        return verdict("nfs", label, target, "config", "nfs-cp is not installed here.", "Install libnfs-utils.")
    probe = f".mlopslab-probe-{secrets.token_hex(6)}"
    payload = f"mlops-lab connectivity probe {probe}\n"
    url = _nfs_url(server, f"{path.rstrip('/')}/{probe}", uid, gid, version)
    with tempfile.NamedTemporaryFile("w", suffix=".probe") as local:
        local.write(payload)
        local.flush()
        try:
            copied = subprocess.run(
                ["nfs-cp", local.name, url], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return verdict(
                "nfs", label, target, "unreachable",
                f"No answer from the NFS server {server} within {timeout} s.",
                SNAT_FIX + " Check the server's firewall for port 2049.",
            )  # fmt: skip
    message = " ".join((copied.stdout + copied.stderr).split())
    if copied.returncode != 0:
        if "Failed to mount" in message or "mount_cb" in message or "MNT3ERR" in message:
            if "NOENT" in message or "ACCES" in message or "PERM" in message:
                return verdict(
                    "nfs", label, target, "nfs_export_refused",
                    f"The NFS server {server} refused to export {path} to this client (the address it saw is "
                    "not in the export's client list, or the path is not exported).",
                    "Export the path to the nodes' subnet (nfs_server_exports clients: mlopslab_lab_subnet) and "
                    "make pods reach the server as their node's address (the SNAT fix).",
                    message,
                )  # fmt: skip
            return verdict(
                "nfs", label, target, "unreachable", f"Could not reach the NFS server {server}.",
                SNAT_FIX + " Check that the server listens on 2049.", message,
            )  # fmt: skip
        if "ACCES" in message or "PERM" in message:
            owner = _nfs_owner(server, path, uid, gid, version, timeout)
            shown = f" The directory shows as {owner} (root_squash shows root as 65534)." if owner else ""
            return verdict(
                "nfs", label, target, "nfs_ownership",
                f"The export admits this client, but uid {uid} may not create files in {path}.{shown}",
                f"On the NFS server: chown {uid}:{gid} {path} and chmod 775 (nfs_server_exports owner {uid}, "
                "group 0, mode 0775); keep root_squash: the pods write as uid 50000, not as root.",
                message,
            )  # fmt: skip
        return verdict("nfs", label, target, "error", f"Writing to {path} on {server} failed.", "", message)
    try:
        read = subprocess.run(["nfs-cat", url], capture_output=True, text=True, timeout=timeout, check=False)
        read_back = read.stdout
    except subprocess.TimeoutExpired:
        read_back = ""
    cleanup = _nfs_unlink(server, path, probe, uid, gid, version)
    if read_back != payload:
        return verdict(
            "nfs", label, target, "error", f"A file written to {path} as uid {uid} did not read back.",
            "", cleanup,
        )  # fmt: skip
    left = f" (the probe file {probe} could not be removed: {cleanup})" if cleanup else ""
    return verdict("nfs", label, target, "ok", f"uid {uid} can create, read and remove files in {path}{left}.")


# --- S3 ----------------------------------------------------------------------------------------

_S3_ACTIONS = {
    "put": ("PutObject", "object"),
    "get": ("GetObject", "object"),
    "delete": ("DeleteObject", "object"),
    "list": ("ListBucket", "bucket"),
    "head": ("ListBucket", "bucket"),
}


def s3_resource_arn(bucket: str, prefix: str, scope: str) -> str:
    """The ARN an IAM policy must name for an action on the bucket or on objects under the prefix."""
    if scope == "bucket":
        return f"arn:aws:s3:::{bucket}"
    prefix = prefix.strip("/")
    return f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"


def s3_region_fix(region: str) -> str:
    return (
        f"Set mlopslab_s3_region: {region} (and mlopslab_s3_endpoint_url: https://s3.{region}.amazonaws.com on "
        "AWS), then python -m runner bootstrap --only cluster so that the Secrets carry it."
    )


def explain_s3_error(exc: Exception, bucket: str, prefix: str, region: str, operation: str) -> tuple[str, str, str]:
    """(cause, summary, fix) of a failed S3 request made for ``operation`` (put, get, delete, list, head)."""
    action, scope = _S3_ACTIONS[operation]
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    actual = error.get("Region") or headers.get("x-amz-bucket-region", "")
    kind = type(exc).__name__
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301") or (
        actual and actual != region
    ):
        where = f"in {actual}" if actual else "in another region"
        return (
            "s3_wrong_region",
            f"Bucket {bucket} lives {where}, but the region configured is {region}.",
            s3_region_fix(actual or "THE-BUCKET-REGION"),
        )
    if code in ("InvalidAccessKeyId", "InvalidToken", "ExpiredToken"):
        return (
            "s3_bad_key",
            "S3 does not know the access key id (a wrong, deleted or inactive key).",
            "Put the IAM user's current access key in vault_aws_access_key_id (and its secret), then "
            "python -m runner bootstrap --only cluster.",
        )
    if code == "SignatureDoesNotMatch":
        return (
            "s3_bad_key",
            "S3 knows the access key id, but the secret access key does not match it.",
            "Put the key's secret in vault_aws_secret_access_key, then python -m runner bootstrap --only cluster.",
        )
    if code in ("NoSuchBucket", "404") and operation in ("head", "list", "put"):
        return ("s3_no_bucket", f"Bucket {bucket} does not exist.", "Create it: the s3_bucket role (hosts stage).")
    if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
        arn = s3_resource_arn(bucket, prefix, scope)
        return (
            "s3_permission",
            f"The credentials are valid but may not {operation}: missing s3:{action} on {arn}.",
            f"Allow s3:{action} on {arn} in the IAM policy of the workload's user.",
        )
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return (
            "unreachable",
            f"Could not reach the S3 endpoint: {exc}.",
            "Check mlopslab_s3_endpoint_url and the nodes' route to it (an egress proxy, a firewall).",
        )
    return ("error", f"S3 {operation} failed ({code or kind}).", "Read the detail.")


def s3_client(region: str, endpoint_url: str = "", access_key_id: str = "", secret_access_key: str = "") -> Any:
    """A boto3 S3 client with short timeouts; credentials default to boto3's own chain."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        config=config,
    )


def bucket_region(client: Any, bucket: str) -> tuple[str, Exception | None]:
    """The region S3 reports for the bucket, and HeadBucket's error if any.

    HeadBucket's x-amz-bucket-region header first (AWS sends it with a 200, and with the 301 of a
    wrong regional endpoint); without it GetBucketLocation, when the credentials may call it.
    """
    headers: dict[str, str] = {}
    error: Exception | None = None
    try:
        headers = client.head_bucket(Bucket=bucket)["ResponseMetadata"].get("HTTPHeaders", {})
    except Exception as exc:
        error = exc
        headers = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
    if headers.get("x-amz-bucket-region"):
        return headers["x-amz-bucket-region"], error
    if error is not None and str((getattr(error, "response", None) or {}).get("Error", {}).get("Code")) == "404":
        return "", error
    try:
        location = client.get_bucket_location(Bucket=bucket).get("LocationConstraint")
    except Exception:
        return "", error
    # S3's legacy answers: no constraint is us-east-1, "EU" is eu-west-1
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, str(location)), error


def check_s3(
    bucket: str,
    region: str,
    prefix: str = "",
    *,
    endpoint_url: str = "",
    access_key_id: str = "",
    secret_access_key: str = "",
    operations: tuple[str, ...] | list[str] = ("put", "get", "delete"),
    name: str = "",
    client: Any = None,
) -> Verdict:
    """Signed requests as the workload: the bucket's region, then each operation on a probe object."""
    target = f"s3://{bucket}/{prefix.strip('/')}" if prefix.strip("/") else f"s3://{bucket}"
    label = name or "+".join(operations)
    try:
        s3 = client or s3_client(region, endpoint_url, access_key_id, secret_access_key)
    except ImportError:
        return verdict("s3", label, target, "config", "boto3 is not installed here.", "pip install boto3")
    actual, head_error = bucket_region(s3, bucket)
    if actual and actual != region:
        return verdict(
            "s3", label, target, "s3_wrong_region",
            f"Bucket {bucket} lives in {actual}, but the region configured is {region}.",
            s3_region_fix(actual),
        )  # fmt: skip
    if head_error is not None:
        cause, _, _ = explain_s3_error(head_error, bucket, prefix, region, "head")
        if cause in ("s3_no_bucket", "unreachable", "s3_wrong_region"):
            _, summary, fix = explain_s3_error(head_error, bucket, prefix, region, "head")
            return verdict("s3", label, target, cause, summary, fix, str(head_error))
        # a 403 on HEAD has no body: the operations below tell a bad key from a missing permission
    key = "/".join(part for part in (prefix.strip("/"), f".mlopslab-probe-{secrets.token_hex(6)}") if part)
    body = f"mlops-lab connectivity probe {key}\n".encode()
    done: list[str] = []
    for operation in operations:
        try:
            if operation == "put":
                s3.put_object(Bucket=bucket, Key=key, Body=body)
            elif operation == "get":
                got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                if got != body:
                    return verdict("s3", label, target, "error", f"s3://{bucket}/{key} did not read back.")
            elif operation == "delete":
                s3.delete_object(Bucket=bucket, Key=key)
            elif operation == "list":
                s3.list_objects_v2(Bucket=bucket, Prefix=prefix.strip("/"), MaxKeys=1)
            else:
                return verdict("s3", label, target, "config", f"unknown S3 operation {operation!r}")
        except Exception as exc:
            if type(exc).__module__.split(".")[0] not in ("botocore", "boto3"):
                raise
            cause, summary, fix = explain_s3_error(exc, bucket, prefix, region, operation)
            if done and "put" in done and "delete" not in done and operation != "delete":
                try:
                    s3.delete_object(Bucket=bucket, Key=key)
                except Exception as cleanup_error:
                    summary += f" (the probe object {key} is left: {cleanup_error})"
            return verdict("s3", label, target, cause, summary, fix, f"{operation}: {exc}")
        done.append(operation)
    words = {"put": "put", "get": "get", "delete": "delete", "list": "list"}
    return verdict(
        "s3", label, target, "ok",
        f"The credentials can {', '.join(words[o] for o in operations)} in {target} (region {region}).",
    )  # fmt: skip


# --- a spec of checks (the diagnose pod, runner status) -----------------------------------------


def _field(check: dict[str, Any], key: str, default: Any = "") -> Any:
    """A check's field, given directly or through FIELD_env (the name of an environment variable)."""
    if key in check:
        return check[key]
    env = check.get(f"{key}_env")
    if env:
        return os.environ.get(str(env), default)
    return default


def run_check(check: dict[str, Any], pod_ip: str = "", node_ip: str = "") -> Verdict:
    kind = check.get("kind", "")
    name = str(check.get("name", ""))
    try:
        if kind == "postgresql":
            uri = _field(check, "uri")
            fields = parse_database_uri(uri) if uri else {}
            for key, default in (("host", ""), ("port", 5432), ("database", ""), ("user", ""), ("password", "")):
                if not fields.get(key):
                    fields[key] = _field(check, key, default)
            missing = [key for key in ("host", "database", "user") if not fields[key]]
            if missing:
                return verdict("postgresql", name, "?", "config", f"no {', '.join(missing)} given to the check")
            return check_postgresql(
                str(fields["host"]), int(fields["port"]), str(fields["database"]), str(fields["user"]),
                str(fields["password"]), name=name, pod_ip=pod_ip, node_ip=node_ip,
                timeout=int(check.get("timeout", 5)),
            )  # fmt: skip
        if kind == "nfs":
            return check_nfs_write(
                str(_field(check, "server")), str(_field(check, "path")), uid=int(check.get("uid", 50000)),
                gid=int(check.get("gid", 0)), version=int(check.get("version", 4)), name=name,
                timeout=int(check.get("timeout", 20)),
            )  # fmt: skip
        if kind == "s3":
            return check_s3(
                str(_field(check, "bucket")), str(_field(check, "region", "us-east-1")),
                str(_field(check, "prefix")), endpoint_url=str(_field(check, "endpoint_url")),
                access_key_id=str(_field(check, "access_key_id")),
                secret_access_key=str(_field(check, "secret_access_key")),
                operations=list(check.get("operations", ["put", "get", "delete"])), name=name,
            )  # fmt: skip
    except ValueError as exc:
        return verdict(str(kind or "?"), name, "?", "config", str(exc))
    return verdict(str(kind or "?"), name, "?", "config", f"unknown check kind {kind!r}")


def _nfs_refusal_from_addresses(verdicts: list[Verdict]) -> None:
    """An NFS refusal does not say which address the server saw; PostgreSQL's verdicts on the
    same network do. When PostgreSQL saw the pod's own address, the refusal has the same cause."""
    if any(v["check"] == "postgresql" and v["cause"] == "snat_missing" for v in verdicts):
        for v in verdicts:
            if v["check"] == "nfs" and v["cause"] == "nfs_export_refused":
                v["cause"] = "snat_missing"
                v["summary"] += " PostgreSQL saw this pod's own address on the same network: SNAT is missing."
                v["fix"] = SNAT_FIX


def run_spec(spec: dict[str, Any]) -> list[Verdict]:
    pod_ip = os.environ.get(str(spec.get("pod_ip_env", "")), "") if spec.get("pod_ip_env") else ""
    node_ip = os.environ.get(str(spec.get("node_ip_env", "")), "") if spec.get("node_ip_env") else ""
    verdicts = [run_check(check, pod_ip, node_ip) for check in spec.get("checks", [])]
    _nfs_refusal_from_addresses(verdicts)
    return verdicts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: connectivity.py SPEC.json|-", file=sys.stderr)
        return 2
    if argv[1] == "-":
        text = sys.stdin.read()
    else:
        with open(argv[1], encoding="utf-8") as handle:
            text = handle.read()
    verdicts = run_spec(json.loads(text))
    for item in verdicts:
        print(json.dumps(item, sort_keys=False), flush=True)
    return 0 if all(item["ok"] for item in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
