"""The processes of a running local platform: what the e2e test checks for listeners and what
bench/local_platform.py sums for memory.

    platform_pids(home, cluster) -> supervisord (under home/supervisor) and every process below
    it, plus the processes of the PostgreSQL cluster `cluster`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PG_VERSION = "15"


def process_tree(roots: set[int]) -> set[int]:
    """The roots and all their descendants, from one `ps` snapshot."""
    children: dict[int, list[int]] = {}
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    for line in table.splitlines():
        pid, ppid = (int(x) for x in line.split())
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def platform_pids(home: Path, cluster: str, pg_version: str = PG_VERSION) -> set[int]:
    roots = set()
    pid_file = home / "supervisor" / "supervisord.pid"
    if pid_file.exists():
        roots.add(int(pid_file.read_text().split()[0]))
    postmaster = Path(f"/var/lib/postgresql/{pg_version}/{cluster}/postmaster.pid")
    if postmaster.exists():
        roots.add(int(postmaster.read_text().split()[0]))
    return process_tree(roots)
