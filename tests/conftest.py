"""Fixtures shared by every suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.support.kube_cluster import kube_cluster
from tests.support.lab_vms import lab_vms
from tests.support.mlflow_server import mlflow_server, mlflow_tracking_uri, unique_model_name

__all__ = ["kube_cluster", "lab_vms", "mlflow_server", "mlflow_tracking_uri", "unique_model_name"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the real cluster run last: scripts/test.sh builds the cluster's binaries and images in
    the background meanwhile (cold, that is the slowest step of a fresh machine), and the session
    fixture then only waits for the build's lock. The sort is stable: the order is otherwise kept."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)


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
