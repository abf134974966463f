"""Pipeline settings, read from the environment (or Airflow connections) when a task runs.

Nothing here is a deployment value: the model name, experiment, MLflow and serving endpoints and
the reload token come from the environment of the Airflow workers, or from Airflow connections
when the environment does not set them. The standard library only, so DAG files can import it.

Environment:
    MLOPSLAB_MODEL_NAME              registered model name (required)
    MLOPSLAB_EXPERIMENT_NAME         MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, then
                                     the model name)
    MLFLOW_TRACKING_URI              MLflow server; else the connection MLOPSLAB_MLFLOW_CONN_ID
                                     (default ``mlflow_default``: host [+ port], login/password
                                     become MLFLOW_TRACKING_USERNAME/PASSWORD)
    MLOPSLAB_SERVING_URL             serving base URL; else the connection
                                     MLOPSLAB_SERVING_CONN_ID (default ``mlopslab_serving``,
                                     password = reload token); neither: notification is skipped
    MLOPSLAB_SERVING_RELOAD_TOKEN    bearer token for POST /reload
    MLOPSLAB_SERVING_WAIT_SECONDS    how long to wait for serving to report a version (120)
S3 credentials are boto3's business (``~/.aws/credentials`` mounted in task pods, or env).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# The DAG and the task whose return value says promoted or rejected: read by whoever triggers
# and follows a run through Airflow's API (airflow_api.py), declared by train_and_promote.py.
TRAIN_DAG_ID = "train_and_promote"
GATE_TASK_ID = "gate"

# The data sets scikit-learn bundles (no download), by DAG param value.
DATASETS = ("iris", "wine", "breast_cancer")

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"

# Param defaults (the seed's k3s variant: 100 trees, unlimited depth, 0.9 accuracy bar).
DEFAULT_N_ESTIMATORS = 100
DEFAULT_DATASET = "iris"
DEFAULT_MIN_ACCURACY = 0.9
DEFAULT_TOLERANCE = 0.01
DEFAULT_SERVING_WAIT_SECONDS = 120.0


class ConfigError(RuntimeError):
    """The environment does not say where to find something the pipeline needs."""


class ConnectionInfo(NamedTuple):
    url: str
    login: str | None
    password: str | None


# conn_id -> the connection, or None when it is not defined.
ConnectionLookup = Callable[[str], ConnectionInfo | None]


def connection_url(conn_type: str | None, host: str | None, port: int | None, schema: str | None) -> str:
    """A base URL from an Airflow connection's fields.

    ``host`` may hold a whole URL (``http://mlflow.local``); otherwise the scheme is https for
    an ``https`` connection type, else http, and ``schema`` is treated as a path prefix.
    """
    if not host:
        raise ConfigError("the connection has no host")
    if "://" in host:
        base = host.rstrip("/")
    else:
        scheme = "https" if (conn_type or "").lower() == "https" else "http"
        base = f"{scheme}://{host}"
    if port and base.count(":") < 2:
        base = f"{base}:{port}"
    if schema and schema not in ("http", "https"):
        base = f"{base}/{schema.strip('/')}"
    return base


def _no_connections(_conn_id: str) -> ConnectionInfo | None:
    return None


@dataclass(frozen=True)
class Settings:
    model_name: str
    experiment_name: str
    tracking_uri: str | None
    tracking_username: str | None = field(default=None, repr=False)
    tracking_password: str | None = field(default=None, repr=False)
    serving_url: str | None = None
    serving_reload_token: str | None = field(default=None, repr=False)
    serving_wait_seconds: float = DEFAULT_SERVING_WAIT_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str], lookup: ConnectionLookup = _no_connections) -> Settings:
        model_name = env.get("MLOPSLAB_MODEL_NAME", "").strip()
        if not model_name:
            raise ConfigError("MLOPSLAB_MODEL_NAME is not set: the registered model name comes from the environment")
        experiment = (env.get("MLOPSLAB_EXPERIMENT_NAME") or env.get("MLFLOW_EXPERIMENT_NAME") or model_name).strip()

        tracking_uri = env.get("MLFLOW_TRACKING_URI") or None
        username = env.get("MLFLOW_TRACKING_USERNAME") or None
        password = env.get("MLFLOW_TRACKING_PASSWORD") or None
        if tracking_uri is None:
            conn = lookup(env.get("MLOPSLAB_MLFLOW_CONN_ID", "mlflow_default"))
            if conn is None:
                raise ConfigError(
                    "no MLflow server configured: set MLFLOW_TRACKING_URI or define the Airflow "
                    "connection named by MLOPSLAB_MLFLOW_CONN_ID (default mlflow_default)"
                )
            tracking_uri, username, password = conn.url, conn.login, conn.password

        serving_url = env.get("MLOPSLAB_SERVING_URL") or None
        token = env.get("MLOPSLAB_SERVING_RELOAD_TOKEN") or None
        if serving_url is None:
            conn = lookup(env.get("MLOPSLAB_SERVING_CONN_ID", "mlopslab_serving"))
            if conn is not None:
                serving_url, token = conn.url, token or conn.password
        wait = float(env.get("MLOPSLAB_SERVING_WAIT_SECONDS") or DEFAULT_SERVING_WAIT_SECONDS)
        return cls(
            model_name=model_name,
            experiment_name=experiment,
            tracking_uri=tracking_uri,
            tracking_username=username,
            tracking_password=password,
            serving_url=serving_url.rstrip("/") if serving_url else None,
            serving_reload_token=token,
            serving_wait_seconds=wait,
        )

    def mlflow_env(self) -> dict[str, str]:
        """The variables MLflow's client reads, to export in the task process."""
        env: dict[str, str] = {}
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        if self.tracking_username:
            env["MLFLOW_TRACKING_USERNAME"] = self.tracking_username
        if self.tracking_password:
            env["MLFLOW_TRACKING_PASSWORD"] = self.tracking_password
        return env


@dataclass(frozen=True)
class TrainingParams:
    """The DAG params of one training run, validated."""

    n_estimators: int = DEFAULT_N_ESTIMATORS
    max_depth: int | None = None
    run_name: str | None = None
    dataset: str = DEFAULT_DATASET
    min_accuracy: float = DEFAULT_MIN_ACCURACY
    tolerance: float = DEFAULT_TOLERANCE

    def __post_init__(self) -> None:
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self.max_depth is not None and self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1 or null, got {self.max_depth}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must be within [0, 1], got {self.min_accuracy}")
        if not 0.0 <= self.tolerance <= 1.0:
            raise ValueError(f"tolerance must be within [0, 1], got {self.tolerance}")

    def dag_run_conf(self) -> dict[str, Any]:
        """The params as a dag run conf (Airflow validates it against the DAG's params)."""
        conf: dict[str, Any] = {
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "dataset": self.dataset,
            "min_accuracy": self.min_accuracy,
            "tolerance": self.tolerance,
        }
        if self.run_name:
            conf["run_name"] = self.run_name
        return conf

    def cli_args(self) -> list[str]:
        """The params as ``python -m mlopslab_pipeline train`` arguments (job.py), e.g. a Job's command."""
        args = ["--n-estimators", str(self.n_estimators), "--dataset", self.dataset,
                "--min-accuracy", repr(self.min_accuracy), "--tolerance", repr(self.tolerance)]  # fmt: skip
        if self.max_depth is not None:
            args += ["--max-depth", str(self.max_depth)]
        if self.run_name:
            args += ["--run-name", self.run_name]
        return args

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainingParams:
        max_depth = params.get("max_depth")
        return cls(
            n_estimators=int(params.get("n_estimators", DEFAULT_N_ESTIMATORS)),
            max_depth=int(max_depth) if max_depth not in (None, "", 0) else None,
            run_name=params.get("run_name") or None,
            dataset=str(params.get("dataset", DEFAULT_DATASET)),
            min_accuracy=float(params.get("min_accuracy", DEFAULT_MIN_ACCURACY)),
            tolerance=float(params.get("tolerance", DEFAULT_TOLERANCE)),
        )
