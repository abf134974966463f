"""Airflow's REST API v2, as the pipeline's callers use it: trigger `train_and_promote`, follow it.

One client for every caller: ``python -m runner train`` on the control node, and the in-cluster
pod of ``python -m mlopslab_pipeline train --via airflow`` (the first champion of a new cluster,
trained by the pipeline's own DAG). httpx and the standard library only (Airflow images have both).

The k3s lab's `train.sh`, done through Airflow's REST API v2: one call triggers one DAG run with
the training params as its conf (several can run at once: each gets its own run id), then
polls the run and its task instances until the run ends, printing task state changes, and
reads the gate's return value to tell promoted from rejected (and why).

Authentication is pluggable: any ``httpx.Auth``. Airflow 3's API wants a JWT:

- ``PasswordTokenAuth(api_url, username, password)`` gets one from ``POST /auth/token`` (the
  simple auth manager's endpoint, also served by the FAB auth manager) on first use and again
  when the API answers 401 (tokens expire);
- ``BearerTokenAuth(token)`` sends a token obtained elsewhere;
- ``auth_from_env()`` picks one of them from MLOPSLAB_AIRFLOW_TOKEN or
  MLOPSLAB_AIRFLOW_USERNAME + MLOPSLAB_AIRFLOW_PASSWORD.

Interface:

    outcome = trigger_training(api_url, auth, TrainingParams(...), wait=True, say=print)
    sys.exit(outcome.exit_code)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from mlopslab_pipeline.config import GATE_TASK_ID, TRAIN_DAG_ID, TrainingParams

DAG_ID = TRAIN_DAG_ID
# Where the simple auth manager (and FAB's) exchanges username/password for a JWT.
TOKEN_PATH = "/auth/token"  # noqa: S105 (a URL path, not a secret)
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
# Consecutive failed polls tolerated while following a run (at poll_interval apart).
MAX_POLL_FAILURES = 5
# Attempts at creating the run (the API answers 5xx while its database is busy, e.g. SQLite).
TRIGGER_ATTEMPTS = 4

Result = Literal["promoted", "rejected", "failed", "triggered", "timeout"]


class AirflowApiError(RuntimeError):
    """The run could not be triggered or followed (API unreachable, refused, DAG missing...)."""


@dataclass(frozen=True)
class TrainOutcome:
    """How one triggered run ended (or where it was when we stopped following it)."""

    dag_run_id: str
    result: Result
    state: str  # Airflow's dag run state when we stopped looking
    reason: str = ""
    version: str | None = None
    accuracy: float | None = None
    previous_champion: str | None = None
    failed_tasks: tuple[str, ...] = ()
    task_states: Mapping[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 promoted or triggered, 1 failed or timed out, 3 rejected by the gate."""
        return {"promoted": 0, "triggered": 0, "rejected": 3}.get(self.result, 1)

    def summary(self) -> str:
        if self.result == "promoted":
            previous = f" (was v{self.previous_champion})" if self.previous_champion else ""
            return f"promoted: version {self.version} is champion{previous}; {self.reason}"
        if self.result == "rejected":
            return f"rejected: version {self.version} is challenger; {self.reason}"
        if self.result == "triggered":
            return f"triggered: dag run {self.dag_run_id} is {self.state}"
        if self.result == "timeout":
            return f"timeout: {self.reason}"
        return f"failed: {self.reason}"


# --- authentication ------------------------------------------------------------------------


