"""Bootstrap times and memory of the local platform, against the issue's budgets.

    .venv/bin/python bench/local_platform.py            # isolated: tmp MLOPSLAB_HOME, free ports, own PG cluster
    .venv/bin/python bench/local_platform.py --running  # only the memory of the platform in $MLOPSLAB_HOME

The isolated run brings the platform up from nothing (cold: venvs, databases, first
training), again (warm: converged, changed=0), measures the resident memory of every process
of the running platform (supervisord and its services' process trees, and the PostgreSQL
cluster), then takes it down and drops its cluster. A script that prints numbers, not a test.
The pip cache is not cleared: a cold run on a machine that never downloaded the wheels is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script: make the checkout importable (tests.support).
sys.path.insert(0, str(ROOT))

from runner.paths import local_home  # noqa: E402
from tests.support.local_platform import platform_pids  # noqa: E402

CLUSTER = "mlopslab_bench"
PG_VERSION = "15"
COLD_BUDGET_S = 10 * 60
WARM_BUDGET_S = 60
MEMORY_BUDGET = 4 * 1024**3


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def platform_memory(home: Path, cluster: str) -> tuple[int, int]:
    pids = platform_pids(home, cluster, PG_VERSION)
    return sum(rss_bytes(pid) for pid in pids), len(pids)


def runner(args: list[str], inventory: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "runner", *args, "-i", str(inventory)], cwd=ROOT, env=env, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"`runner {' '.join(args)}` failed with exit code {result.returncode}")
    return time.monotonic() - started


def verdict(ok: bool) -> str:
    return "within budget" if ok else "OVER BUDGET"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--running", action="store_true", help="measure the platform in $MLOPSLAB_HOME only")
    parser.add_argument("--cluster", default="main", help="PostgreSQL cluster of --running (default main)")
    args = parser.parse_args()

    if args.running:
        home = local_home()
        total, count = platform_memory(home, args.cluster)
        print(
            f"memory: {total / 1024**3:.2f} GiB RSS over {count} processes "
            f"(budget {MEMORY_BUDGET / 1024**3:.0f} GiB: {verdict(total < MEMORY_BUDGET)})"
        )
        return 0

    base = Path(tempfile.mkdtemp(prefix="mlopslab-bench-"))
    inventory = base / "inventory"
    shutil.copytree(ROOT / "inventories" / "local", inventory)
    names = ("db", "s3", "mlflow", "airflow", "serving")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    (inventory / "group_vars" / "all" / "zz_bench.yml").write_text(
        "---\n"
        + "".join(f"mlopslab_{name}_port: {port}\n" for name, port in ports.items())
        + f"mlopslab_db_cluster_name: {CLUSTER}\n"
    )
    home = base / "home"
    env = {**os.environ, "MLOPSLAB_HOME": str(home), "MLOPSLAB_STATE_DIR": str(base / "state")}
    try:
        cold = runner(["bootstrap"], inventory, env)
        warm = runner(["bootstrap"], inventory, env)
        time.sleep(10)  # let every component settle after the smoke stage
        total, count = platform_memory(home, CLUSTER)
        print(json.dumps({"cold_s": round(cold, 1), "warm_s": round(warm, 1), "rss_bytes": total, "processes": count}))
        print(
            f"cold bootstrap: {cold / 60:.1f} min (budget {COLD_BUDGET_S // 60} min: {verdict(cold < COLD_BUDGET_S)})"
        )
        print(
            f"warm bootstrap (changed=0): {warm:.0f} s, {cold / warm:.1f}x faster than cold "
            f"(budget {WARM_BUDGET_S} s: {verdict(warm < WARM_BUDGET_S)})"
        )
        print(
            f"memory: {total / 1024**3:.2f} GiB RSS over {count} processes "
            f"(budget {MEMORY_BUDGET / 1024**3:.0f} GiB: {verdict(total < MEMORY_BUDGET)})"
        )
    finally:
        subprocess.run([sys.executable, "-m", "runner", "down", "-i", str(inventory)], cwd=ROOT, env=env, check=False)
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, CLUSTER], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
