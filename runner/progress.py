"""Live progress on the terminal: one section per stage, one line per task, running counts.

Only task names, host names and Ansible's own result messages are shown (no_log results arrive
already censored); raw event payloads are never printed.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.status import Status
from rich.table import Table

from runner.results import StageRun, failure_message
from runner.stages import Stage

_MESSAGE_ACTIONS = frozenset({"debug", "ansible.builtin.debug"})

_STYLE = {"successful": "green", "failed": "bold red", "skipped": "yellow", "canceled": "magenta", "error": "red"}


class Progress:
    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self._status: Status | None = None
        self._stage: Stage | None = None
        self._task = ""
        self._counts: dict[str, int] = {}

    def stage_started(self, stage: Stage, hosts: list[str]) -> None:
        self._stage = stage
        self._counts = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0}
        self.console.rule(f"[bold]stage {stage.name}[/]: {stage.description}")
        self.console.print(f"  playbook {stage.playbook}  hosts: {', '.join(hosts) or '-'}")
        self._status = self.console.status(f"{stage.name}: starting")
        self._status.start()

    def stage_skipped(self, stage: Stage, reason: str) -> None:
        self.console.rule(f"[bold]stage {stage.name}[/]: [yellow]skipped[/]")
        self.console.print(f"  {reason}")

    def _refresh(self) -> None:
        if self._status is not None and self._stage is not None:
            counts = " ".join(f"{key}={value}" for key, value in self._counts.items())
            self._status.update(f"{self._stage.name}: {self._task}  [dim]{counts}[/]")

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_task_start":
            self._task = str(data.get("task", ""))
            if self.verbose or not self.console.is_terminal:
                self.console.print(f"  [dim]task[/] {self._task}")
        elif kind == "runner_on_ok":
            res = data.get("res") or {}
            key = "changed" if res.get("changed") else "ok"
            self._counts[key] += 1
            if key == "changed":
                self.console.print(f"  [yellow]changed[/] {data.get('host')}: {data.get('task')}")
            if data.get("task_action") in _MESSAGE_ACTIONS and "msg" in res:
                # What a playbook says to its user (the URLs at the end of `make up`, diagnoses).
                messages = res["msg"] if isinstance(res["msg"], list) else [res["msg"]]
                for message in messages:
                    self.console.print(f"  {message}", markup=False, highlight=False)
        elif kind == "runner_on_skipped":
            self._counts["skipped"] += 1
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            ignored = bool(data.get("ignore_errors"))
            if not ignored:
                self._counts["failed"] += 1
            message = failure_message(data.get("res"))
            label = "failed (ignored)" if ignored else ("unreachable" if "unreachable" in kind else "failed")
            self.console.print(f"  [red]{label}[/] {data.get('host')}: {data.get('task')}: {message}")
        if self.verbose and event.get("stdout") and kind.startswith("runner_on"):
            self.console.print(event["stdout"], markup=False, highlight=False)
        self._refresh()

    def stage_finished(self, result: StageRun) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        style = _STYLE.get(result.status, "")
        counts = " ".join(f"{key}={value}" for key, value in result.counts.items())
        self.console.print(f"  [{style}]{result.status}[/] in {result.duration:.1f}s  {counts}")


def summary_table(results: list[StageRun]) -> Table:
    table = Table(title="mlops-lab run summary")
    for column in ("stage", "status", "ok", "changed", "failed", "skipped", "time"):
        table.add_column(column, justify="right" if column not in ("stage", "status") else "left")
    for result in results:
        style = _STYLE.get(result.status, "")
        table.add_row(
            result.name,
            f"[{style}]{result.status}[/]",
            *(str(result.counts.get(key, 0)) for key in ("ok", "changed", "failed", "skipped")),
            f"{result.duration:.1f}s",
        )
    return table
