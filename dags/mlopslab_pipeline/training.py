"""Train a RandomForest on a bundled data set, log it to MLflow and register a version.

The held-out split is a pure function of the data set (fixed seed, stratified), so the gate
can score the candidate and the champion on exactly the rows neither was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from mlopslab_pipeline.config import Settings, TrainingParams

log = logging.getLogger(__name__)

_LOADERS = {"iris": load_iris, "wine": load_wine, "breast_cancer": load_breast_cancer}
TEST_SIZE = 0.3
SPLIT_SEED = 1  # arbitrary, but fixed: the champion and every candidate see the same rows
MODEL_SEED = 0
# MLflow 3 saves sklearn models with skops, which refuses unknown types on load: a tree
# ensemble needs its Tree type trusted (MLflow records the list in the MLmodel file).
SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
# Tags that link a run and its version back to the Airflow run that made them.
TAG_AIRFLOW_RUN = "mlopslab.airflow_run_id"
TAG_DATASET = "mlopslab.dataset"


@dataclass(frozen=True)
class Split:
    x_train: Any
    x_test: Any
    y_train: Any
    y_test: Any


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    version: str
    accuracy: float
    dataset: str
    run_name: str

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def load_split(dataset: str) -> Split:
    """The train/held-out split of a bundled data set, with named feature columns."""
    try:
        loader = _LOADERS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(_LOADERS)}") from None
    bunch: Any = loader(as_frame=True)
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=bunch.target
    )
    return Split(x_train, x_test, y_train, y_test)


def _pinned_requirements() -> list[str]:
    # Explicit requirements spare MLflow its inference (a subprocess that re-imports the model,
    # ~15 s a version on a small machine) and pin what the model was really trained with.
    pins = []
    for dist in ("mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy"):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return pins


def find_existing(
    client: MlflowClient, experiment_id: str, airflow_run_id: str, model_name: str
) -> TrainingResult | None:
    """A version this Airflow run already registered (a retried task must not train twice)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_AIRFLOW_RUN}` = '{airflow_run_id}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run.info.run_id}'")
    if not versions:
        return None
    return TrainingResult(
        run_id=run.info.run_id,
        version=str(versions[0].version),
        accuracy=float(run.data.metrics["accuracy"]),
        dataset=run.data.params["dataset"],
        run_name=run.info.run_name or "",
    )


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, made when missing. Parallel runs race to make it: the loser reads the
    winner's instead of failing (RESOURCE_ALREADY_EXISTS)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    made = client.get_experiment_by_name(name)
    assert made is not None, name
    return str(made.experiment_id)


def train_and_register(settings: Settings, params: TrainingParams, airflow_run_id: str) -> TrainingResult:
    """Train, log params/metrics/model with signature and input example, register a version."""
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = _experiment_id(client, settings.experiment_name)
    existing = find_existing(client, experiment_id, airflow_run_id, settings.model_name)
    if existing is not None:
        log.info("run %s already registered version %s; not training again", airflow_run_id, existing.version)
        return existing

    split = load_split(params.dataset)
    model = RandomForestClassifier(
        n_estimators=params.n_estimators, max_depth=params.max_depth, random_state=MODEL_SEED, n_jobs=1
    )
    model.fit(split.x_train, split.y_train)
    predictions = model.predict(split.x_test)
    accuracy = float(accuracy_score(split.y_test, predictions))
    f1_macro = float(f1_score(split.y_test, predictions, average="macro"))

    if settings.tracking_uri:
        mlflow.set_tracking_uri(settings.tracking_uri)
    run_name = params.run_name or airflow_run_id
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags={TAG_AIRFLOW_RUN: airflow_run_id, TAG_DATASET: params.dataset},
    ) as run:
        mlflow.log_params(
            {
                "n_estimators": params.n_estimators,
                "max_depth": params.max_depth,
                "dataset": params.dataset,
                "test_size": TEST_SIZE,
                "split_seed": SPLIT_SEED,
                "random_state": MODEL_SEED,
            }
        )
        mlflow.log_metrics({"accuracy": accuracy, "f1_macro": f1_macro})
        example = split.x_train.head(3)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict(example)),
            input_example=example,
            registered_model_name=settings.model_name,
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            pip_requirements=_pinned_requirements(),
        )
    model_version = str(info.registered_model_version)
    for key, value in {
        TAG_DATASET: params.dataset,
        TAG_AIRFLOW_RUN: airflow_run_id,
        "mlopslab.run_name": run_name,
        "mlopslab.accuracy": f"{accuracy:.6f}",
    }.items():
        client.set_model_version_tag(settings.model_name, model_version, key, value)
    log.info(
        "run %s (%s) registered %s version %s, held-out accuracy %.4f",
        run.info.run_id,
        run_name,
        settings.model_name,
        model_version,
        accuracy,
    )
    return TrainingResult(
        run_id=run.info.run_id,
        version=model_version,
        accuracy=accuracy,
        dataset=params.dataset,
        run_name=run_name,
    )
