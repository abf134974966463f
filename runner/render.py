"""`python -m runner render`: what the cluster and platform stages would apply, written to a directory.

No second renderer: the stages' own playbooks run (through runner/ansible.py, like bootstrap) with
the collection's two apply paths in render-only mode. ``k8s_manifests`` writes each manifest
instead of applying it and ``helm_release`` writes each release's values file and a description of
how it is installed and watched, instead of calling Helm. ``helm_binary`` is skipped (nothing
runs helm), and so are ``dag_repository`` (it reads the DAG repository over SSH: nothing to render)
and ``first_champion`` (a Job whose work is a training run against the live registry),
so no cluster, no helm and no network are needed.

No secret either: every option the collection's argument specs mark ``no_log`` is passed as
``PLACEHOLDER(<option>)``, so the vault is never read (no password is asked for) and each Secret
shows which variable fills it at apply time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from runner.ansible import RunOptions, run_stage
from runner.inventory import Inventory
from runner.progress import Progress
from runner.results import StageRun
from runner.stages import STAGES, Stage

RENDER_STAGES: tuple[Stage, ...] = tuple(stage for stage in STAGES if stage.name in ("cluster", "platform"))
RENDER_GROUP = "k8s_control"
SKIP_TAGS: tuple[str, ...] = ("helm_binary", "dag_repository", "first_champion")
PLACEHOLDER = "PLACEHOLDER({name})"

README = """\
# Rendered by `python -m runner render`

Inventory: {inventory}

What the cluster and platform stages would apply to the cluster, rendered by the same roles
and templates (in render-only mode), with no cluster and no secret:

| path | what |
| --- | --- |
| `manifests/*.yml` | every plain manifest (namespaces, LimitRanges, Secrets, ConfigMaps, log volume) |
| `values/<release>.values.yml` | the Helm values file of each release |
| `releases/<release>.yml` | each release's chart, namespace, images, and how it is installed and watched |
| `images.yml` | the project's images: content-tagged references, and how they reach the nodes (push or load) |

**Secret data are placeholders**: every secret value reads `PLACEHOLDER(<variable>)`, naming the
role variable (wired from the vault) that fills it when the stages apply. Nothing here is a secret;
the values files never hold one (charts get Secrets by name).
"""


class RenderError(Exception):
    """The output directory cannot be used."""


@dataclass
class RenderResult:
    exit_code: int
    files: list[Path] = field(default_factory=list)
    stages: list[StageRun] = field(default_factory=list)


def secret_options(roles_dir: Path) -> list[str]:
    """Every option that an argument spec of the collection marks no_log (the secrets), except the
    optional ones whose empty default switches a feature off: a placeholder would render an object
    the stages do not create unless the inventory opts in."""
    names: set[str] = set()
    for spec_file in sorted(roles_dir.glob("*/meta/argument_specs.yml")):
        specs = (yaml.safe_load(spec_file.read_text()) or {}).get("argument_specs") or {}
        for entry in specs.values():
            for name, option in ((entry or {}).get("options") or {}).items():
                if (option or {}).get("no_log") and (option or {}).get("default") != "":
                    names.add(name)
    return sorted(names)


def render_extravars(out: Path, roles_dir: Path) -> dict[str, str]:
    return {
        "helm_release_render_dir": str(out),
        "k8s_manifests_render_dir": str(out),
        "container_images_render_dir": str(out),
        **{name: PLACEHOLDER.format(name=name) for name in secret_options(roles_dir)},
    }


def prepare_out_dir(out: Path) -> Path:
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RenderError(f"{out} exists and is not an empty directory: choose a new one (nothing is overwritten)")
    return out


def render(
    inventory: Inventory,
    out: Path,
    project: Path,
    run_dir: Path,
    console: Console,
    verbosity: int = 0,
) -> RenderResult:
    """Run the render stages into ``out``; exit code 0 (also when there is nothing to render) or 1."""
    hosts = inventory.hosts_of((RENDER_GROUP,))
    if not hosts:
        console.print(
            f"inventory {inventory.path} has no {RENDER_GROUP} hosts: it has no Kubernetes layer, "
            "so there is nothing to render; nothing written.",
            soft_wrap=True,
        )
        return RenderResult(exit_code=0)
    roles_dir = project / "collections" / "ansible_collections" / "mlopslab" / "platform" / "roles"
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    options = RunOptions(
        inventory=inventory.path,
        limit=RENDER_GROUP,
        verbosity=verbosity,
        extravars=render_extravars(out, roles_dir),
        skip_tags=SKIP_TAGS,
    )
    progress = Progress(console, verbose=verbosity > 0)
    result = RenderResult(exit_code=0)
    for stage in RENDER_STAGES:
        progress.stage_started(stage, hosts)
        run = run_stage(stage, options, project, run_dir / stage.name, progress.on_event, threading.Event())
        run.hosts = hosts
        progress.stage_finished(run)
        result.stages.append(run)
        if not run.succeeded:
            failure = run.failure
            console.print(f"\n[bold red]render of stage {stage.name} failed[/]")
            if failure is not None:
                console.print(f"  task:  {failure.task}\n  host:  {failure.host}\n  error: {failure.message}")
            result.exit_code = 1
            return result
    (out / "README.md").write_text(README.format(inventory=inventory.path))
    result.files = sorted(p for p in out.rglob("*") if p.is_file())
    return result
