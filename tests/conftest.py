"""Fixtures shared by every suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube_cluster import kube_cluster
from tests.support.lab_vms import lab_vms
from tests.support.mlflow_server import mlflow_server, mlflow_tracking_uri, unique_model_name

__all__ = ["kube_cluster", "lab_vms", "mlflow_server", "mlflow_tracking_uri", "unique_model_name"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests and give each its stream (pytest-xdist's ``--dist loadgroup``, which
    scripts/test.sh uses).

    Tests on the real cluster run last: scripts/test.sh builds the cluster's binaries and images in
    the background meanwhile (cold, that is the slowest step of a fresh machine), and the session
    fixture then only waits for the build's lock. The sort is stable: the order is otherwise kept.

    Streams: one machine has one cluster (tests/support/kube_cluster.py), so every cluster test runs
    in one worker, with the image tests, whose session builds the images the cluster test loads.
    Every other directory of tests (a top-level module on its own) is one unit, so that a
    directory's session fixtures (a Molecule base, an Airflow venv, a seed network) start once."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_stream(item)))


def _stream(item: pytest.Item) -> str:
    rel = item.path.relative_to(Path(__file__).parent)
    if item.get_closest_marker("cluster") is not None or rel.parts[0] == "images":
        return "cluster"
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


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
