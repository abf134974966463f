"""`python -m runner`: bootstrap, plan, render, status, diagnose, down and train the mlops-lab platform.

Exit codes: 0 ok, 1 a stage (or the run) failed, 2 usage error, 3 training rejected by the gate,
130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner.ansible import RunOptions, run_stage
from runner.health import (
    LAB_VARIABLES,
    Component,
    components_from_endpoints,
    endpoints_file,
    lab_components,
    probe_components,
    read_endpoints,
)
from runner.inventory import Inventory, InventoryError, inventory_variables, kube_client, load_inventory
from runner.paths import local_home, project_dir, runs_dir
from runner.progress import Progress, summary_table
from runner.releases import RELEASE_VARIABLES, ReleaseState, lab_releases, releases_state
from runner.render import RenderError, prepare_out_dir
from runner.render import render as render_layer
from runner.results import StageRun
from runner.stages import STAGE_NAMES, Stage, StageSelectionError, select_stages
from runner.summary import RunSummary, read_last_summary, write_summary
from runner.train import PasswordTokenAuth, TrainError, TrainParams, auth_from_env, trigger_training
from runner.train_job import follow_job, job_name

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DOWN_STAGE = Stage(
    "down",
    "playbooks/down.yml",
    ("local_platform", "k8s_control", "k8s_nodes"),
    "stop the local services, or uninstall the lab's releases and take the network fix back (data is kept)",
)
TRAIN_STAGE = Stage("train", "playbooks/train.yml", ("k8s_control",), "start a training Job in the cluster")
DIAGNOSE_STAGE = Stage(
    "diagnose",
    "playbooks/diagnose.yml",
    ("k8s_control",),
    "PostgreSQL, NFS and S3 checked from short-lived pods with the workloads' Secrets",
)

app = typer.Typer(
    help="Build and operate the mlops-lab platform: one stage at a time, with ansible-runner.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Logs (CI, pipes) get a wide fixed width instead of Rich's 80-column default.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)

InventoryOption = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory or file (default: inventories/local)."),
]
LimitOption = Annotated[str | None, typer.Option("--limit", "-l", help="Restrict to these hosts (Ansible pattern).")]
VaultOption = Annotated[
    Path | None, typer.Option("--vault-password-file", help="File holding the ansible-vault password.")
]
VerboseOption = Annotated[int, typer.Option("-v", "--verbose", count=True, help="More output (-v, -vv, ...).")]


def _usage_error(message: str) -> typer.Exit:
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(EXIT_USAGE)


def _resolve_inventory(path: Path) -> Path:
    project = project_dir()
    if path.exists():
        return path.resolve()
    if (project / path).exists():
        return (project / path).resolve()
    raise _usage_error(f"inventory {path} does not exist")


def _load(path: Path, limit: str | None) -> Inventory:
    try:
        return load_inventory(path, limit)
    except InventoryError as exc:
        raise _usage_error(str(exc)) from exc


def _new_run_dir() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = runs_dir() / f"{stamp}-{os.getpid()}"
    run_dir.mkdir(parents=True, mode=0o700)
    return run_dir


def _skip_reason(stage: Stage, inventory: Inventory) -> str | None:
    if stage.always or inventory.hosts_of(stage.groups):
        return None
    return f"no hosts in {', '.join(stage.groups)}: nothing to do in this inventory"


def _run(
    stages: list[Stage],
    inventory: Inventory,
    options: RunOptions,
    preflight_stages: list[str],
) -> int:
    project = project_dir()
    run_dir = _new_run_dir()
    progress = Progress(console, verbose=options.verbosity > 0)
    cancel = threading.Event()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results: list[StageRun] = []
    exit_code = EXIT_OK
    for stage in stages:
        reason = _skip_reason(stage, inventory)
        if reason is not None:
            progress.stage_skipped(stage, reason)
            results.append(StageRun(name=stage.name, status="skipped", skip_reason=reason))
            continue
        hosts = inventory.hosts_of(stage.groups)
        stage_options = options
        if stage.always:
            # The preflight checks the control node: --limit does not apply to it.
            extravars = {**options.extravars, "preflight_stages": preflight_stages}
            stage_options = RunOptions(**{**vars(options), "extravars": extravars, "limit": None})
        progress.stage_started(stage, hosts)
        result = run_stage(stage, stage_options, project, run_dir / stage.name, progress.on_event, cancel)
        result.hosts = hosts
        progress.stage_finished(result)
        results.append(result)
        if result.status == "canceled":
            console.print(f"\n[magenta]interrupted[/] during stage [bold]{stage.name}[/]; nothing after it ran.")
            console.print(f"resume with: python -m runner bootstrap --from {stage.name}")
            exit_code = EXIT_INTERRUPTED
            break
        if not result.succeeded:
            failure = result.failure
            console.print(f"\n[bold red]stage {stage.name} failed[/]")
            if failure is not None:
                console.print(f"  task:  {failure.task}\n  host:  {failure.host}\n  error: {failure.message}")
            console.print(f"resume after fixing it with: python -m runner bootstrap --from {stage.name}")
            exit_code = EXIT_FAILED
            break
    summary = RunSummary(
        run_dir=str(run_dir),
        inventory=str(inventory.path),
        started=started,
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        check=options.check,
        exit_code=exit_code,
        stages=results,
    )
    write_summary(summary)
    console.print()
    console.print(summary_table(results))
    console.print(f"artifacts: {run_dir}")
    return exit_code


@app.command()
def bootstrap(
    inventory: InventoryOption = Path("inventories/local"),
    check: Annotated[bool, typer.Option("--check", help="Dry run: report what would change.")] = False,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Start at this stage (preflight still runs).")
    ] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only this stage (repeatable).")] = None,
    limit: LimitOption = None,
    vault_password_file: VaultOption = None,
    verbose: VerboseOption = 0,
) -> None:
    """Run the stages in order: preflight, hosts, network, cluster, images, platform, smoke."""
    try:
        stages = select_stages(from_stage, only)
    except StageSelectionError as exc:
        raise _usage_error(str(exc)) from exc
    if vault_password_file is not None and not vault_password_file.is_file():
        raise _usage_error(f"vault password file {vault_password_file} does not exist")
    path = _resolve_inventory(inventory)
    inv = _load(path, limit)
    options = RunOptions(
        inventory=path,
        check=check,
        limit=limit,
        vault_password_file=vault_password_file.resolve() if vault_password_file else None,
        verbosity=verbose,
    )
    # `--only preflight` asks "is this inventory ready?": check the secrets of every stage.
    selected = [stage.name for stage in stages]
    preflight_stages = list(STAGE_NAMES) if selected == ["preflight"] else selected
    raise typer.Exit(_run(stages, inv, options, preflight_stages))


@app.command()
def plan(
    inventory: InventoryOption = Path("inventories/local"),
    limit: LimitOption = None,
) -> None:
    """Show the stages, their playbooks and the hosts each touches; changes nothing."""
    path = _resolve_inventory(inventory)
    inv = _load(path, limit)
    table = Table(title=f"mlops-lab plan for {path}")
    for column in ("stage", "playbook", "groups", "hosts"):
        table.add_column(column)
    for stage in select_stages():
        reason = _skip_reason(stage, inv)
        hosts = "[yellow]skipped: no hosts[/]" if reason else ", ".join(inv.hosts_of(stage.groups))
        table.add_row(stage.name, stage.playbook, ", ".join(stage.groups), hosts)
    console.print(table)


def _lab_values(inventory: Path | None, vault_password_file: Path | None) -> dict[str, Any] | None:
    """The inventory's values status needs, for an inventory with a cluster; None otherwise."""
    if inventory is None:
        return None
    path = _resolve_inventory(inventory)
    inv = _load(path, None)
    control = inv.hosts_of(("k8s_control",))
    if not control or inv.hosts_of(("local_platform",)):
        return None
    try:
        return inventory_variables(path, control[0], LAB_VARIABLES + RELEASE_VARIABLES, vault_password_file)
    except Exception as exc:  # an unreadable vault, an inventory error: say it
        raise _usage_error(f"cannot read {path}: {exc}") from exc


