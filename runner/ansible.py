"""The one module that imports ansible_runner: runs one stage's playbook in a fresh private data dir.

Each stage gets its own private data dir with ``suppress_env_files=True``: without it, ansible-runner
writes extravars, passwords and the environment into ``env/`` in plain text. ``status_data["env"]``
is never logged. Success is ``status == "successful" and rc == 0``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from runner.paths import local_home
from runner.results import COUNT_KEYS, Failure, StageRun, failure_message
from runner.stages import Stage

EventCallback = Callable[[dict[str, Any]], None]

# ansible's stats keys -> the runner's count names
_STATS_KEYS = {"ok": "ok", "changed": "changed", "failures": "failed", "skipped": "skipped", "dark": "unreachable"}


@dataclass
class RunOptions:
    inventory: Path
    check: bool = False
    limit: str | None = None
    vault_password_file: Path | None = None
    verbosity: int = 0
    extravars: dict[str, Any] = field(default_factory=dict)
    skip_tags: tuple[str, ...] = ()


def _cmdline(options: RunOptions) -> str | None:
    args: list[str] = []
    if options.check:
        args.append("--check")
    if options.vault_password_file is not None:
        args += ["--vault-password-file", str(options.vault_password_file)]
    return " ".join(args) or None


def _envvars(project: Path) -> dict[str, str]:
    # ansible-playbook must come from the same environment as this interpreter, and the
    # project's ansible.cfg must apply whatever the caller's working directory. The local
    # inventory reads the platform's home from MLOPSLAB_HOME, defined once in runner/paths.py.
    bin_dir = str(Path(sys.executable).parent)
    return {
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
        "MLOPSLAB_HOME": str(local_home()),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }


def _failure_from(event: dict[str, Any]) -> Failure:
    data = event.get("event_data", {})
    return Failure(
        task=str(data.get("task", "?")), host=str(data.get("host", "?")), message=failure_message(data.get("res"))
    )


def run_stage(
    stage: Stage,
    options: RunOptions,
    project: Path,
    private_data_dir: Path,
    on_event: EventCallback,
    cancel_requested: threading.Event,
) -> StageRun:
    private_data_dir.mkdir(parents=True, exist_ok=False)
    result = StageRun(name=stage.name, status="error")
    started = time.monotonic()

    def handle(event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        if kind in ("runner_on_failed", "runner_on_unreachable") and result.failure is None:
            if not event.get("event_data", {}).get("ignore_errors"):
                result.failure = _failure_from(event)
        elif kind == "playbook_on_stats":
            data = event.get("event_data", {})
            for stats_key, count_key in _STATS_KEYS.items():
                result.counts[count_key] = sum(int(v) for v in (data.get(stats_key) or {}).values())
        on_event(event)
        return True

    thread, runner = ansible_runner.run_async(
        private_data_dir=str(private_data_dir),
        project_dir=str(project),
        ident=stage.name,
        playbook=str(project / stage.playbook),
        inventory=str(options.inventory),
        limit=options.limit,
        cmdline=_cmdline(options),
        extravars=options.extravars or None,
        skip_tags=",".join(options.skip_tags) or None,
        envvars=_envvars(project),
        verbosity=options.verbosity or None,
        suppress_env_files=True,
        quiet=True,
        event_handler=handle,
        cancel_callback=cancel_requested.is_set,
    )
    while thread.is_alive():
        try:
            thread.join(0.2)
        except KeyboardInterrupt:
            # ansible-runner sees the event through cancel_callback and stops the playbook.
            cancel_requested.set()
    result.duration = round(time.monotonic() - started, 2)
    result.rc = runner.rc
    result.artifact_dir = str(runner.config.artifact_dir)
    status = str(runner.status)
    if status == "canceled" or cancel_requested.is_set():
        result.status = "canceled"
    elif status == "successful" and runner.rc == 0:
        result.status = "successful"
    else:
        result.status = "failed"
        if result.failure is None:
            result.failure = Failure(task="(playbook)", host="-", message=f"ansible-playbook exited {runner.rc}")
    for key in COUNT_KEYS:
        result.counts.setdefault(key, 0)
    return result
