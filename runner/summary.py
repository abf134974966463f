"""Each run's summary.json, and a pointer to the last one for `python -m runner status`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.paths import state_dir
from runner.results import StageRun


@dataclass
class RunSummary:
    run_dir: str
    inventory: str
    started: str
    finished: str
    check: bool
    exit_code: int
    stages: list[StageRun]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "inventory": self.inventory,
            "started": self.started,
            "finished": self.finished,
            "check": self.check,
            "exit_code": self.exit_code,
            "stages": [stage.to_dict() for stage in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        return cls(
            run_dir=data["run_dir"],
            inventory=data["inventory"],
            started=data["started"],
            finished=data["finished"],
            check=bool(data["check"]),
            exit_code=int(data["exit_code"]),
            stages=[StageRun.from_dict(stage) for stage in data["stages"]],
        )


def _last_run_pointer(state: Path | None = None) -> Path:
    return (state or state_dir()) / "last-run"


def write_summary(summary: RunSummary) -> Path:
    path = Path(summary.run_dir) / "summary.json"
    path.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    pointer = _last_run_pointer()
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(summary.run_dir + "\n", encoding="utf-8")
    return path


def read_last_summary(state: Path | None = None) -> RunSummary | None:
    """The last run's summary, from the state directory (default: this process's, runner.paths.state_dir)."""
    pointer = _last_run_pointer(state)
    if not pointer.exists():
        return None
    path = Path(pointer.read_text(encoding="utf-8").strip()) / "summary.json"
    if not path.exists():
        return None
    return RunSummary.from_dict(json.loads(path.read_text(encoding="utf-8")))