def _components(lab: dict[str, Any] | None) -> tuple[list[Component], list[str]]:
    """The lab's components (from its inventory's values) or the local platform's (endpoints.json)."""
    if lab is not None:
        return lab_components(lab)
    path = endpoints_file()
    if not path.exists():
        return [], [f"no local platform endpoints recorded ({path})"]
    return components_from_endpoints(path), []


def _releases(lab: dict[str, Any] | None) -> tuple[list[ReleaseState], list[str]]:
    """The lab's Helm releases and their pods, or a note on why they could not be read."""
    if lab is None:
        return [], []
    try:
        return releases_state(lab_releases(lab), lab.get("mlopslab_kubeconfig"), lab.get("mlopslab_kube_context")), []
    except Exception as exc:  # no kubeconfig, no API server: the rest of the status still counts
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return [], [f"Helm releases not checked: cannot read the cluster ({first_line})"]


@app.command()
def status(
    inventory: Annotated[
        Path | None, typer.Option("-i", "--inventory", help="Inventory (default: the local platform).")
    ] = None,
    vault_password_file: VaultOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the components' health as JSON only.")] = False,
) -> None:
    """Show the last run's summary, whether each component can do its job and, on a cluster, each
    Helm release with its pods' readiness (exit 1 if something is down)."""
    lab = _lab_values(inventory, vault_password_file)
    components, notes = _components(lab)
    releases, release_notes = _releases(lab)
    notes += release_notes
    if as_json:
        probes = probe_components(components)
        print(json.dumps({"components": [vars(probe) for probe in probes],
                          "releases": [{**vars(r), "healthy": r.healthy} for r in releases], "notes": notes},
                         indent=2))  # fmt: skip
        unhealthy = any(not probe.healthy for probe in probes) or any(not r.healthy for r in releases)
        raise typer.Exit(EXIT_FAILED if unhealthy else EXIT_OK)
    summary = read_last_summary()
    if summary is None:
        console.print("no run recorded yet: start with `python -m runner bootstrap`")
    else:
        console.print(f"last run: {summary.started} -> {summary.finished}  inventory {summary.inventory}")
        console.print(summary_table(summary.stages))
        verdict = "[green]succeeded[/]" if summary.exit_code == EXIT_OK else f"[red]exit {summary.exit_code}[/]"
        console.print(f"result: {verdict}  artifacts: {summary.run_dir}")
    for note in notes:
        console.print(note)
    down = []
    if releases:
        table = Table(title="releases")
        for column in ("release", "namespace", "helm", "pods ready", "not ready"):
            table.add_column(column)
        for r in releases:
            helm = f"{r.status} (revision {r.revision})" if r.revision else r.status
            ready = f"{r.ready}/{r.pods}"
            table.add_row(r.release, r.namespace, helm if r.status == "deployed" else f"[red]{escape(helm)}[/]",
                          ready if r.healthy else f"[red]{ready}[/]", escape("; ".join(r.not_ready)))  # fmt: skip
        console.print(table)
        down += [f"release {r.release}" for r in releases if not r.healthy]
    if components:
        table = Table(title="components")
        for column in ("component", "endpoint", "health"):
            table.add_column(column)
        probes = probe_components(components)
        for probe in probes:
            health = f"[green]up[/]: {probe.detail}" if probe.healthy else f"[red]down[/]: {probe.detail}"
            table.add_row(probe.name, probe.url, health)
        console.print(table)
        down += [probe.name for probe in probes if not probe.healthy]
    if down:
        console.print(f"[red]down:[/] {', '.join(down)}")
        raise typer.Exit(EXIT_FAILED)


