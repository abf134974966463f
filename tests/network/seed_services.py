"""The lab's other stores on the seed network: an NFS VM and an S3 endpoint; the ``seed_services`` fixture.

On top of ``seed_network`` (pod -> node -> db namespaces with PostgreSQL), the db namespace gets
two more addresses of the lab subnet and serves

* NFS at NFS_ADDR: nfs-ganesha (user space; this kernel has no NFS server) exporting Airflow's log
  directory to the node subnet only, rw, root_squash, the directory owned by 50000:0 mode 775, as
  the nfs_server role sets it up (attributes are not cached, so a chown on the server shows at
  once, as with the kernel's server);
* S3 at S3_ADDR: moto_server with IAM enforced (tests/support/moto_s3.py), a bucket in
  BUCKET_REGION and a workload user allowed put/get/delete under the prefix.

Like the db, both see pod traffic with the pod's own address unless the node masquerades it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.network.seed_network import LAB_SUBNET, NFS_ADDR, SeedNetwork, in_ns
from tests.support.moto_s3 import running_moto, s3_policy

S3_ADDR = "198.51.100.150"
S3_PORT = 5000
BUCKET = "mlopslab-artifacts-lab"
BUCKET_REGION = "eu-central-1"
PREFIX = "mlflow"
GANESHA = Path("/usr/bin/ganesha.nfsd")


@dataclass
class SeedServices:
    net: SeedNetwork
    export: Path
    s3_endpoint: str
    s3_key: dict[str, str]

    def own_logs_dir(self, uid: int, gid: int, mode: int) -> None:
        os.chown(self.export, uid, gid)
        self.export.chmod(mode)


def _ganesha_conf(export: Path, work: Path) -> str:
    return f"""
NFS_CORE_PARAM {{ Protocols = 4; Enable_NLM = false; Enable_RQUOTA = false; }}
NFSV4 {{ Grace_Period = 10; Lease_Lifetime = 10; Graceless = true; RecoveryRoot = "{work / "recovery"}"; }}
EXPORT {{
    Export_Id = 1; Path = "{export}"; Pseudo = "{export}"; Protocols = 4; Transports = TCP; SecType = sys;
    Access_Type = None; Squash = root_squash; Anonymous_Uid = 65534; Anonymous_Gid = 65534;
    Attr_Expiration_Time = 0;
    CLIENT {{ Clients = {LAB_SUBNET}; Access_Type = RW; Squash = root_squash; }}
    FSAL {{ Name = VFS; }}
}}
"""


@pytest.fixture(scope="module")
def seed_services(seed_network: SeedNetwork) -> Iterator[SeedServices]:
    net = seed_network
    if not GANESHA.exists() or shutil.which("nfs-cp") is None:
        pytest.fail("nfs-ganesha or libnfs-utils is missing: scripts/setup-host.sh installs them")
    for address in (NFS_ADDR, S3_ADDR):
        in_ns(net.db, "ip", "addr", "add", f"{address}/24", "dev", net.db_if)
    work = Path(tempfile.mkdtemp(prefix="mlcal-nfs-"))
    work.chmod(0o755)
    export = work / "mnt" / "nfs_share" / "mlops" / "airflow" / "logs"
    export.mkdir(parents=True)
    for parent in [export, *export.parents]:
        if parent == work.parent:
            break
        parent.chmod(0o755)
    os.chown(export, 50000, 0)
    export.chmod(0o775)
    (work / "recovery").mkdir()
    (work / "ganesha.conf").write_text(_ganesha_conf(export, work))
    log = work / "ganesha.log"
    ganesha = subprocess.Popen(
        ["ip", "netns", "exec", net.db, str(GANESHA), "-F", "-f", str(work / "ganesha.conf"), "-L", str(log),
         "-p", str(work / "ganesha.pid"), "-N", "NIV_EVENT"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "NFS SERVER INITIALIZED" not in (log.read_text(errors="replace") if log.exists() else ""):
            if ganesha.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nfs-ganesha did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.3)
        # the least-privilege policy of the s3_bucket README (GetBucketLocation lets the probe name a wrong region)
        objects, bucket = ["PutObject", "GetObject", "DeleteObject"], ["ListBucket", "GetBucketLocation"]
        users = {"workload": s3_policy(BUCKET, PREFIX, objects, bucket)}
        with running_moto(S3_PORT, S3_ADDR, netns=net.db, users=users, buckets={BUCKET: BUCKET_REGION}) as moto:
            yield SeedServices(net=net, export=export, s3_endpoint=moto.endpoint, s3_key=moto.keys["workload"])
    finally:
        if ganesha.poll() is None:
            os.killpg(ganesha.pid, signal.SIGTERM)
            try:
                ganesha.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(ganesha.pid, signal.SIGKILL)
                ganesha.wait(timeout=5)
        shutil.rmtree(work, ignore_errors=True)
