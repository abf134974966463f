"""POST /invocations answers like the real `mlflow models serve` on the same registered model:
same inputs, same outputs; same status and MLflow error code for bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_iris

from tests.support.mlflow_server import MlflowServer, RegisteredIris, free_port
from tests.support.serving_app import TOKEN, UvicornServer, wait_for

pytestmark = [pytest.mark.mlflow, pytest.mark.timeout(600)]

COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = load_iris().data[::15].tolist()  # 10 rows, all three classes
JSON = "application/json"


def _csv(rows: list[list[float]], columns: list[str]) -> str:
    return "\n".join([",".join(columns), *(",".join(str(v) for v in row) for row in rows)]) + "\n"


# (id, content type, body): the body is sent as these exact bytes to both servers.
CASES: list[tuple[str, str, str]] = [
    ("split", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS, "data": ROWS}})),
    ("split-reordered", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS[::-1],
                                                              "data": [r[::-1] for r in ROWS]}})),
    ("records", JSON, json.dumps({"dataframe_records": [dict(zip(COLUMNS, r, strict=True)) for r in ROWS]})),
    ("instances-records", JSON, json.dumps({"instances": [dict(zip(COLUMNS, r, strict=True)) for r in ROWS]})),
    ("inputs-columns", JSON, json.dumps({"inputs": {c: [r[i] for r in ROWS] for i, c in enumerate(COLUMNS)}})),
    ("integers", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[5, 3, 1, 0]]}})),
    ("extra-column", JSON, json.dumps({"dataframe_split": {"columns": [*COLUMNS, "x"], "data": [[*ROWS[0], 1]]}})),
    ("with-params", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS, "data": ROWS[:1]}, "params": {}})),
    ("csv", "text/csv", _csv(ROWS, COLUMNS)),
    ("charset-utf8", "application/json; charset=utf-8",
     json.dumps({"dataframe_split": {"columns": COLUMNS, "data": ROWS[:2]}})),
    # bad input
    ("missing-column", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS[:3], "data": [r[:3] for r in ROWS]}})),
    ("string-value", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [["a", 3.5, 1.4, 0.2]]}})),
    ("instances-lists", JSON, json.dumps({"instances": ROWS[:2]})),
    ("no-format-key", JSON, json.dumps({"data": ROWS})),
    ("two-format-keys", JSON, json.dumps({"instances": ROWS[:1], "inputs": ROWS[:1]})),
    ("a-list", JSON, json.dumps(ROWS)),
    ("not-json", JSON, '{"dataframe_split": '),
    ("beyond-float32", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[1e300, 3.5, 1.4, 0.2]]}})),
    ("no-rows", JSON, json.dumps({"dataframe_split": {"columns": COLUMNS, "data": []}})),
    ("csv-missing-column", "text/csv", _csv([r[:3] for r in ROWS], COLUMNS[:3])),
    ("text-plain", "text/plain", "5.1,3.5,1.4,0.2"),
    ("latin-1", "application/json; charset=latin-1", "{}"),
    ("unknown-parameter", "application/json; format=pandas-split", "{}"),
]  # fmt: skip


@pytest.fixture(scope="module")
def servers(
    module_champion: RegisteredIris, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(URL of `mlflow models serve`, URL of this server), both on version 1 of the same model."""
    logs = tmp_path_factory.mktemp("invocations")
    venv_bin = str(Path(sys.executable).parent)
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": mlflow_server.url,
    }
    with open(logs / "mlflow-models-serve.log", "wb") as log:
        reference = subprocess.Popen(
            [f"{venv_bin}/mlflow", "models", "serve", "-m", module_champion.model_uri, "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    ours = UvicornServer(
        {"MLFLOW_TRACKING_URI": mlflow_server.url, "SERVING_MODEL_NAME": module_champion.name,
         "SERVING_RELOAD_TOKEN": TOKEN},
        logs / "serving.log",
    )  # fmt: skip
    reference_url = f"http://127.0.0.1:{port}"

    def reference_up() -> bool:
        if reference.poll() is not None:
            raise AssertionError((logs / "mlflow-models-serve.log").read_text()[-3000:])
        try:
            return httpx.get(f"{reference_url}/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        ours.wait_ready()
        wait_for(reference_up, 240, "mlflow models serve", interval=0.5)
        yield reference_url, ours.url
    finally:
        ours.stop()
        os.killpg(reference.pid, 15)
        reference.wait(timeout=30)


def _post(url: str, content_type: str, body: str) -> httpx.Response:
    return httpx.post(f"{url}/invocations", content=body.encode(), headers={"Content-Type": content_type}, timeout=60)


_SET_LITERAL = re.compile(r"\{('[^']*'(?:, '[^']*')+)\}")


def _message(text: str) -> str:
    """An MLflow message up to its traceback, with set literals sorted (their order is per process)."""
    head = text.split("Traceback")[0]
    return _SET_LITERAL.sub(lambda m: "{" + ", ".join(sorted(m[1].split(", "))) + "}", head)


def _comparable(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith(JSON):
        return response.json()
    return response.text


@pytest.mark.parametrize(("content_type", "body"), [pytest.param(t, b, id=i) for i, t, b in CASES])
def test_same_answer_as_mlflow_models_serve(servers: tuple[str, str], content_type: str, body: str) -> None:
    reference_url, ours_url = servers
    expected, actual = _post(reference_url, content_type, body), _post(ours_url, content_type, body)
    assert actual.status_code == expected.status_code, (expected.text[:500], actual.text[:500])
    assert actual.headers["content-type"].split(";")[0] == expected.headers["content-type"].split(";")[0]
    if expected.status_code == 200:
        assert actual.text == expected.text  # byte for byte: same predictions, same encoding
        assert actual.headers["x-model-version"] == "1"
        return
    assert expected.status_code in (400, 415), expected.text[:500]  # the comparison covers real refusals
    want, got = _comparable(expected), _comparable(actual)
    if isinstance(want, dict):
        assert got["error_code"] == want["error_code"]
        assert got.get("error_class") == want.get("error_class")
        assert "stack_trace" not in want or "stack_trace" in got
        # Messages quote the data and MLflow's own wording: the same up to the traceback.
        assert _message(got["message"]) == _message(want["message"])
    else:
        assert got == want


def test_every_case_is_covered(servers: tuple[str, str]) -> None:
    """The cases above include successes and refusals of both kinds (so the comparison means something)."""
    reference_url, _ = servers
    statuses = {_post(reference_url, t, b).status_code for _, t, b in CASES}
    assert statuses == {200, 400, 415}