@app.command()
def diagnose(
    inventory: InventoryOption = Path("inventories/lab"),
    vault_password_file: VaultOption = None,
    verbose: VerboseOption = 0,
) -> None:
    """Check PostgreSQL, NFS and S3 from short-lived pods in the cluster, with the workloads' own
    Secrets; one verdict per check, each failure with its cause and fix."""
    path = _resolve_inventory(inventory)
    inv = _load(path, None)
    if not inv.hosts_of(DIAGNOSE_STAGE.groups):
        raise _usage_error(f"{path} has no k8s_control host: diagnose runs its pods on a cluster")
    options = RunOptions(
        inventory=path,
        vault_password_file=vault_password_file.resolve() if vault_password_file else None,
        verbosity=verbose,
    )
    raise typer.Exit(_run([DIAGNOSE_STAGE], inv, options, []))


@app.command()
def down(
    inventory: InventoryOption = Path("inventories/local"),
    vault_password_file: VaultOption = None,
    verbose: VerboseOption = 0,
) -> None:
    """Stop the local platform's services, or uninstall the lab's Helm releases and take its network fix
    back; databases, the NFS export, the bucket, the log volume's data and the Secrets are kept."""
    path = _resolve_inventory(inventory)
    inv = _load(path, None)
    options = RunOptions(inventory=path, vault_password_file=vault_password_file, verbosity=verbose)
    raise typer.Exit(_run([DOWN_STAGE], inv, options, []))


