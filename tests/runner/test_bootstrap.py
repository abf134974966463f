"""`python -m runner bootstrap` drives real playbooks through ansible-runner."""

from __future__ import annotations

from pathlib import Path

from runner.summary import read_last_summary
from tests.runner.conftest import LabProject


def _summary(project: LabProject) -> dict[str, object]:
    summary = read_last_summary(project.state)
    assert summary is not None, "no runner run has written a summary yet"
    return summary.to_dict()


def _statuses(project: LabProject) -> dict[str, str]:
    stages = _summary(project)["stages"]
    assert isinstance(stages, list)
    return {stage["name"]: stage["status"] for stage in stages}


def test_stages_run_in_order_and_empty_groups_are_skipped(project: LabProject) -> None:
    result = project.run("bootstrap", "-i", str(project.inventory))
    assert result.rc == 0, result.output
    # network (k8s_nodes), images and cluster (k8s_control) have no hosts in this inventory
    assert project.order() == ["preflight", "hosts", "platform", "smoke"]
    assert _statuses(project) == {
        "preflight": "successful",
        "hosts": "successful",
        "network": "skipped",
        "cluster": "skipped",
        "images": "skipped",
        "platform": "successful",
        "smoke": "successful",
    }
    assert "no hosts in k8s_nodes" in result.output
    # what playbooks say to the user (debug messages) reaches the terminal
    assert "stage smoke says hello" in result.output
    assert "artifacts:" in result.output
    # each stage ran in its own private data dir with its own artifacts
    run_dir = Path(str(_summary(project)["run_dir"]))
    assert (run_dir / "hosts" / "artifacts" / "hosts" / "job_events").is_dir()
    assert not (run_dir / "hosts" / "env").exists(), "suppress_env_files must keep env/ off disk"


def test_failing_task_stops_the_run_and_names_stage_task_and_host(project: LabProject) -> None:
    vars_file = project.inventory / "group_vars" / "all" / "main.yml"
    vars_file.write_text(vars_file.read_text() + "fail_stage: platform\n")

    result = project.run("bootstrap", "-i", str(project.inventory))

    assert result.rc == 1, result.output
    assert project.order() == ["preflight", "hosts", "platform"], "smoke must not run after a failure"
    assert "stage platform failed" in result.output
    assert "task:  Fail on purpose" in result.output
    assert "host:  localhost" in result.output
    assert "stage platform was told to fail" in result.output
    assert "--from platform" in result.output
    assert _statuses(project)["platform"] == "failed"


def test_from_resumes_at_the_named_stage(project: LabProject) -> None:
    result = project.run("bootstrap", "-i", str(project.inventory), "--from", "platform")
    assert result.rc == 0, result.output
    assert project.order() == ["preflight", "platform", "smoke"]


def test_only_runs_preflight_and_the_named_stage(project: LabProject) -> None:
    result = project.run("bootstrap", "-i", str(project.inventory), "--only", "hosts")
    assert result.rc == 0, result.output
    assert project.order() == ["preflight", "hosts"]


def test_check_mode_changes_nothing(project: LabProject) -> None:
    result = project.run("bootstrap", "-i", str(project.inventory), "--check")
    assert result.rc == 0, result.output
    assert list(project.markers.iterdir()) == []
    assert _summary(project)["check"] is True


def test_usage_errors_exit_2(project: LabProject) -> None:
    assert project.run("bootstrap", "-i", str(project.inventory), "--from", "nowhere").rc == 2
    assert project.run("bootstrap", "-i", str(project.root / "missing")).rc == 2
    assert project.run("bootstrap", "--vault-password-file", str(project.root / "none")).rc == 2
    assert project.run("frobnicate").rc == 2
    assert project.order() == []


def test_limit_restricts_the_hosts(project: LabProject) -> None:
    result = project.run("bootstrap", "-i", str(project.inventory), "--limit", "nohost*")
    # No host matches: every stage with groups is skipped, preflight still runs.
    assert result.rc == 0, result.output
    assert project.order() == ["preflight"]


def test_status_reads_the_last_run(project: LabProject) -> None:
    assert "no run recorded yet" in project.run("status").output
    project.run("bootstrap", "-i", str(project.inventory), "--only", "hosts")
    status = project.run("status")
    assert status.rc == 0
    assert "preflight" in status.output
    assert "hosts" in status.output
    assert "succeeded" in status.output


def test_plan_lists_stages_and_hosts_without_running(project: LabProject) -> None:
    result = project.run("plan", "-i", str(project.inventory))
    assert result.rc == 0, result.output
    for stage in ("preflight", "hosts", "network", "cluster", "platform", "smoke"):
        assert stage in result.output
    assert "skipped: no hosts" in result.output
    assert project.order() == []
