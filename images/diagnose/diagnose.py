#!/opt/venv/bin/python
"""mlopslab-diagnose: check PostgreSQL, NFS and S3 from where it runs (a short-lived pod).

Pods reach the lab's VMs only through the network fix (SNAT or the IPPool), so a check from a
node or the control node proves little: this runs inside the cluster and reports, one JSON object
per line, what a pod sees. Settings come from the environment (the Secrets the platform already
has can be mounted as they are):

  route      ``ip route get`` for every host below: the pod's source address and next hop
  tcp        DIAGNOSE_TCP="host:port,host:port"                           (TCP connect)
  postgres   PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE (libpq variables)  (login, SELECT; reports
             the client address the server sees: a node address with SNAT, the pod's without)
  nfs        DIAGNOSE_NFS_URL=nfs://host/export?version=4&uid=50000&gid=0  (list, write, read back
             DIAGNOSE_NFS_FILE, default .mlopslab-diagnose, with the user-space client libnfs)
  s3         DIAGNOSE_S3_BUCKET, AWS_* credentials, AWS_ENDPOINT_URL_S3 or MLFLOW_S3_ENDPOINT_URL
             (head the bucket, put, get and delete one object)

Usage: mlopslab-diagnose [CHECK ...]; without arguments every check whose settings are present.
Exit status: 0 when every check passed, 1 when one failed, 2 when there is nothing to check.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TIMEOUT = float(os.environ.get("DIAGNOSE_TIMEOUT", "10"))


def _tcp_targets() -> list[tuple[str, int]]:
    targets = []
    for item in filter(None, (part.strip() for part in os.environ.get("DIAGNOSE_TCP", "").split(","))):
        host, _, port = item.rpartition(":")
        targets.append((host.strip("[]"), int(port)))
    return targets


def _hosts() -> list[str]:
    hosts = [host for host, _ in _tcp_targets()]
    if os.environ.get("PGHOST"):
        hosts.append(os.environ["PGHOST"])
    if os.environ.get("DIAGNOSE_NFS_URL"):
        hosts.append(urlsplit(os.environ["DIAGNOSE_NFS_URL"]).hostname or "")
    return sorted({host for host in hosts if host})


def check_route() -> dict[str, Any]:
    routes = {}
    for host in _hosts():
        address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
        out = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True, check=True)
        route = json.loads(out.stdout)[0]
        routes[host] = {key: route.get(key) for key in ("dst", "gateway", "dev", "prefsrc")}
    return {"routes": routes}


def check_tcp() -> dict[str, Any]:
    reached = {}
    for host, port in _tcp_targets():
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            reached[f"{host}:{port}"] = sock.getsockname()[0]
    return {"connected_from": reached}


def check_postgres() -> dict[str, Any]:
    import psycopg2

    with psycopg2.connect(connect_timeout=int(TIMEOUT)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_database(), host(inet_client_addr()), version()")
        user, database, client_addr, version = cur.fetchone()
    conn.close()
    return {"user": user, "database": database, "server_sees_client": client_addr, "server": version}


def check_nfs() -> dict[str, Any]:
    url = os.environ["DIAGNOSE_NFS_URL"]
    parts = urlsplit(url)
    name = os.environ.get("DIAGNOSE_NFS_FILE", ".mlopslab-diagnose")
    file_url = parts._replace(path=parts.path.rstrip("/") + "/" + name).geturl()
    listing = subprocess.run(["nfs-ls", url], capture_output=True, text=True, timeout=TIMEOUT)
    if listing.returncode != 0:
        raise RuntimeError(f"nfs-ls {url}: {(listing.stderr or listing.stdout).strip()}")
    token = f"mlopslab-diagnose {uuid.uuid4()}\n"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, "probe")
        local.write_text(token)
        written = subprocess.run(["nfs-cp", str(local), file_url], capture_output=True, text=True, timeout=TIMEOUT)
        if written.returncode != 0:
            raise RuntimeError(f"nfs-cp to {file_url}: {(written.stderr or written.stdout).strip()}")
    read = subprocess.run(["nfs-cat", file_url], capture_output=True, text=True, timeout=TIMEOUT)
    if read.returncode != 0 or read.stdout != token:
        raise RuntimeError(f"nfs-cat {file_url} did not return what was written: {read.stderr.strip()}")
    return {"listed_entries": len(listing.stdout.splitlines()), "wrote_and_read": file_url}


def check_s3() -> dict[str, Any]:
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    bucket = os.environ["DIAGNOSE_S3_BUCKET"]
    client = boto3.client("s3", endpoint_url=endpoint)
    client.head_bucket(Bucket=bucket)
    key = f".mlopslab-diagnose/{uuid.uuid4()}"
    client.put_object(Bucket=bucket, Key=key, Body=b"mlopslab-diagnose")
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=key)
    if body != b"mlopslab-diagnose":
        raise RuntimeError(f"s3://{bucket}/{key} did not return what was written")
    return {"bucket": bucket, "endpoint": endpoint or "AWS", "put_get_delete": key}


CHECKS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[], bool]]] = {
    "route": (check_route, lambda: bool(_hosts())),
    "tcp": (check_tcp, lambda: bool(os.environ.get("DIAGNOSE_TCP"))),
    "postgres": (check_postgres, lambda: bool(os.environ.get("PGHOST"))),
    "nfs": (check_nfs, lambda: bool(os.environ.get("DIAGNOSE_NFS_URL"))),
    "s3": (check_s3, lambda: bool(os.environ.get("DIAGNOSE_S3_BUCKET"))),
}


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    unknown = [name for name in argv if name not in CHECKS]
    if unknown:
        print(f"unknown check(s) {', '.join(unknown)}: choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    selected = argv or [name for name, (_, configured) in CHECKS.items() if configured()]
    if not selected:
        print("nothing to check: set DIAGNOSE_TCP, PGHOST, DIAGNOSE_NFS_URL or DIAGNOSE_S3_BUCKET", file=sys.stderr)
        return 2
    failed = False
    for name in selected:
        started = time.monotonic()
        try:
            result: dict[str, Any] = {"check": name, "ok": True, **CHECKS[name][0]()}
        except Exception as error:
            failed = True
            result = {"check": name, "ok": False, "error": f"{type(error).__name__}: {error}".strip()}
        result["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