@app.command()
def render(
    out: Annotated[Path, typer.Option("--out", help="Directory to write to (new or empty).")],
    inventory: InventoryOption = Path("inventories/local"),
    verbose: VerboseOption = 0,
) -> None:
    """Write every manifest and Helm values file the cluster and platform stages would apply.

    No cluster and no secret: Secret data are placeholders naming their variables.
    """
    path = _resolve_inventory(inventory)
    inv = _load(path, None)
    try:
        target = prepare_out_dir(out)
    except RenderError as exc:
        raise _usage_error(str(exc)) from exc
    result = render_layer(inv, target, project_dir(), _new_run_dir(), console, verbose)
    if result.exit_code == EXIT_OK and result.files:
        console.print(f"\nwrote {len(result.files)} files to {target}:")
        for file in result.files:
            console.print(f"  {file.relative_to(target)}")
        console.print("Secret data are placeholders, PLACEHOLDER(<variable>): no secret was read or written.")
    raise typer.Exit(result.exit_code)


def _local_airflow_url() -> str | None:
    path = endpoints_file()
    if not path.exists():
        return None
    health = read_endpoints(path).get("airflow")
    if not health:
        return None
    parts = urlsplit(health)
    return f"{parts.scheme}://{parts.netloc}"


def _airflow_auth(api_url: str) -> httpx.Auth:
    """Credentials from the environment, else the local platform's generated admin password."""
    if any(os.environ.get(name) for name in ("MLOPSLAB_AIRFLOW_TOKEN", "MLOPSLAB_AIRFLOW_USERNAME")):
        return auth_from_env(api_url)
    password_file = local_home() / "secrets" / "airflow_admin_password"
    if password_file.is_file():
        return PasswordTokenAuth(api_url, "admin", password_file.read_text(encoding="utf-8").strip())
    return auth_from_env(api_url)  # raises with the list of variables to set


