"""Fixtures shared by every suite."""

from tests.support.kube_apiserver import kube_apiserver
from tests.support.mlflow_server import mlflow_server, mlflow_tracking_uri, unique_model_name

__all__ = ["kube_apiserver", "mlflow_server", "mlflow_tracking_uri", "unique_model_name"]
