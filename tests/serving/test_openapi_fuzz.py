"""Schemathesis against a real server process: nothing in the OpenAPI spec yields a server error.

The CLI (not the pytest plugin) drives it: one bounded run over every operation, with the
reload token so the authorised path is exercised too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mlflow_server import MlflowServer, RegisteredIris
from tests.support.serving_app import TOKEN, UvicornServer

pytestmark = pytest.mark.mlflow

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_error(
    module_champion: RegisteredIris, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    server = UvicornServer(
        {
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "SERVING_MODEL_NAME": module_champion.name,
            "SERVING_RELOAD_TOKEN": TOKEN,
            "SERVING_MAX_BATCH_ROWS": "20",
        },
        tmp_path / "uvicorn.log",
    )
    try:
        server.wait_ready()
        schemathesis = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [str(schemathesis), "run", f"{server.url}/openapi.json", "--checks", CHECKS,
             "--max-examples", "30", "--phases", "examples,coverage,fuzzing", "--workers", "1",
             "--max-time", "20", "--request-timeout", "10", "--seed", "6",
             "--header", f"Authorization: Bearer {TOKEN}"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "/predict" in result.stdout
        assert server.process.poll() is None
    finally:
        server.stop()