class BearerTokenAuth(httpx.Auth):
    """A JWT obtained elsewhere (e.g. `airflow` UI, FAB, a secrets store)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class PasswordTokenAuth(httpx.Auth):
    """Username/password exchanged for a JWT at ``POST {api_url}/auth/token``, renewed on 401."""

    def __init__(self, api_url: str, username: str, password: str, *, token_path: str = TOKEN_PATH) -> None:
        self._token_url = api_url.rstrip("/") + token_path
        self._username = username
        self._password = password
        self._token: str | None = None

    def _token_request(self) -> httpx.Request:
        return httpx.Request("POST", self._token_url, json={"username": self._username, "password": self._password})

    def _read_token(self, response: httpx.Response) -> str:
        if response.status_code not in (200, 201):
            raise AirflowApiError(
                f"Airflow refused the credentials at {self._token_url} (HTTP {response.status_code}): "
                f"{response.text[:200]}"
            )
        token = response.json().get("access_token")
        if not isinstance(token, str) or not token:
            raise AirflowApiError(f"{self._token_url} returned no access_token")
        return token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None:
            response = yield self._token_request()
            response.read()
            self._token = self._read_token(response)
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:  # expired: one fresh token, one retry
            token_response = yield self._token_request()
            token_response.read()
            self._token = self._read_token(token_response)
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


def auth_from_env(api_url: str, env: Mapping[str, str] | None = None) -> httpx.Auth:
    """MLOPSLAB_AIRFLOW_TOKEN, else MLOPSLAB_AIRFLOW_USERNAME + MLOPSLAB_AIRFLOW_PASSWORD."""
    env = os.environ if env is None else env
    token = env.get("MLOPSLAB_AIRFLOW_TOKEN")
    if token:
        return BearerTokenAuth(token)
    username, password = env.get("MLOPSLAB_AIRFLOW_USERNAME"), env.get("MLOPSLAB_AIRFLOW_PASSWORD")
    if username and password:
        return PasswordTokenAuth(api_url, username, password)
    raise AirflowApiError(
        "no Airflow credentials: set MLOPSLAB_AIRFLOW_TOKEN, or MLOPSLAB_AIRFLOW_USERNAME and MLOPSLAB_AIRFLOW_PASSWORD"
    )


# --- the API calls ---------------------------------------------------------------------------


def new_dag_run_id(run_name: str, now: datetime | None = None) -> str:
    """Readable and unique even when several runs share a name: name, UTC time, random suffix."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-")[:60] or "run"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{slug}__{stamp}__{secrets.token_hex(3)}"


def _check(response: httpx.Response, what: str) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        raise AirflowApiError(f"{what}: HTTP {response.status_code}: {str(detail)[:300]}")
    return response.json()


