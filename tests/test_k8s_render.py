"""The Kubernetes layer, rendered offline and validated (no cluster needed).

Every manifest template of the k8s_namespaces / k8s_secrets / nfs_log_volume roles and every
Helm values file of the release roles is rendered by Ansible itself with the lab inventory's
wiring (tests/playbooks/render_k8s_layer.yml), then:
- manifests validate strictly against the Kubernetes 1.30 schemas (kubernetes-validate);
- charts/serving, rendered by the real Helm engine (helm-python-sdk) with the role's values,
  validates the same way;
- Airflow and MLflow values, merged with the pinned charts' defaults, validate against the charts'
  values.schema.json (plus a top-level key check for Airflow); ingress-nginx values use only key
  paths its values.yaml has;
- no secret value reaches a values file.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import helm_python as helm
import pytest
import yaml

from tests.support.k8s_layer import (
    REPO_ROOT,
    SERVING_CHART,
    ansible_env,
    chart_schemas_dir,
    ingress_nginx_unknown_paths,
    load_yaml,
    manifests,
    run_playbook,
    schema_errors,
    validate_manifest,
)

# Secrets of the render: every one must land in its Secret and nowhere else. The Airflow
# password carries the characters that break an unencoded URI.
CANARIES = {
    "vault_airflow_db_password": "p@ss:w/rd%?#cAnary-af-db",
    "vault_mlflow_db_password": "cAnary-mlflow-db",
    "vault_aws_access_key_id": "cAnaryAKID",
    "vault_aws_secret_access_key": "cAnary/aws+secret",
    "vault_airflow_fernet_key": "cAnary-fernet-key=",
    "vault_airflow_api_secret_key": "cAnary-api-secret",
    "vault_airflow_jwt_secret": "cAnary-jwt-secret",
    "vault_airflow_git_ssh_private_key": (
        "-----BEGIN OPENSSH PRIVATE KEY-----\ncAnary-ssh-key\n-----END OPENSSH PRIVATE KEY-----"
    ),
    "vault_serving_reload_token": "cAnary-reload-token-0123456789",
}


@pytest.fixture(scope="module", autouse=True)
def _chart_schemas_present() -> None:
    # shared/ sits beside the repository (CI clones it there); a missing copy is an error, not a skip
    assert (chart_schemas_dir() / "airflow" / "values.schema.json").is_file(), (
        f"chart schemas not found at {chart_schemas_dir()}: put shared/ beside the repository "
        "or set MLOPSLAB_CHART_SCHEMAS"
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s-render")
    (out / "manifests").mkdir()
    extra: dict[str, Any] = {
        "render_dir": str(out),
        "serving_release_chart_ref": str(SERVING_CHART),
        "mlopslab_airflow_dags_repo": "git@git.example.invalid:lab/mlops-dags.git",
        **{
            f"{r}_values_dir": str(out / "values")
            for r in ("ingress_nginx", "mlflow_release", "airflow_release", "serving_release")
        },
        **CANARIES,
    }
    extra_file = out / "extra.json"
    extra_file.write_text(json.dumps(extra))
    output = run_playbook(
        ["tests/playbooks/render_k8s_layer.yml", "-i", "inventories/lab", "-e", f"@{extra_file}"], ansible_env()
    )
    for value in CANARIES.values():
        for line in value.splitlines():
            assert line not in output, "a secret value reached the Ansible output"
    extra_file.unlink()
    return out


def _docs(rendered: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((rendered / "manifests").glob("*.yml")):
        docs += manifests(path.read_text())
    return docs


def _values(rendered: Path, release: str) -> dict[str, Any]:
    data = load_yaml(rendered / "values" / f"{release}.values.yml")
    assert isinstance(data, dict)
    return data


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _secret_data(doc: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


# --- role manifests ---------------------------------------------------------------------------


def test_every_role_manifest_validates_against_kubernetes_1_30(rendered: Path) -> None:
    docs = _docs(rendered)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "LimitRange", "Namespace", "PersistentVolume", "PersistentVolumeClaim", "Secret"]
    for doc in docs:
        validate_manifest(doc)


def test_strict_validation_rejects_a_misspelled_field(rendered: Path) -> None:
    pvc = _find(_docs(rendered), "PersistentVolumeClaim", "airflow-logs-pvc")
    pvc["spec"]["acessModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(Exception, match="acessModes"):
        validate_manifest(pvc)


def test_namespaces_of_the_seed_split_each_with_a_limit_range(rendered: Path) -> None:
    docs = _docs(rendered)
    names = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    assert names == ["ingress-nginx", "mlops-serving", "mlops-training"]
    ranges = [d for d in docs if d["kind"] == "LimitRange"]
    assert sorted(r["metadata"]["namespace"] for r in ranges) == names
    for r in ranges:
        limit = r["spec"]["limits"][0]
        assert limit["type"] == "Container"
        assert limit["default"]
        assert limit["defaultRequest"]


def test_secrets_and_configmap_have_the_seed_keys_and_values(rendered: Path) -> None:
    docs = _docs(rendered)
    by_ns = {
        (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
        for d in docs
        if d["kind"] in ("Secret", "ConfigMap")
    }
    assert by_ns == {
        ("Secret", "mlops-training", "aws-credentials-secret"),
        ("Secret", "mlops-training", "mlflow-db-secret"),
        ("ConfigMap", "mlops-training", "mlflow-db-config"),
        ("Secret", "mlops-training", "airflow-aws-credentials"),
        ("Secret", "mlops-training", "airflow-db-secret"),
        ("Secret", "mlops-training", "airflow-fernet-key"),
        ("Secret", "mlops-training", "airflow-api-secret-key"),
        ("Secret", "mlops-training", "airflow-jwt-secret"),
        ("Secret", "mlops-training", "airflow-git-ssh-secret"),
        ("Secret", "mlops-serving", "aws-credentials-secret"),
        ("Secret", "mlops-serving", "serving-reload-token"),
        ("Secret", "mlops-training", "airflow-serving-reload-token"),
    }
    env_forms = [d for d in docs if d["metadata"]["name"] == "aws-credentials-secret"]
    for doc in env_forms:
        assert _secret_data(doc) == {
            "AWS_ACCESS_KEY_ID": CANARIES["vault_aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CANARIES["vault_aws_secret_access_key"],
            "AWS_DEFAULT_REGION": "ap-northeast-2",
            "MLFLOW_S3_ENDPOINT_URL": "https://s3.ap-northeast-2.amazonaws.com",
        }
    assert _secret_data(_find(docs, "Secret", "mlflow-db-secret")) == {
        "username": "mlflow_user",
        "password": CANARIES["vault_mlflow_db_password"],
    }
    assert _find(docs, "ConfigMap", "mlflow-db-config")["data"] == {
        "host": "192.168.18.142",
        "port": "5432",
        "dbname": "mlflow_db",
    }
    creds = _secret_data(_find(docs, "Secret", "airflow-aws-credentials"))["credentials"]
    assert creds.splitlines() == [
        "[default]",
        f"aws_access_key_id = {CANARIES['vault_aws_access_key_id']}",
        f"aws_secret_access_key = {CANARIES['vault_aws_secret_access_key']}",
        "region = ap-northeast-2",
    ]
    assert _secret_data(_find(docs, "Secret", "airflow-fernet-key")) == {
        "fernet-key": CANARIES["vault_airflow_fernet_key"]
    }
    assert _secret_data(_find(docs, "Secret", "airflow-api-secret-key")) == {
        "api-secret-key": CANARIES["vault_airflow_api_secret_key"]
    }
    # the chart reads key jwt-secret (base64 in data = the raw value in stringData)
    assert _secret_data(_find(docs, "Secret", "airflow-jwt-secret")) == {
        "jwt-secret": CANARIES["vault_airflow_jwt_secret"]
    }
    ssh = _secret_data(_find(docs, "Secret", "airflow-git-ssh-secret"))["gitSshKey"]
    assert ssh == CANARIES["vault_airflow_git_ssh_private_key"] + "\n"
    assert _secret_data(_find(docs, "Secret", "serving-reload-token")) == {
        "token": CANARIES["vault_serving_reload_token"]
    }
    # the same token where Airflow's task pods can read it (their own namespace)
    assert _secret_data(_find(docs, "Secret", "airflow-serving-reload-token")) == {
        "token": CANARIES["vault_serving_reload_token"]
    }


def test_airflow_metadata_uri_survives_reserved_characters_in_the_password(rendered: Path) -> None:
    uri = _secret_data(_find(_docs(rendered), "Secret", "airflow-db-secret"))["connection"]
    parts = urlsplit(uri)
    assert parts.scheme == "postgresql+psycopg2"
    assert parts.hostname == "192.168.18.142"
    assert parts.port == 5432
    assert parts.path == "/airflow_db"
    assert unquote(parts.username or "") == "airflow_user"
    assert unquote(parts.password or "") == CANARIES["vault_airflow_db_password"]
    # SQLAlchemy (what Airflow uses) reads it back the same way
    sqlalchemy = pytest.importorskip("sqlalchemy")
    url = sqlalchemy.engine.make_url(uri)
    assert url.password == CANARIES["vault_airflow_db_password"]
    assert (url.host, url.port, url.database) == ("192.168.18.142", 5432, "airflow_db")


def test_log_volume_is_the_seeds_statically_bound_nfs_claim(rendered: Path) -> None:
    docs = _docs(rendered)
    pv = _find(docs, "PersistentVolume", "airflow-logs-pv")
    pvc = _find(docs, "PersistentVolumeClaim", "airflow-logs-pvc")
    assert pv["spec"]["nfs"] == {"server": "192.168.18.141", "path": "/mnt/nfs_share/mlops/airflow/logs"}
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["capacity"]["storage"] == pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pv["spec"]["claimRef"] == {"namespace": "mlops-training", "name": "airflow-logs-pvc"}
    assert pvc["spec"]["volumeName"] == "airflow-logs-pv"
    assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == ""


# --- Helm values --------------------------------------------------------------------------------


def test_no_secret_value_in_any_values_file(rendered: Path) -> None:
    files = sorted((rendered / "values").glob("*.values.yml"))
    assert [f.name for f in files] == [
        "airflow.values.yml",
        "ingress-nginx.values.yml",
        "iris-serving.values.yml",
        "mlflow.values.yml",
    ]
    for f in files:
        text = f.read_text()
        assert oct(f.stat().st_mode & 0o777) == "0o600"
        for value in CANARIES.values():
            for line in value.splitlines():
                assert line not in text, f"a secret reached {f.name}"


def test_airflow_values_validate_against_the_pinned_chart(rendered: Path) -> None:
    values = _values(rendered, "airflow")
    assert schema_errors("airflow", values) == []
    assert values["executor"] == "KubernetesExecutor"
    assert values["postgresql"] == {"enabled": False}
    assert values["data"] == {"metadataSecretName": "airflow-db-secret"}
    assert values["fernetKeySecretName"] == "airflow-fernet-key"
    assert values["apiSecretKeySecretName"] == "airflow-api-secret-key"
    # a fixed JWT secret by name (else the chart makes a new one on every upgrade), never the value
    assert values["jwtSecretName"] == "airflow-jwt-secret"
    assert "jwtSecret" not in values
    assert CANARIES["vault_airflow_jwt_secret"] not in (rendered / "values" / "airflow.values.yml").read_text()
    git = values["dags"]["gitSync"]
    assert git["enabled"]
    assert git["sshKeySecret"] == "airflow-git-ssh-secret"
    assert (git["subPath"], git["depth"]) == ("dags", 1)
    assert git["repo"].startswith("git@")
    assert values["logs"]["persistence"] == {"enabled": True, "existingClaim": "airflow-logs-pvc"}
    assert values["config"]["core"] == {"load_examples": "False", "dags_are_paused_at_creation": "False"}
    assert values["ingress"]["apiServer"]["hosts"] == [{"name": "airflow.local"}]
    # the .aws file on the scheduler, the DAG processor and KubernetesExecutor task pods
    for section in (values["scheduler"], values["dagProcessor"], values["workers"]["kubernetes"]):
        (volume,) = section["extraVolumes"]
        (mount,) = section["extraVolumeMounts"]
        assert volume["secret"]["secretName"] == "airflow-aws-credentials"
        assert volume["secret"]["items"] == [{"key": "credentials", "path": "credentials"}]
        assert mount == {"name": volume["name"], "mountPath": "/home/airflow/.aws", "readOnly": True}
        assert section["resources"]["requests"]
        assert section["resources"]["limits"]


def test_airflow_values_give_the_dags_their_environment(rendered: Path) -> None:
    values = _values(rendered, "airflow")
    # the chart's top-level env/secret lists: every Airflow container, the KubernetesExecutor pod
    # template (task pods) included; the flat list is what the pinned schema accepts
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env == {
        "AWS_DEFAULT_REGION": "ap-northeast-2",
        "MLFLOW_TRACKING_URI": "http://mlflow.mlops-training.svc.cluster.local:5000",
        "MLOPSLAB_MODEL_NAME": "iris_classifier",
        "MLOPSLAB_SERVING_URL": "http://iris-serving.mlops-serving.svc.cluster.local",
        "MLOPSLAB_SERVING_WAIT_SECONDS": "120",
    }
    assert all(isinstance(v, str) for v in env.values())
    # the reload token by secretKeyRef to the training namespace's copy, never its value
    assert values["secret"] == [
        {
            "envName": "MLOPSLAB_SERVING_RELOAD_TOKEN",
            "secretName": "airflow-serving-reload-token",
            "secretKey": "token",
        }
    ]
    assert "MLOPSLAB_SERVING_RELOAD_TOKEN" not in env
    text = (rendered / "values" / "airflow.values.yml").read_text()
    assert CANARIES["vault_serving_reload_token"] not in text
    # the URLs point at the Services the other releases create
    mlflow = _values(rendered, "mlflow")
    assert env["MLFLOW_TRACKING_URI"] == (
        f"http://{mlflow['fullnameOverride']}.mlops-training.svc.cluster.local:{mlflow['service']['port']}"
    )
    serving = _render_serving(_values(rendered, "iris-serving"))
    svc = _find(serving, "Service", "iris-serving")
    assert svc["spec"]["ports"][0]["port"] == 80
    assert env["MLOPSLAB_SERVING_URL"] == f"http://{svc['metadata']['name']}.mlops-serving.svc.cluster.local"
    # what the KubernetesExecutor pods get is checked against the schema of the whole values
    assert schema_errors("airflow", values) == []
    assert schema_errors("airflow", {"secret": [{"envName": "X", "secretName": "s", "key": "k"}]}) != []


def test_mlflow_values_validate_against_the_pinned_chart(rendered: Path) -> None:
    values = _values(rendered, "mlflow")
    assert schema_errors("mlflow", values) == []
    store = values["backendStore"]
    assert store["databaseMigration"] is True
    assert store["postgres"]["enabled"] is True
    assert store["postgres"]["host"] == "192.168.18.142"
    assert store["postgres"]["user"] == store["postgres"]["password"] == ""
    assert store["existingDatabaseSecret"] == {
        "name": "mlflow-db-secret",
        "usernameKey": "username",
        "passwordKey": "password",
    }
    art = values["artifactRoot"]
    assert art["proxiedArtifactStorage"] is True
    assert art["s3"]["bucket"] == "mlflow-artifacts-keonho"
    assert art["s3"]["existingSecret"]["name"] == "aws-credentials-secret"
    assert "awsAccessKeyId" not in art["s3"]
    assert "awsSecretAccessKey" not in art["s3"]
    assert values["ingress"]["hosts"][0]["host"] == "mlflow.local"
    assert values["image"]["tag"] == "3.15.1"
    mlflow_pin = load_yaml(chart_schemas_dir() / "mlflow" / "Chart.yaml")["appVersion"]
    assert values["image"]["tag"] == str(mlflow_pin)


def test_ingress_nginx_values_use_only_keys_of_the_pinned_chart(rendered: Path) -> None:
    values = _values(rendered, "ingress-nginx")
    assert ingress_nginx_unknown_paths(values) == []
    controller = values["controller"]
    assert (controller["kind"], controller["hostNetwork"], controller["dnsPolicy"]) == (
        "DaemonSet",
        True,
        "ClusterFirstWithHostNet",
    )


@pytest.mark.parametrize(
    ("chart", "overrides", "expected"),
    [
        ("airflow", {"postgresq": {"enabled": False}}, "postgresq: not a top-level key"),
        ("airflow", {"dags": {"gitSync": {"subpath": "dags"}}}, "subpath"),
        ("airflow", {"workers": {"kubernetes": {"extraVolumes": "not-a-list"}}}, "not-a-list"),
        ("airflow", {"data": {"metadataSecret": "x"}}, "metadataSecret"),
        ("mlflow", {"backendStore": {"existingDatabaseSecrets": {"name": "x"}}}, "existingDatabaseSecrets"),
        ("mlflow", {"artifactRoot": {"s3": {"bucketName": "x"}}}, "bucketName"),
    ],
)
def test_schema_check_fails_on_a_misspelled_key(chart: str, overrides: dict[str, Any], expected: str) -> None:
    errors = schema_errors(chart, overrides)
    assert any(expected in e for e in errors), errors


def test_ingress_nginx_check_fails_on_a_misspelled_key() -> None:
    assert ingress_nginx_unknown_paths({"controller": {"hostNetwrok": True}}) == ["controller.hostNetwrok"]
    assert ingress_nginx_unknown_paths({"controller": {"config": {"any-key": "x"}}}) == []


# --- charts/serving -----------------------------------------------------------------------------


def _render_serving(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(SERVING_CHART)
    chart.validate_schema(values)
    out = chart.render(values, name="iris-serving", namespace="mlops-serving", is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            continue
        docs += manifests(text)
    return docs


def test_serving_chart_with_the_role_values_validates_against_kubernetes_1_30(rendered: Path) -> None:
    docs = _render_serving(_values(rendered, "iris-serving"))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "PodDisruptionBudget", "Service", "Service"
    ]  # fmt: skip
    peers = _find(docs, "Service", "iris-serving-peers")  # headless: one DNS record per ready pod
    assert (peers["spec"]["clusterIP"], peers["spec"]["publishNotReadyAddresses"]) == ("None", False)
    for doc in docs:
        validate_manifest(doc)
    deploy = _find(docs, "Deployment", "iris-serving")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert {"configMapRef": {"name": "iris-serving"}} in container["envFrom"]
    assert {"secretRef": {"name": "aws-credentials-secret"}} in container["envFrom"]
    assert container["env"] == [
        {
            "name": "SERVING_RELOAD_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "serving-reload-token", "key": "token"}},
        }
    ]
    svc = _find(docs, "Service", "iris-serving")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    ing = _find(docs, "Ingress", "iris-serving")
    assert ing["spec"]["rules"][0]["host"] == "fastapi.local"
    assert ing["spec"]["ingressClassName"] == "nginx"
    hpa = _find(docs, "HorizontalPodAutoscaler", "iris-serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    pdb = _find(docs, "PodDisruptionBudget", "iris-serving")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    config = _find(docs, "ConfigMap", "iris-serving")["data"]
    assert config["SERVING_MODEL_NAME"] == "iris_classifier"
    assert config["SERVING_MODEL_ALIAS"] == "champion"
    assert config["SERVING_PEERS_DNS"] == "iris-serving-peers.mlops-serving.svc.cluster.local"


def test_serving_chart_without_autoscaling_keeps_two_replicas_and_adds_a_service_monitor() -> None:
    docs = _render_serving({"autoscaling": {"enabled": False}, "serviceMonitor": {"enabled": True}})
    assert _find(docs, "Deployment", "iris-serving")["spec"]["replicas"] == 2
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    monitor = _find(docs, "ServiceMonitor", "iris-serving")
    # a CRD kind: not in the Kubernetes schemas, so its shape is checked here
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            validate_manifest(doc)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 1, "autoscaling": {"enabled": False}},
        {"autoscaling": {"minReplicas": 1}},
        {"replicaCout": 3},
        {"ingress": {"hostname": "fastapi.local"}},
    ],
)
def test_serving_chart_refuses_fewer_than_two_replicas_and_unknown_keys(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        _render_serving(values)


def test_serving_chart_lints_clean() -> None:
    result = helm.lint(SERVING_CHART, kube_version="v1.30.0")
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= 2] == []


def test_values_file_of_the_local_chart_is_yaml_the_chart_accepts() -> None:
    defaults = yaml.safe_load((SERVING_CHART / "values.yaml").read_text())
    helm.Chart.load(SERVING_CHART).validate_schema(defaults)


def test_mlflow_image_pins_the_project_mlflow_version() -> None:
    dockerfile = (REPO_ROOT / "images" / "mlflow" / "Dockerfile").read_text()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert "mlflow==3.15.1" in pyproject
    assert "mlflow==3.15.1" in dockerfile
    assert "psycopg2-binary==" in dockerfile
    assert "boto3==" in dockerfile
    # the image tag the role deploys is that version
    defaults = load_yaml(
        REPO_ROOT / "collections/ansible_collections/mlopslab/platform/roles/mlflow_release/defaults/main.yml"
    )
    assert defaults["mlflow_release_image_tag"] == "3.15.1"
