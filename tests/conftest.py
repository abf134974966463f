"""Fixtures shared by every suite."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube_cluster import kube_cluster
from tests.support.lab_vms import lab_vms
from tests.support.mlflow_server import mlflow_server, mlflow_tracking_uri, unique_model_name

__all__ = ["kube_cluster", "lab_vms", "mlflow_server", "mlflow_tracking_uri", "unique_model_name"]


# Test streams (scripts/test.sh runs `pytest -n 3`). One machine has one cluster
# (tests/support/kube_cluster.py), so every file with a `cluster` test is in one stream, with the
# image tests, whose session builds the images the cluster test loads. Every other directory of
# tests (a top-level module on its own) is one unit, so that a directory's session fixtures (a
# Molecule base, an Airflow venv, a seed network) start once. The longest streams start first.
TESTS = Path(__file__).parent
FIRST = ("cluster", "e2e", "molecule")


def stream_of(nodeid: str) -> str:
    """The stream of a test, from its node id (its file's path relative to the repository first)."""
    return _file_stream(nodeid.split("::", 1)[0])


@functools.cache
def _file_stream(path: str) -> str:
    parts = Path(path).relative_to("tests").parts
    if parts[0] in ("cluster", "images") or "mark.cluster" in (TESTS.parent / path).read_text():
        return "cluster"
    return parts[0] if len(parts) > 1 else Path(path).stem


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest streams first; in the cluster's stream, the tests on the cluster last:
    scripts/test.sh builds the cluster's binaries and images in the background meanwhile (cold, the
    slowest step of a fresh machine), and the session fixture then only waits for the build's lock.
    The sort is stable: the order is otherwise kept."""

    def key(item: pytest.Item) -> tuple[int, bool]:
        stream = stream_of(item.nodeid)
        return (FIRST.index(stream) if stream in FIRST else len(FIRST), item.get_closest_marker("cluster") is not None)

    items.sort(key=key)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist hands out whole streams (a worker runs a stream's tests in order, in one
    session), in the order of the collection."""
    from xdist.scheduler import LoadScopeScheduling

    class StreamScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return stream_of(nodeid)

    config.option.loadscopereorder = False
    return StreamScheduling(config, log)


# On 2 cores the cluster's stream is the run's critical path (on a fresh machine, after the build of
# the cluster that scripts/test.sh starts beside the tests), while the other streams finish early:
# they run a little nicer, so that a CPU both want goes to the cluster's side first. Their children
# (ansible, podman, servers) inherit it.
OTHER_STREAMS_NICE = 5


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    wanted = 0 if stream_of(item.nodeid) == "cluster" else OTHER_STREAMS_NICE
    if os.getpriority(os.PRIO_PROCESS, 0) != wanted:
        with contextlib.suppress(PermissionError):  # only root may lower it again
            os.setpriority(os.PRIO_PROCESS, 0, wanted)


# The real-cluster tests' budget (the cluster harness issue): a figure the run prints, not a test.
CLUSTER_BUDGET_MIN = 20


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The time of the tests on the real cluster (setup, call and teardown, the cluster's start
    included), against their budget on a warm cache."""
    # Every phase's report: pytest files a passed setup or teardown under "", not "passed".
    reports = [
        report
        for outcome_reports in terminalreporter.stats.values()
        for report in outcome_reports
        if "cluster" in (getattr(report, "keywords", None) or {}) and hasattr(report, "duration")
    ]
    if reports:
        minutes = sum(report.duration for report in reports) / 60
        tests = len({report.nodeid for report in reports})
        terminalreporter.write_line(
            f"real-cluster tests: {tests} in {minutes:.1f} min (budget {CLUSTER_BUDGET_MIN} min on a warm cache: "
            f"{'within' if minutes <= CLUSTER_BUDGET_MIN else 'OVER'})"
        )


@pytest.fixture(autouse=True)
def _isolate_mlflow_tracking_uri() -> Iterator[None]:
    """Code under test may call mlflow.set_tracking_uri (the DAG tasks do, as a task process
    should): restore MLflow's process-wide URI and MLFLOW_TRACKING_URI after every test, so
    one suite's registry never leaks into the next one's."""
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    saved_global = getattr(utils, "_tracking_uri", None)
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = saved_global  # type: ignore[attr-defined]
    if saved_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved_env
