"""What a stage run produced: status, per-status task counts, the first fatal failure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

COUNT_KEYS = ("ok", "changed", "failed", "skipped", "unreachable")


def failure_message(res: object) -> str:
    """Ansible's own message for a failed result; for a loop, the message of each failed item."""
    if not isinstance(res, dict):
        return ""
    items = [item for item in res.get("results") or [] if isinstance(item, dict) and item.get("failed")]
    if items:
        return "\n".join(failure_message(item) for item in items)
    message = res.get("msg") or res.get("stderr") or res.get("reason") or res.get("censored") or ""
    return str(message).strip()


@dataclass
class Failure:
    task: str
    host: str
    message: str


@dataclass
class StageRun:
    name: str
    status: str  # successful | failed | skipped | canceled | error
    duration: float = 0.0
    rc: int | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    hosts: list[str] = field(default_factory=list)
    artifact_dir: str | None = None
    failure: Failure | None = None
    skip_reason: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in ("successful", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageRun:
        failure = data.get("failure")
        return cls(
            name=data["name"],
            status=data["status"],
            duration=float(data.get("duration", 0.0)),
            rc=data.get("rc"),
            counts={key: int(data.get("counts", {}).get(key, 0)) for key in COUNT_KEYS},
            hosts=list(data.get("hosts", [])),
            artifact_dir=data.get("artifact_dir"),
            failure=Failure(**failure) if failure else None,
            skip_reason=data.get("skip_reason"),
        )