class _Api:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _get(self, path: str, what: str) -> Any:
        try:
            return _check(self.client.get(path), what)
        except httpx.HTTPError as error:
            raise AirflowApiError(f"{what}: {error}") from error

    def dag(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/api/v2/dags/{DAG_ID}", f"DAG {DAG_ID}")
        return result

    def trigger(self, dag_run_id: str, conf: dict[str, Any], note: str, *, sleep: Callable[[float], None]) -> None:
        """Create the run; retried on 5xx and connection errors, which is safe because the run id
        is ours: a 409 on a retry means an earlier attempt got through."""
        body = {"dag_run_id": dag_run_id, "logical_date": None, "conf": conf, "note": note}
        what = f"triggering {DAG_ID}"
        for attempt in range(1, TRIGGER_ATTEMPTS + 1):
            try:
                response = self.client.post(f"/api/v2/dags/{DAG_ID}/dagRuns", json=body)
            except httpx.HTTPError as error:
                if attempt == TRIGGER_ATTEMPTS:
                    raise AirflowApiError(f"{what}: {error}") from error
            else:
                if response.status_code == 409 and attempt > 1:
                    return
                if response.status_code < 500 or attempt == TRIGGER_ATTEMPTS:
                    _check(response, what)
                    return
            sleep(2.0 * attempt)

    def run_state(self, dag_run_id: str) -> str:
        return str(self._get(f"/api/v2/dags/{DAG_ID}/dagRuns/{dag_run_id}", "dag run")["state"])

    def task_states(self, dag_run_id: str) -> dict[str, str]:
        data = self._get(f"/api/v2/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances", "task instances")
        return {ti["task_id"]: str(ti.get("state") or "none") for ti in data["task_instances"]}

    def return_value(self, dag_run_id: str, task_id: str) -> dict[str, Any] | None:
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        try:
            response = self.client.get(path)
        except httpx.HTTPError as error:
            raise AirflowApiError(f"xcom of {task_id}: {error}") from error
        if response.status_code == 404:
            return None
        value = _check(response, f"xcom of {task_id}").get("value")
        if isinstance(value, str):  # stringified by an older API or a custom backend
            try:
                value = json.loads(value)
            except ValueError:
                return None
        return value if isinstance(value, dict) else None


def _outcome(api: _Api, dag_run_id: str, state: str, tasks: dict[str, str]) -> TrainOutcome:
    gate = api.return_value(dag_run_id, GATE_TASK_ID) if tasks.get(GATE_TASK_ID) == "success" else None
    failed = tuple(sorted(task for task, task_state in tasks.items() if task_state in ("failed", "upstream_failed")))
    common: dict[str, Any] = {"dag_run_id": dag_run_id, "state": state, "failed_tasks": failed, "task_states": tasks}
    if gate is not None:
        common.update(
            version=gate.get("version"),
            accuracy=gate.get("accuracy"),
            previous_champion=gate.get("previous_champion"),
        )
    if state == "success" and gate is not None:
        decision = gate.get("decision")
        if decision in ("promoted", "rejected"):
            return TrainOutcome(result=decision, reason=str(gate.get("reason", "")), **common)
    if state == "success":
        return TrainOutcome(result="failed", reason="the run succeeded but its gate left no decision", **common)
    if gate is not None and gate.get("decision") == "promoted":
        reason = (
            f"version {gate.get('version')} was promoted to champion, but "
            f"{', '.join(failed) or 'a later task'} failed (serving may still serve the old version)"
        )
    else:
        reason = f"task(s) {', '.join(failed) or '?'} failed; see their logs in Airflow (run {dag_run_id})"
    return TrainOutcome(result="failed", reason=reason, **common)


def trigger_training(
    api_url: str,
    auth: httpx.Auth,
    params: TrainingParams,
    wait: bool,
    say: Callable[[str], None],
    *,
    poll_interval: float = 3.0,
    timeout: float = 3600.0,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    note: str = "python -m runner train",
) -> TrainOutcome:
    """Trigger one `train_and_promote` run and, with `wait`, follow it to the end.

    `api_url` is the Airflow API server's base URL (``http://127.0.0.1:8080``, ``http://airflow.local``).
    Progress goes to `say` (one line per task state change, prefixed with the run name).
    Raises AirflowApiError when the API cannot be reached or refuses; a failed run is an outcome.
    """
    own_client = client is None
    http = client or httpx.Client(base_url=api_url.rstrip("/"), auth=auth, timeout=30.0)
    run_name = params.run_name or "run"
    label = run_name
    try:
        api = _Api(http)
        dag = api.dag()
        if dag.get("is_paused"):
            raise AirflowApiError(f"DAG {DAG_ID} is paused: unpause it in Airflow (airflow dags unpause {DAG_ID})")
        dag_run_id = new_dag_run_id(run_name)
        conf = params.dag_run_conf()
        api.trigger(dag_run_id, conf, note=f"{note} ({run_name})", sleep=sleep)
        say(f"{label} triggered {DAG_ID} run {dag_run_id} with {conf}")
        if not wait:
            return TrainOutcome(dag_run_id=dag_run_id, result="triggered", state=api.run_state(dag_run_id))

        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        state = "queued"
        poll_failures = 0
        while True:
            try:
                state = api.run_state(dag_run_id)
                tasks = api.task_states(dag_run_id)
            except AirflowApiError as error:
                # The run goes on in Airflow: ride out an API restart or a network blip.
                poll_failures += 1
                if poll_failures > MAX_POLL_FAILURES:
                    raise
                say(f"{label} cannot poll the run ({error}); retrying")
                sleep(poll_interval)
                continue
            poll_failures = 0
            for task_id, task_state in tasks.items():
                if seen.get(task_id) != task_state:
                    say(f"{label} {task_id}: {task_state}")
            seen = tasks
            if state in TERMINAL_RUN_STATES:
                break
            if time.monotonic() >= deadline:
                return TrainOutcome(
                    dag_run_id=dag_run_id,
                    result="timeout",
                    state=state,
                    reason=f"run {dag_run_id} still {state} after {timeout:.0f}s; it goes on in Airflow",
                    task_states=tasks,
                )
            sleep(poll_interval)
        outcome = _outcome(api, dag_run_id, state, tasks)
        say(f"{label} {outcome.summary()}")
        return outcome
    finally:
        if own_client:
            http.close()