@app.command()
def train(
    n_estimators: Annotated[int, typer.Option("--n-estimators", min=1, help="Trees in the forest.")] = 100,
    max_depth: Annotated[
        int | None, typer.Option("--max-depth", min=1, help="Tree depth (unlimited if unset).")
    ] = None,
    run_name: Annotated[str, typer.Option("--run-name", help="MLflow run name, e.g. baseline.")] = "baseline",
    dataset: Annotated[str, typer.Option("--dataset", help="iris, wine or breast_cancer.")] = "iris",
    min_accuracy: Annotated[float | None, typer.Option("--min-accuracy", help="Quality gate threshold.")] = None,
    tolerance: Annotated[float | None, typer.Option("--tolerance", help="Allowed drop vs the champion.")] = None,
    airflow_url: Annotated[
        str | None,
        typer.Option("--airflow-url", envvar="MLOPSLAB_AIRFLOW_URL", help="Airflow API server (default: local)."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the run to its end.")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to follow the run.")] = 3600.0,
    via: Annotated[
        str,
        typer.Option(
            "--via", help="airflow: the train_and_promote DAG; job: a Kubernetes Job in the inventory's cluster."
        ),
    ] = "airflow",
    inventory: Annotated[
        Path | None, typer.Option("-i", "--inventory", help="With --via job: the cluster's inventory (default: lab).")
    ] = None,
    vault_password_file: VaultOption = None,
    verbose: VerboseOption = 0,
) -> None:
    """Train, gate and promote with these params, followed to the gate's decision: through the
    train_and_promote DAG, or (--via job) in a Kubernetes Job that runs the same pipeline."""
    try:
        params = TrainParams(
            n_estimators=n_estimators,
            max_depth=max_depth,
            run_name=run_name,
            dataset=dataset,
            min_accuracy=min_accuracy,
            tolerance=tolerance,
        )
    except ValueError as exc:
        raise _usage_error(str(exc)) from exc
    if via not in ("airflow", "job"):
        raise _usage_error(f"--via must be airflow or job, got {via!r}")
    if via == "job":
        path = _resolve_inventory(inventory or Path("inventories/lab"))
        vault = vault_password_file.resolve() if vault_password_file else None
        raise typer.Exit(_train_job(path, params, wait, timeout, vault, verbose))
    url = airflow_url or _local_airflow_url()
    if url is None:
        raise _usage_error("no Airflow URL: pass --airflow-url (or bring up the local platform first)")
    try:
        outcome = trigger_training(url, _airflow_auth(url), params, wait, console, timeout=timeout)
    except TrainError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_FAILED) from exc
    if outcome.result == "triggered":
        console.print(outcome.summary())
    raise typer.Exit(outcome.exit_code)


def _train_job(path: Path, params: TrainParams, wait: bool, timeout: float, vault: Path | None, verbose: int) -> int:
    """Start the run's Job (playbooks/train.yml), then follow it here (runner/train_job.py)."""
    inv = _load(path, None)
    controls = inv.hosts_of(TRAIN_STAGE.groups)
    if not controls:
        raise _usage_error(f"{path} has no k8s_control host: --via job runs a Job on a cluster")
    name = job_name(params.run_name or "run")
    options = RunOptions(
        inventory=path,
        vault_password_file=vault,
        verbosity=verbose,
        extravars={"mlopslab_train_job_name": name, "mlopslab_train_args": params.cli_args()},
    )
    started = _run([TRAIN_STAGE], inv, options, [])
    if started != EXIT_OK:
        return started
    found = inventory_variables(
        path,
        controls[0],
        ["mlopslab_kubeconfig", "mlopslab_kube_context", "first_champion_namespace"],
        vault,
    )
    namespace = str(found.get("first_champion_namespace") or "")
    console.print(f"Job [bold]{namespace}/{name}[/bold] started")
    if not wait:
        return EXIT_OK
    try:
        result = follow_job(
            kube_client(found.get("mlopslab_kubeconfig"), found.get("mlopslab_kube_context")),
            namespace,
            name,
            lambda line: console.print(escape(line), soft_wrap=True),  # a log line stays one line
            timeout=timeout,
        )
    except KeyboardInterrupt:
        console.print(f"\n[magenta]interrupted[/]: the Job runs on (kubectl -n {namespace} logs -f job/{name})")
        return EXIT_INTERRUPTED
    style = {0: "green", 3: "yellow"}.get(result.exit_code, "red")
    console.print(f"[bold]{escape(params.run_name or name)}[/bold] [{style}]{escape(result.summary)}[/{style}]")
    return result.exit_code


def main() -> None:
    app(prog_name="python -m runner")


__all__ = ["STAGE_NAMES", "app", "main"]
