"""The platform's stages, as data: name, playbook and the inventory groups it acts on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    playbook: str
    groups: tuple[str, ...]
    description: str
    # A stage that always runs (preflight checks the control node and the inventory itself).
    always: bool = False


STAGES: tuple[Stage, ...] = (
    Stage(
        "preflight",
        "playbooks/preflight.yml",
        ("localhost",),
        "ansible-core, collections, inventory invariants, secrets",
        always=True,
    ),
    Stage(
        "hosts",
        "playbooks/hosts.yml",
        ("nfs_servers", "db_servers", "k8s_control"),
        "NFS and PostgreSQL servers, the S3 artifact bucket",
    ),
    Stage(
        "network",
        "playbooks/network.yml",
        ("k8s_nodes",),
        "node prerequisites, the cluster's pod network and ingress ports, Calico VM access (SNAT / IPPool)",
    ),
    Stage(
        "cluster",
        "playbooks/cluster.yml",
        ("k8s_control",),
        "namespaces, secrets, NFS log volume, ingress-nginx",
    ),
    Stage(
        "images",
        "playbooks/images.yml",
        ("k8s_control",),
        "MLflow, serving, Airflow and diagnose images: build, then push or load into the nodes",
    ),
    Stage(
        "platform",
        "playbooks/platform.yml",
        ("k8s_control", "local_platform"),
        "MLflow, Airflow and serving (Helm releases or local services)",
    ),
    Stage(
        "smoke",
        "playbooks/smoke.yml",
        ("local_platform", "k8s_control"),
        "train -> register -> every replica serves the champion (through the ingress on a cluster)",
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


class StageSelectionError(ValueError):
    """A --from/--only value that names no stage."""


def select_stages(from_stage: str | None = None, only: list[str] | None = None) -> list[Stage]:
    """The stages to run, in order. --only wins over --from; preflight always runs first."""
    for name in [from_stage, *(only or [])]:
        if name is not None and name not in STAGE_NAMES:
            raise StageSelectionError(f"unknown stage {name!r}: choose from {', '.join(STAGE_NAMES)}")
    if only:
        chosen = [stage for stage in STAGES if stage.name in only]
    elif from_stage:
        start = STAGE_NAMES.index(from_stage)
        chosen = list(STAGES[start:])
    else:
        chosen = list(STAGES)
    preflight = STAGES[0]
    if preflight not in chosen:
        chosen.insert(0, preflight)
    return chosen
