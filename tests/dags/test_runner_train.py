"""runner.train: `python -m runner train` against Airflow's REST API v2.

The auth flow and the outcome rules are checked on recorded API exchanges; the whole command
runs against a real Airflow (api-server, scheduler, dag-processor) and a real MLflow server.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from mlopslab_pipeline.job import parse_outcome
from rich.console import Console

from runner.train import (
    PasswordTokenAuth,
    TrainError,
    TrainOutcome,
    TrainParams,
    auth_from_env,
    new_dag_run_id,
    trigger_training,
)
from tests.dags.conftest import AirflowHome


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, color_system=None), buffer


def test_params_become_the_dag_run_conf() -> None:
    params = TrainParams(n_estimators=200, max_depth=20, run_name="exp-1")
    assert params.dag_run_conf() == {
        "n_estimators": 200,
        "max_depth": 20,
        "run_name": "exp-1",
        "dataset": "iris",
        "min_accuracy": 0.9,  # the DAG's own defaults (one source: mlopslab_pipeline.config)
        "tolerance": 0.01,
    }
    tuned = TrainParams(100, None, "x", dataset="wine", min_accuracy=0.8, tolerance=0.0)
    assert tuned.dag_run_conf()["min_accuracy"] == 0.8
    assert tuned.dag_run_conf()["tolerance"] == 0.0
    with pytest.raises(ValueError, match="dataset"):
        TrainParams(100, None, "x", dataset="mnist")
    with pytest.raises(ValueError, match="run_name"):
        TrainParams(100, None, " ")


def test_dag_run_ids_are_unique_and_readable() -> None:
    first, second = new_dag_run_id("exp 1/a"), new_dag_run_id("exp 1/a")
    assert first != second
    assert first.startswith("exp-1-a__")


def test_exit_codes() -> None:
    assert TrainOutcome("r", "promoted", "success").exit_code == 0
    assert TrainOutcome("r", "triggered", "queued").exit_code == 0
    assert TrainOutcome("r", "rejected", "success").exit_code == 3
    assert TrainOutcome("r", "failed", "failed").exit_code == 1
    assert TrainOutcome("r", "timeout", "running").exit_code == 1


def test_auth_from_env() -> None:
    assert isinstance(
        auth_from_env("http://a", {"MLOPSLAB_AIRFLOW_USERNAME": "u", "MLOPSLAB_AIRFLOW_PASSWORD": "p"}),
        PasswordTokenAuth,
    )
    with pytest.raises(TrainError, match="no Airflow credentials"):
        auth_from_env("http://a", {})


def test_password_auth_renews_an_expired_token() -> None:
    issued: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            body = json.loads(request.content)
            if body != {"username": "admin", "password": "pw"}:
                return httpx.Response(401, json={"detail": "Invalid credentials"})
            issued.append(f"token-{len(issued)}")
            return httpx.Response(201, json={"access_token": issued[-1]})
        # The first token has "expired" by the time /b is called.
        expired = request.url.path == "/b" and issued[-1] == "token-0"
        if expired or request.headers.get("Authorization") != f"Bearer {issued[-1]}":
            return httpx.Response(401, json={"detail": "expired"})
        return httpx.Response(200, json={"ok": request.url.path})

    transport = httpx.MockTransport(api)
    with httpx.Client(
        transport=transport, base_url="http://airflow", auth=PasswordTokenAuth("http://airflow", "admin", "pw")
    ) as client:
        assert client.get("/a").json() == {"ok": "/a"}
        assert client.get("/b").json() == {"ok": "/b"}
    assert issued == ["token-0", "token-1"]
    with (
        httpx.Client(
            transport=transport, base_url="http://airflow", auth=PasswordTokenAuth("http://airflow", "admin", "bad")
        ) as client,
        pytest.raises(TrainError, match="refused the credentials"),
    ):
        client.get("/a")


def _recorded_airflow(run_state: str, tasks: dict[str, str], gate: dict[str, object] | None) -> httpx.MockTransport:
    """Airflow's API as it answers once the run has ended (shapes as served by Airflow 3.2)."""

    def api(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v2/dags/train_and_promote":
            return httpx.Response(200, json={"dag_id": "train_and_promote", "is_paused": False})
        if request.method == "POST" and path == "/api/v2/dags/train_and_promote/dagRuns":
            body = json.loads(request.content)
            assert body["logical_date"] is None
            return httpx.Response(200, json={"dag_run_id": body["dag_run_id"], "state": "queued"})
        if path.endswith("/taskInstances"):
            return httpx.Response(200, json={"task_instances": [{"task_id": t, "state": s} for t, s in tasks.items()]})
        if path.endswith("/taskInstances/gate/xcomEntries/return_value"):
            return httpx.Response(200, json={"value": gate}) if gate else httpx.Response(404, json={})
        if "/dagRuns/" in path:
            return httpx.Response(200, json={"state": run_state})
        return httpx.Response(404, json={"detail": path})

    return httpx.MockTransport(api)


@pytest.mark.parametrize(
    ("run_state", "tasks", "gate", "result", "says"),
    [
        (
            "success",
            {"train": "success", "gate": "success", "notify_serving": "skipped"},
            {"decision": "rejected", "reason": "accuracy 0.6667 is below the minimum 0.9000", "version": "2"},
            "rejected",
            "rejected: version 2 is challenger; accuracy 0.6667 is below the minimum 0.9000",
        ),
        (
            "failed",
            {"train": "success", "gate": "success", "notify_serving": "failed"},
            {"decision": "promoted", "reason": "ok", "version": "3", "previous_champion": "1"},
            "failed",
            "version 3 was promoted to champion, but notify_serving failed",
        ),
        (
            "failed",
            {"train": "failed", "gate": "upstream_failed", "notify_serving": "upstream_failed"},
            None,
            "failed",
            "task(s) gate, notify_serving, train failed",
        ),
    ],
)
def test_outcome_rules(
    run_state: str, tasks: dict[str, str], gate: dict[str, object] | None, result: str, says: str
) -> None:
    console, buffer = _console()
    with httpx.Client(transport=_recorded_airflow(run_state, tasks, gate), base_url="http://airflow") as client:
        outcome = trigger_training(
            "http://airflow", httpx.Auth(), TrainParams(10, None, "exp"), wait=True, console=console,
            client=client, sleep=lambda _: None,
        )  # fmt: skip
    assert outcome.result == result
    assert says in outcome.summary()
    assert says in buffer.getvalue()


# --- against a real Airflow -------------------------------------------------------------------


@pytest.mark.airflow
@pytest.mark.mlflow
def test_runner_trains_through_the_airflow_api(
    airflow_python: Path, mlflow_tracking_uri: str, unique_model_name: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from tests.dags.airflow_stack import ADMIN_USER, start_airflow_stack

    home = AirflowHome(airflow_python, tmp_path / "airflow")
    home.home.mkdir()
    migrated = home.run("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    stack = start_airflow_stack(
        home, {"MLFLOW_TRACKING_URI": mlflow_tracking_uri, "MLOPSLAB_MODEL_NAME": unique_model_name}
    )
    try:
        with pytest.raises(TrainError, match="refused the credentials"):
            trigger_training(
                stack.url, PasswordTokenAuth(stack.url, ADMIN_USER, "wrong"), TrainParams(5, None, "nope"),
                wait=True, console=_console()[0],
            )  # fmt: skip

        # Two runs at once, as the seed ran its experiments: a good one and a deliberately bad one.
        auth = PasswordTokenAuth(stack.url, ADMIN_USER, stack.password)
        runs = {
            "exp-good": TrainParams(30, None, "exp-good"),
            "exp-bad": TrainParams(3, 1, "exp-bad", min_accuracy=0.95),
        }
        outcomes: dict[str, TrainOutcome] = {}
        outputs: dict[str, io.StringIO] = {}
        errors: list[BaseException] = []

        def follow(name: str) -> None:
            console, outputs[name] = _console()
            try:
                outcomes[name] = trigger_training(
                    stack.url, auth, runs[name], wait=True, console=console, poll_interval=1.0, timeout=600
                )
            except BaseException as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=follow, args=(name,)) for name in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, f"{errors}\n{stack.logs()}"
        good, bad = outcomes["exp-good"], outcomes["exp-bad"]
        assert good.result == "promoted", (good, stack.logs())
        assert bad.result == "rejected", (bad, stack.logs())
        assert "below the minimum 0.9500" in bad.reason
        assert good.dag_run_id != bad.dag_run_id
        assert "exp-good gate: success" in outputs["exp-good"].getvalue()
        assert "promoted: version" in outputs["exp-good"].getvalue()

        client = MlflowClient(mlflow_tracking_uri)
        assert client.get_model_version_by_alias(unique_model_name, "champion").version == good.version
        assert client.get_model_version_by_alias(unique_model_name, "challenger").version == bad.version
        assert (
            client.get_run(client.get_model_version(unique_model_name, good.version).run_id).info.run_name == "exp-good"
        )

        # The pipeline's own CLI through the same client, as the in-cluster first-champion pod runs it.
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MLOPSLAB_", "MLFLOW_"))},
            "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
            "MLOPSLAB_MODEL_NAME": unique_model_name,
            "MLOPSLAB_AIRFLOW_URL": stack.url,
            "MLOPSLAB_AIRFLOW_USERNAME": ADMIN_USER,
            "MLOPSLAB_AIRFLOW_PASSWORD": stack.password,
        }
        command = [sys.executable, "-m", "mlopslab_pipeline", "train", "--via", "airflow", "--run-name", "exp-cli"]
        kept = subprocess.run([*command, "--if-no-champion"], env=env, capture_output=True, text=True, check=False)
        assert kept.returncode == 0, kept.stderr[-3000:]
        assert parse_outcome(kept.stdout)["decision"] == "kept"  # type: ignore[index]
        weak = subprocess.run(
            [*command, "--n-estimators", "2", "--max-depth", "1", "--min-accuracy", "0.99"],
            env=env, capture_output=True, text=True, check=False, timeout=900,
        )  # fmt: skip
        assert weak.returncode == 3, weak.stderr[-3000:]
        through_dag = parse_outcome(weak.stdout)
        assert through_dag is not None
        assert through_dag["decision"] == "rejected"
        assert through_dag["run_id"].startswith("exp-cli__")
        assert "exp-cli gate: success" in weak.stderr

        # --no-wait: triggered and handed back at once.
        console, _ = _console()
        triggered = trigger_training(stack.url, auth, TrainParams(5, None, "exp-later"), wait=False, console=console)
        assert triggered.result == "triggered"
        assert triggered.exit_code == 0
    finally:
        stack.stop()


