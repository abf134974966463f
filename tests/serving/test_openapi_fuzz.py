"""Schemathesis against a real server process: no server error and no mismatch with the schema.

The CLI (not the pytest plugin) drives it: one bounded run over every operation (/predict,
/invocations, the webhook, /replicas... all of them), with the reload token so the authorised
path is exercised too, and webhooks enabled (unsigned fuzzed deliveries must get their
documented 401/403, never a 500). Besides server errors it checks status codes, content types
and response bodies against the schema, and that what the schema calls invalid is refused
(`negative_data_rejection`: e.g. `features` and `columns` together).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.mlflow_server import MlflowServer, RegisteredIris
from tests.support.serving_app import TOKEN, UvicornServer

# Bounded by examples, not by time: a time budget tests fewer operations on a slower machine.
pytestmark = [pytest.mark.mlflow, pytest.mark.timeout(900)]

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
    "negative_data_rejection"
)


def test_schemathesis_finds_no_server_error(
    module_champion: RegisteredIris, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    server = UvicornServer(
        {
            "MLFLOW_TRACKING_URI": mlflow_server.url,
            "SERVING_MODEL_NAME": module_champion.name,
            "SERVING_RELOAD_TOKEN": TOKEN,
            "SERVING_MAX_BATCH_ROWS": "20",
            "SERVING_WEBHOOK_SECRET": "fuzz-webhook-secret-0123456789",
        },
        tmp_path / "uvicorn.log",
    )
    try:
        server.wait_ready()
        schemathesis = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [str(schemathesis), "run", f"{server.url}/openapi.json", "--checks", CHECKS,
             "--max-examples", "30", "--phases", "examples,coverage,fuzzing", "--workers", "1",
             "--request-timeout", "10", "--seed", "6",
             "--header", f"Authorization: Bearer {TOKEN}"],
            capture_output=True, text=True, timeout=540, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        spec = httpx.get(f"{server.url}/openapi.json").json()
        operations = sum(len(methods) for methods in spec["paths"].values())
        assert operations >= 11  # /predict, /invocations, /webhooks/mlflow, /replicas, /reload... all of them
        assert re.search(rf"Tested:\s+{operations}\b", result.stdout), result.stdout[-3000:]
        assert server.process.poll() is None
    finally:
        server.stop()
