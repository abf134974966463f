"""``python -m mlopslab_pipeline train``: the pipeline without Airflow, as a Kubernetes Job runs it.

Real processes against the session's real MLflow server: exit codes and the outcome line a
follower reads, the same registry tags as the DAG, a Job retried under the same pod name that
does not train twice, and several runs at once that leave one linear champion history.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlopslab_pipeline.config import TrainingParams
from mlopslab_pipeline.job import _parser, parse_outcome, training_params

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def _run(tracking_uri: str, model: str, *args: str, run_id: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPSLAB_", "MLFLOW_"))}
    env.update({"PYTHONPATH": str(DAGS_DIR), "MLFLOW_TRACKING_URI": tracking_uri, "MLOPSLAB_MODEL_NAME": model})
    if run_id:
        env["MLOPSLAB_RUN_ID"] = run_id
    return subprocess.run(
        [sys.executable, "-m", "mlopslab_pipeline", "train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(
    "params",
    [
        TrainingParams(),
        TrainingParams(
            n_estimators=200, max_depth=20, run_name="exp-1", dataset="wine", min_accuracy=0.8, tolerance=0.1
        ),
    ],
)
def test_params_become_the_jobs_arguments_and_back(params: TrainingParams) -> None:
    """`python -m runner train --via job` hands the run's params to the pod as arguments."""
    assert training_params(_parser().parse_args(["train", *params.cli_args()])) == params


@pytest.mark.mlflow
def test_job_promotes_then_rejects_with_exit_codes(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    from mlflow import MlflowClient

    first = _run(mlflow_tracking_uri, unique_model_name, "--n-estimators", "20", "--run-name", "baseline")
    outcome = parse_outcome(first.stdout)
    assert first.returncode == 0, first.stderr[-3000:]
    assert outcome is not None, first.stdout
    assert outcome["decision"] == "promoted", first.stdout
    assert outcome["previous_champion"] is None
    client = MlflowClient(mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(unique_model_name, "champion")
    assert str(champion.version) == outcome["version"]
    assert champion.tags["mlopslab.promoted_via"].startswith("job/")
    assert champion.tags["mlopslab.gate_decision"] == "promoted"

    weak = _run(
        mlflow_tracking_uri, unique_model_name, "--n-estimators", "1", "--max-depth", "1", "--min-accuracy", "0.99"
    )
    rejected = parse_outcome(weak.stdout)
    assert weak.returncode == 3, weak.stderr[-3000:]
    assert rejected is not None
    assert rejected["decision"] == "rejected"
    assert "below the minimum" in rejected["reason"]
    assert str(client.get_model_version_by_alias(unique_model_name, "champion").version) == outcome["version"]
    assert str(client.get_model_version_by_alias(unique_model_name, "challenger").version) == rejected["version"]


@pytest.mark.mlflow
def test_job_refuses_bad_params_and_missing_configuration(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    bad = _run(mlflow_tracking_uri, unique_model_name, "--n-estimators", "0")
    assert bad.returncode == 2
    assert "n_estimators must be >= 1" in parse_outcome(bad.stdout)["reason"]  # type: ignore[index]
    unnamed = _run(mlflow_tracking_uri, "", "--n-estimators", "5")
    assert unnamed.returncode == 2
    assert "MLOPSLAB_MODEL_NAME" in parse_outcome(unnamed.stdout)["reason"]  # type: ignore[index]


@pytest.mark.mlflow
def test_a_retried_job_reuses_its_version(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    from mlflow import MlflowClient

    first = parse_outcome(_run(mlflow_tracking_uri, unique_model_name, "--n-estimators", "10", run_id="pod-x").stdout)
    again = parse_outcome(_run(mlflow_tracking_uri, unique_model_name, "--n-estimators", "10", run_id="pod-x").stdout)
    assert first is not None
    assert again is not None
    assert again["version"] == first["version"]
    assert again["decision"] == "promoted"
    versions = MlflowClient(mlflow_tracking_uri).search_model_versions(f"name = '{unique_model_name}'")
    assert len(versions) == 1


@pytest.mark.mlflow
def test_parallel_jobs_leave_one_linear_champion_history(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    """Three experiments at once (the k3s lab's parallel runs): every promotion names the
    champion it really replaced, so the previous-champion chain has no fork."""
    from mlflow import MlflowClient

    runs = [("more-trees", "200", None), ("deeper-trees", "100", "20"), ("optimized", "300", "15")]

    def one(run: tuple[str, str, str | None]) -> subprocess.CompletedProcess[str]:
        name, trees, depth = run
        args = ["--run-name", name, "--n-estimators", trees] + (["--max-depth", depth] if depth else [])
        return _run(mlflow_tracking_uri, unique_model_name, *args)

    with ThreadPoolExecutor(len(runs)) as pool:
        results = list(pool.map(one, runs))
    outcomes = [parse_outcome(result.stdout) for result in results]
    assert all(o is not None and o["decision"] in ("promoted", "rejected") for o in outcomes), [
        r.stderr[-2000:] for r in results
    ]
    promoted = [o for o in outcomes if o is not None and o["decision"] == "promoted"]
    assert promoted
    client = MlflowClient(mlflow_tracking_uri)
    previous = [
        client.get_model_version(unique_model_name, o["version"]).tags["mlopslab.previous_champion"] for o in promoted
    ]
    assert len(set(previous)) == len(previous), f"two promotions replaced the same champion: {previous}"
    # Walking back from the champion visits every promoted version exactly once.
    chain, version = [], str(client.get_model_version_by_alias(unique_model_name, "champion").version)
    while version:
        chain.append(version)
        version = client.get_model_version(unique_model_name, version).tags.get("mlopslab.previous_champion", "")
    assert sorted(chain) == sorted(o["version"] for o in promoted)


@pytest.mark.mlflow
def test_if_no_champion_keeps_an_existing_champion(mlflow_tracking_uri: str, unique_model_name: str) -> None:
    """A platform's second bootstrap runs the first-champion step again: it must not retrain."""
    from mlflow import MlflowClient

    first = _run(mlflow_tracking_uri, unique_model_name, "--n-estimators", "10", "--if-no-champion")
    trained = parse_outcome(first.stdout)
    assert first.returncode == 0, first.stderr[-3000:]
    assert trained is not None
    assert trained["decision"] == "promoted"
    again = _run(mlflow_tracking_uri, unique_model_name, "--n-estimators", "10", "--if-no-champion")
    kept = parse_outcome(again.stdout)
    assert again.returncode == 0
    assert kept is not None
    assert kept["decision"] == "kept"
    assert kept["version"] == trained["version"]
    assert len(MlflowClient(mlflow_tracking_uri).search_model_versions(f"name = '{unique_model_name}'")) == 1
