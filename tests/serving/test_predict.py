"""Prediction API against a real MLflow registry: the seed's call, batches, columns, bad input."""

from __future__ import annotations

import math
from typing import Any

import mlflow.pyfunc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris

from tests.support.mlflow_server import MlflowServer, RegisteredIris

pytestmark = pytest.mark.mlflow

SEED_ROW = [5.1, 3.5, 1.4, 0.2]


def test_seed_curl_body_returns_the_iris_prediction(client: TestClient, module_champion: RegisteredIris) -> None:
    response = client.post("/predict", json={"features": SEED_ROW})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predictions"] == [0]  # setosa
    assert body["model_version"] == module_champion.version == "1"
    assert body["model_name"] == module_champion.name
    assert response.headers["x-model-version"] == "1"
    assert "probabilities" not in body  # opt-in
    assert "labels" not in body


def test_batches_and_columns_equal_the_model_on_each_row_alone(
    client: TestClient, module_champion: RegisteredIris
) -> None:
    data: Any = load_iris(as_frame=True)
    frame = data.data.iloc[::5]  # 30 rows covering the three classes
    reference = mlflow.pyfunc.load_model(module_champion.model_uri)
    expected = [int(reference.predict(frame.iloc[[i]])[0]) for i in range(len(frame))]
    assert len(set(expected)) == 3

    batch = client.post("/predict", json={"features": frame.to_numpy().tolist()})
    assert batch.status_code == 200, batch.text
    assert batch.json()["predictions"] == expected

    columns = {name: frame[name].tolist() for name in reversed(frame.columns)}  # order must not matter
    named = client.post("/predict", json={"columns": columns})
    assert named.status_code == 200, named.text
    assert named.json()["predictions"] == expected

    one_row = {name: float(frame[name].iloc[-1]) for name in frame.columns}
    single = client.post("/predict", json={"columns": one_row})
    assert single.json()["predictions"] == [expected[-1]]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        pytest.param({"features": [5.1, 3.5, 1.4]}, 422, "has 3 values", id="too-few-features"),
        pytest.param({"features": [[5.1, 3.5, 1.4, 0.2], [1, 2, 3, 4, 5]]}, 422, "features[1] has 5", id="ragged"),
        pytest.param({"features": [5.1, "x", 1.4, 0.2]}, 422, "valid number", id="non-numeric"),
        pytest.param({"features": ["5.1", 3.5, 1.4, 0.2]}, 422, "valid number", id="numeric-string"),
        pytest.param({"features": [True, 3.5, 1.4, 0.2]}, 422, "valid number", id="boolean"),
        pytest.param({"features": []}, 422, "empty input", id="empty-features"),
        pytest.param({"features": [[]]}, 422, "has 0 values", id="empty-row"),
        pytest.param({"columns": {}}, 422, "empty input", id="empty-columns"),
        pytest.param({}, 422, "exactly one of", id="nothing"),
        pytest.param({"features": SEED_ROW, "columns": {"a": 1.0}}, 422, "exactly one of", id="both"),
        pytest.param({"columns": {"sepal length (cm)": 5.1}}, 422, "missing columns", id="missing-columns"),
        pytest.param({"feature": SEED_ROW}, 422, "Extra inputs", id="unknown-field"),
        pytest.param({"features": [[*SEED_ROW]] * 51}, 413, "over the limit of 50", id="batch-over-limit"),
        pytest.param({"features": [1e300, 3.5, 1.4, 0.2]}, 422, "rejected the input", id="beyond-float32"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(
    client: TestClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client: TestClient, token: str) -> None:
    response = client.post(
        "/predict",
        content=f'{{"features": [{token}, 3.5, 1.4, 0.2]}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "finite number" in response.json()["detail"]


def test_unknown_and_extra_columns_are_named(client: TestClient) -> None:
    names = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    columns: dict[str, Any] = {name: [1.0] for name in names[:3]}
    columns["petal_width"] = [0.2]
    detail = client.post("/predict", json={"columns": columns}).json()["detail"]
    assert "missing columns ['petal width (cm)']" in detail
    assert "unknown columns ['petal_width']" in detail


def test_malformed_json_and_oversized_body(client: TestClient) -> None:
    broken = client.post("/predict", content=b'{"features": [5.1,', headers={"content-type": "application/json"})
    assert broken.status_code == 422
    assert "JSON" in broken.json()["detail"]
    huge = client.post("/predict", content=b"[" + b"1," * (3 * 1024 * 1024) + b"1]")
    assert huge.status_code == 413


def test_a_bad_request_in_a_batch_does_not_fail_its_neighbours(client: TestClient) -> None:
    # Concurrent requests share predict calls; one the model refuses must not fail the others.
    import concurrent.futures

    bodies = [{"features": SEED_ROW}] * 6 + [{"features": [1e300, 1, 1, 1]}] + [{"features": SEED_ROW}] * 6
    with concurrent.futures.ThreadPoolExecutor(max_workers=13) as pool:
        statuses = list(pool.map(lambda b: client.post("/predict", json=b).status_code, bodies))
    assert statuses == [200] * 6 + [422] + [200] * 6


def test_info_health_readiness_and_openapi(client: TestClient, module_champion: RegisteredIris) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/model").json()
    assert info["loaded"] is True
    assert info["name"] == module_champion.name
    assert info["alias"] == "champion"
    assert info["version"] == "1"
    assert info["run_id"] == module_champion.run_id
    assert info["loaded_at"]
    assert info["last_swap_at"]
    assert info["last_error"] is None
    assert info["feature_names"] == [
        "sepal length (cm)",
        "sepal width (cm)",
        "petal length (cm)",
        "petal width (cm)",
    ]
    assert info["fast_path"] is True
    assert info["predictor"] == "forest"
    assert info["classes"] == [0, 1, 2]
    assert info["class_labels"] == ["setosa", "versicolor", "virginica"]  # the model's class_names metadata
    for path in ("/healthz", "/model", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).headers["x-model-version"] == "1", path
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/model", "/reload", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in client.get("/docs").text
    assert "cdn" not in client.get("/redoc").text
    assert client.get("/docs-assets/redoc.standalone.js").status_code == 200
    assert client.post("/webhooks/mlflow", json={}).status_code == 404  # no SERVING_WEBHOOK_SECRET
    assert not math.isnan(np.float64(info["n_features"]))


def test_concurrent_single_rows_are_batched_and_each_equals_its_own_prediction(
    module_champion: RegisteredIris, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import concurrent.futures

    from serving.app.config import Settings
    from serving.app.main import create_app
    from tests.support.serving_app import metric_value

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    data: Any = load_iris(as_frame=True)
    frame = data.data.iloc[::4]  # 38 rows, all three classes
    reference = mlflow.pyfunc.load_model(module_champion.model_uri)
    expected = [int(reference.predict(frame.iloc[[i]])[0]) for i in range(len(frame))]
    rows = frame.to_numpy().tolist()
    # A long batch wait makes the grouping deterministic enough to observe.
    settings = Settings(model_name=module_champion.name, batch_max_wait_ms=300)
    with TestClient(create_app(settings)) as client, concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
        responses = list(pool.map(lambda row: client.post("/predict", json={"features": row}), rows))
        metrics = client.get("/metrics").text
    assert [r.status_code for r in responses] == [200] * len(rows)
    assert [r.json()["predictions"] for r in responses] == [[e] for e in expected]
    calls = metric_value(metrics, "serving_batch_rows_count")
    assert metric_value(metrics, "serving_batch_rows_sum") == len(rows)
    assert calls < len(rows) / 2, f"{len(rows)} concurrent requests made {calls} predict calls"


def test_probabilities_and_labels_are_opt_in_and_equal_the_model(
    client: TestClient, module_champion: RegisteredIris
) -> None:
    data: Any = load_iris(as_frame=True)
    frame = data.data.iloc[::10]
    reference = mlflow.pyfunc.load_model(module_champion.model_uri).get_raw_model()
    response = client.post(
        "/predict", json={"features": frame.to_numpy().tolist(), "probabilities": True, "labels": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["classes"] == [0, 1, 2]
    assert body["probabilities"] == reference.predict_proba(frame).tolist()
    assert body["predictions"] == reference.predict(frame).tolist()
    names = ["setosa", "versicolor", "virginica"]
    assert body["labels"] == [names[p] for p in body["predictions"]]
    only_labels = client.post("/predict", json={"features": SEED_ROW, "labels": True}).json()
    assert only_labels["labels"] == ["setosa"]
    assert "probabilities" not in only_labels


def test_the_schema_says_features_or_columns_not_both(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PredictRequest"}
    request = spec["components"]["schemas"]["PredictRequest"]
    assert request["oneOf"] == [
        {"$ref": "#/components/schemas/FeaturesRequest"},
        {"$ref": "#/components/schemas/ColumnsRequest"},
    ]
    for name, field in (("FeaturesRequest", "features"), ("ColumnsRequest", "columns")):
        schema = spec["components"]["schemas"][name]
        assert schema["required"] == [field]
        assert schema["additionalProperties"] is False