def test_following_rides_out_api_blips() -> None:
    recorded = _recorded_airflow(
        "success",
        {"train": "success", "gate": "success", "notify_serving": "success"},
        {"decision": "promoted", "reason": "ok", "version": "1", "previous_champion": None},
    )
    blips = {"left": 2}

    def flaky(request: httpx.Request) -> httpx.Response:
        if "/dagRuns/" in request.url.path and blips["left"] > 0:
            blips["left"] -= 1
            return httpx.Response(503, json={"detail": "restarting"})
        return recorded.handler(request)  # type: ignore[no-any-return]

    console, buffer = _console()
    with httpx.Client(transport=httpx.MockTransport(flaky), base_url="http://airflow") as client:
        outcome = trigger_training(
            "http://airflow", httpx.Auth(), TrainParams(10, None, "exp"), wait=True, console=console,
            client=client, sleep=lambda _: None,
        )  # fmt: skip
    assert outcome.result == "promoted"
    assert buffer.getvalue().count("cannot poll the run") == 2


def test_trigger_is_retried_with_the_same_run_id() -> None:
    recorded = _recorded_airflow(
        "success",
        {"train": "success", "gate": "success", "notify_serving": "skipped"},
        {"decision": "rejected", "reason": "worse", "version": "2"},
    )
    posted: list[str] = []

    def busy_then_through(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.append(json.loads(request.content)["dag_run_id"])
            if len(posted) == 1:  # the database was busy, but the run was created anyway
                return httpx.Response(500, json={"detail": "Internal Server Error"})
            return httpx.Response(409, json={"detail": "already exists"})
        return recorded.handler(request)  # type: ignore[no-any-return]

    console, _ = _console()
    with httpx.Client(transport=httpx.MockTransport(busy_then_through), base_url="http://airflow") as client:
        outcome = trigger_training(
            "http://airflow", httpx.Auth(), TrainParams(10, None, "exp"), wait=True, console=console,
            client=client, sleep=lambda _: None,
        )  # fmt: skip
    assert outcome.result == "rejected"
    assert len(posted) == 2
    assert posted[0] == posted[1] == outcome.dag_run_id
