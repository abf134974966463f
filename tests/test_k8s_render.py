"""The Kubernetes layer as `python -m runner render` writes it for the lab inventory (no cluster).

`runner render` runs the cluster and platform stages' own playbooks with the roles in render-only
mode, so what is checked here is what the stages would apply:
- manifests validate strictly against the Kubernetes 1.30 schemas (kubernetes-validate);
- charts/serving, rendered by the real Helm engine (helm-python-sdk) with the release's values,
  validates the same way;
- Airflow and MLflow values, merged with the pinned charts' defaults, validate against the charts'
  values.schema.json (plus a top-level key check for Airflow); ingress-nginx values use only key
  paths its values.yaml has (the pinned charts' files come from tests/support/chart_data.py);
- no secret is read or written: the inventory copy has a vault full of canaries, and every
  Secret value is PLACEHOLDER(<variable>);
- the invariants of a release that can come up on a real cluster (issue "Lab releases that come
  up"): no hook-driven Job under a waiting install, no image a node cannot pull, no stock Airflow
  image for the pipeline's task pods, no admin password from defaults or in values, a Helm version
  window kubernetes.core supports, a serving install that does not need a model.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import helm_python as helm
import pytest
import yaml

from tests.support.chart_data import CHARTS, chart_dir
from tests.support.collection import plugin
from tests.support.k8s_layer import (
    REPO_ROOT,
    ROLES_DIR,
    SERVING_CHART,
    chart_defaults,
    helm_merge,
    ingress_nginx_unknown_paths,
    load_yaml,
    manifests,
    schema_errors,
    validate_manifest,
)

# A vault with a value for every secret of the lab: render must read none of them.
CANARIES = {
    "vault_airflow_db_password": "p@ss:w/rd%?#cAnary-af-db",
    "vault_mlflow_db_password": "cAnary-mlflow-db",
    "vault_aws_access_key_id": "cAnaryAKID",
    "vault_aws_secret_access_key": "cAnary/aws+secret",
    "vault_airflow_fernet_key": "cAnary-fernet-key=",
    "vault_airflow_api_secret_key": "cAnary-api-secret",
    "vault_airflow_jwt_secret": "cAnary-jwt-secret",
    "vault_airflow_admin_password": "cAnary-admin-password",
    "vault_airflow_git_ssh_private_key": (
        "-----BEGIN OPENSSH PRIVATE KEY-----\ncAnary-ssh-key\n-----END OPENSSH PRIVATE KEY-----"
    ),
    "vault_serving_reload_token": "cAnary-reload-token-0123456789",
}
STOCK_AIRFLOW = {"apache/airflow", "docker.io/apache/airflow", "index.docker.io/apache/airflow"}


@dataclass
class Render:
    out: Path
    output: str


def _runner(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "MLOPSLAB_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def _pinned_charts() -> None:
    # the chart data this module checks against: a missing source is an error that says how to fix it
    for name in CHARTS:
        chart_dir(name)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Render:
    tmp = tmp_path_factory.mktemp("k8s-render")
    inventory = tmp / "lab"
    shutil.copytree(REPO_ROOT / "inventories" / "lab", inventory)
    vault = inventory / "group_vars" / "all" / "vault.yml"
    vault.write_text(yaml.safe_dump(CANARIES))
    vault.chmod(0o600)
    proc = _runner("render", "-i", str(inventory), "--out", str(tmp / "out"), state=tmp / "state")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return Render(tmp / "out", output)


def _docs(rendered: Render) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((rendered.out / "manifests").glob("*.yml")):
        docs += manifests(path.read_text())
    return docs


def _values(rendered: Render, release: str) -> dict[str, Any]:
    data = load_yaml(rendered.out / "values" / f"{release}.values.yml")
    assert isinstance(data, dict)
    return data


def _release(rendered: Render, release: str) -> dict[str, Any]:
    data = load_yaml(rendered.out / "releases" / f"{release}.yml")
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


def _placeholder(variable: str) -> str:
    return f"PLACEHOLDER({variable})"


# --- the render command --------------------------------------------------------------------------


def test_render_writes_every_manifest_values_file_and_release(rendered: Render) -> None:
    files = sorted(str(p.relative_to(rendered.out)) for p in rendered.out.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "images.yml",
        "manifests/log-volume.yml",
        "manifests/namespaces.yml",
        "manifests/secrets-airflow.yml",
        "manifests/secrets-mlflow.yml",
        "manifests/secrets-serving.yml",
        "releases/airflow.yml",
        "releases/ingress-nginx.yml",
        "releases/iris-serving.yml",
        "releases/mlflow.yml",
        "values/airflow.values.yml",
        "values/ingress-nginx.values.yml",
        "values/iris-serving.values.yml",
        "values/mlflow.values.yml",
    ]
    # the output says that Secret data are placeholders, on the terminal and beside the files
    assert "Secret data are placeholders" in rendered.output
    assert "Secret data are placeholders" in (rendered.out / "README.md").read_text()


def test_render_writes_only_the_releases_the_inventory_lists(tmp_path: Path) -> None:
    """A cluster with its own ingress controller, its own MLflow and no Airflow: mlopslab_releases
    lists serving only, and the images stage delivers no MLflow image (the Airflow image still
    runs the training Jobs, the diagnose image the diagnose pods)."""
    inventory = tmp_path / "lab"
    shutil.copytree(REPO_ROOT / "inventories" / "lab", inventory)
    settings = inventory / "group_vars" / "all" / "main.yml"
    settings.write_text(settings.read_text().replace(
        "mlopslab_releases: [ingress_nginx, mlflow, airflow, serving]", "mlopslab_releases: [serving]"
    ))  # fmt: skip
    (inventory / "group_vars" / "all" / "vault.yml").write_text(yaml.safe_dump(CANARIES))
    proc = _runner("render", "-i", str(inventory), "--out", str(tmp_path / "out"), state=tmp_path / "state")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = sorted(p.name for p in (tmp_path / "out").glob("*/*.yml") if p.parent.name in ("releases", "values"))
    assert written == ["iris-serving.values.yml", "iris-serving.yml"]
    images = load_yaml(tmp_path / "out" / "images.yml")
    delivered = sorted(ref.split("/")[-1].split(":")[0] for ref in images["delivered"])
    assert delivered == ["airflow", "diagnose", "serving"], images["delivered"]
    assert sorted(images["published"]) == ["airflow", "diagnose", "mlflow", "serving"]


def test_render_reads_no_secret_and_writes_none(rendered: Render) -> None:
    texts = [rendered.output] + [p.read_text() for p in rendered.out.rglob("*") if p.is_file()]
    for value in CANARIES.values():
        for line in value.splitlines():
            if "-----" in line:
                continue
            assert not any(line in text for text in texts), "a vault value reached the render"
    for path in sorted((rendered.out / "values").glob("*.values.yml")):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert "PLACEHOLDER" not in path.read_text(), f"{path.name} refers to a secret value"


def test_render_of_an_inventory_without_a_cluster_writes_nothing(tmp_path: Path) -> None:
    proc = _runner("render", "-i", "inventories/local", "--out", str(tmp_path / "out"), state=tmp_path / "state")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = " ".join(proc.stdout.split())
    assert "has no k8s_control hosts" in said
    assert "nothing to render; nothing written" in said
    assert not (tmp_path / "out").exists()


def test_render_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine\n")
    proc = _runner("render", "-i", "inventories/lab", "--out", str(tmp_path / "out"), state=tmp_path / "state")
    assert proc.returncode == 2
    assert "not an empty directory" in proc.stdout
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine\n"


# --- role manifests ---------------------------------------------------------------------------


def test_every_role_manifest_validates_against_kubernetes_1_30(rendered: Render) -> None:
    docs = _docs(rendered)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "LimitRange", "Namespace", "PersistentVolume", "PersistentVolumeClaim", "Secret"]
    for doc in docs:
        validate_manifest(doc)


def test_strict_validation_rejects_a_misspelled_field(rendered: Render) -> None:
    pvc = _find(_docs(rendered), "PersistentVolumeClaim", "airflow-logs-pvc")
    pvc["spec"]["acessModes"] = pvc["spec"].pop("accessModes")
    with pytest.raises(Exception, match="acessModes"):
        validate_manifest(pvc)


def test_namespaces_of_the_seed_split_each_with_a_limit_range(rendered: Render) -> None:
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


def test_secrets_have_the_seed_keys_and_placeholders_naming_their_variables(rendered: Render) -> None:
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
        ("Secret", "mlops-training", "airflow-admin-password"),
        ("Secret", "mlops-serving", "aws-credentials-secret"),
        ("Secret", "mlops-serving", "serving-reload-token"),
        ("Secret", "mlops-training", "airflow-serving-reload-token"),
    }
    for doc in (d for d in docs if d["metadata"]["name"] == "aws-credentials-secret"):
        assert _secret_data(doc) == {
            "AWS_ACCESS_KEY_ID": _placeholder("k8s_secrets_aws_access_key_id"),
            "AWS_SECRET_ACCESS_KEY": _placeholder("k8s_secrets_aws_secret_access_key"),
            "AWS_DEFAULT_REGION": "ap-northeast-2",
            "MLFLOW_S3_ENDPOINT_URL": "https://s3.ap-northeast-2.amazonaws.com",
        }
    assert _secret_data(_find(docs, "Secret", "mlflow-db-secret")) == {
        "username": "mlflow_user",
        "password": _placeholder("k8s_secrets_mlflow_db_password"),
    }
    assert _find(docs, "ConfigMap", "mlflow-db-config")["data"] == {
        "host": "192.168.18.142",
        "port": "5432",
        "dbname": "mlflow_db",
    }
    creds = _secret_data(_find(docs, "Secret", "airflow-aws-credentials"))["credentials"]
    assert creds.splitlines() == [
        "[default]",
        f"aws_access_key_id = {_placeholder('k8s_secrets_aws_access_key_id')}",
        f"aws_secret_access_key = {_placeholder('k8s_secrets_aws_secret_access_key')}",
        "region = ap-northeast-2",
    ]
    simple = {
        "airflow-fernet-key": ("fernet-key", "k8s_secrets_airflow_fernet_key"),
        "airflow-api-secret-key": ("api-secret-key", "k8s_secrets_airflow_api_secret_key"),
        "airflow-jwt-secret": ("jwt-secret", "k8s_secrets_airflow_jwt_secret"),
        "airflow-admin-password": ("password", "k8s_secrets_airflow_admin_password"),
        "serving-reload-token": ("token", "k8s_secrets_serving_reload_token"),
        "airflow-serving-reload-token": ("token", "k8s_secrets_serving_reload_token"),
    }
    for name, (key, variable) in simple.items():
        assert _secret_data(_find(docs, "Secret", name)) == {key: _placeholder(variable)}, name
    ssh = _secret_data(_find(docs, "Secret", "airflow-git-ssh-secret"))["gitSshKey"]
    assert ssh == _placeholder("k8s_secrets_airflow_git_ssh_private_key") + "\n"


def test_airflow_metadata_uri_encodes_the_password(rendered: Render) -> None:
    uri = _secret_data(_find(_docs(rendered), "Secret", "airflow-db-secret"))["connection"]
    parts = urlsplit(uri)
    assert parts.scheme == "postgresql+psycopg2"
    assert (parts.hostname, parts.port, parts.path) == ("192.168.18.142", 5432, "/airflow_db")
    assert unquote(parts.username or "") == "airflow_user"
    # the placeholder's parentheses are percent-encoded like any reserved character of a password
    assert "(" not in (parts.password or "")
    assert unquote(parts.password or "") == _placeholder("k8s_secrets_airflow_db_password")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    assert sqlalchemy.engine.make_url(uri).password == _placeholder("k8s_secrets_airflow_db_password")


def test_log_volume_is_the_seeds_statically_bound_nfs_claim(rendered: Render) -> None:
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


def test_airflow_values_validate_against_the_pinned_chart(rendered: Render) -> None:
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


def test_airflow_values_give_the_dags_their_environment(rendered: Render) -> None:
    values = _values(rendered, "airflow")
    # the chart's top-level env/secret lists: every Airflow container, the KubernetesExecutor pod
    # template (task pods) included; an empty setting is left out, not set to ""
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
    # the URLs point at the Services the other releases create
    mlflow = _values(rendered, "mlflow")
    assert env["MLFLOW_TRACKING_URI"] == (
        f"http://{mlflow['fullnameOverride']}.mlops-training.svc.cluster.local:{mlflow['service']['port']}"
    )
    serving = _render_serving(_values(rendered, "iris-serving"))
    svc = _find(serving, "Service", "iris-serving")
    assert svc["spec"]["ports"][0]["port"] == 80
    assert env["MLOPSLAB_SERVING_URL"] == f"http://{svc['metadata']['name']}.mlops-serving.svc.cluster.local"
    assert schema_errors("airflow", {"secret": [{"envName": "X", "secretName": "s", "key": "k"}]}) != []


def test_mlflow_values_validate_against_the_pinned_chart(rendered: Render) -> None:
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
    assert values["ingress"]["hosts"][0]["host"] == "mlflow.local"
    assert "mlflow.mlops-training.svc.cluster.local:5000" in values["serverAllowedHosts"]
    assert "mlflow.local" in values["serverAllowedHosts"]
    # the content-tagged image of the container_images role: <MLflow version>-<digest>
    mlflow_pin = load_yaml(chart_dir("mlflow") / "Chart.yaml")["appVersion"]
    assert values["image"]["tag"].split("-")[0] == str(mlflow_pin) == "3.15.1"
    assert values["image"]["repository"] == "localhost/mlops-lab/mlflow"


def test_ingress_nginx_release_values_use_only_keys_of_the_pinned_chart(rendered: Render) -> None:
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


def test_ingress_nginx_release_check_fails_on_a_misspelled_key() -> None:
    assert ingress_nginx_unknown_paths({"controller": {"hostNetwrok": True}}) == ["controller.hostNetwrok"]
    assert ingress_nginx_unknown_paths({"controller": {"config": {"any-key": "x"}}}) == []


# --- invariants of releases that come up on a real cluster --------------------------------------


def _hook_switches(values: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, useHelmHooks) for every section that can turn a resource into a Helm hook."""
    found: list[tuple[str, Any]] = []
    if isinstance(values, dict):
        if "useHelmHooks" in values and values.get("enabled", True) is not False:
            found.append((path, values["useHelmHooks"]))
        for key, value in values.items():
            found += _hook_switches(value, f"{path}.{key}" if path else str(key))
    return found


def test_no_hook_driven_job_under_a_waiting_install(rendered: Render) -> None:
    airflow = helm_merge(chart_defaults("airflow"), _values(rendered, "airflow"))
    switches = dict(_hook_switches(airflow))
    # the chart makes both Jobs post-install hooks by default, which its pods' init containers
    # wait for: they must be plain resources (the chart's documented way for a waiting install)
    assert chart_defaults("airflow")["migrateDatabaseJob"]["useHelmHooks"] is True
    assert switches["migrateDatabaseJob"] is False
    assert switches["createUserJob"] is False
    assert [path for path, on in switches.items() if on is not False] == []
    for name in ("airflow", "mlflow"):
        merged = helm_merge(chart_defaults(name), _values(rendered, name))
        assert [p for p, on in _hook_switches(merged) if on is not False] == [], name
    for release in ("airflow", "ingress-nginx", "iris-serving", "mlflow"):
        install = _release(rendered, release)["install"]
        # Helm itself never waits; the watch does, and fails fast on broken pods
        assert (install["helm_wait"], install["helm_atomic"]) == (False, False)
        assert install["rollback_on_failure"] is True
    # the Jobs are Airflow pods too: the watch sees their crashes, and an upgrade replaces them
    # (a Job's pod template is immutable)
    install = _release(rendered, "airflow")["install"]
    assert install["watch"]["selector"] == "release=airflow"
    (jobs,) = install["replace_finished_jobs_on_upgrade"]
    assert "run-airflow-migrations" in jobs
    assert "create-user-job" in jobs
    assert airflow["migrateDatabaseJob"]["applyCustomEnv"] is False


image_refs = plugin("filter", "image_refs")


def _image_refs(values: Any) -> list[str]:
    """repository:tag of every image section in a values tree."""
    refs: list[str] = []
    if isinstance(values, dict):
        if isinstance(values.get("repository"), str) and "tag" in values and values["tag"]:
            refs.append(f"{values['repository']}:{values['tag']}")
        for value in values.values():
            refs += _image_refs(value)
    return refs


def test_no_image_reference_a_node_cannot_pull(rendered: Render) -> None:
    """The project's images reach the nodes the way the inventory says (pushed to its registry, or
    loaded into every node's containerd); every image is tagged; the charts run exactly those."""
    images_stage = load_yaml(rendered.out / "images.yml")
    own = {entry["ref"] for entry in images_stage["published"].values()}
    releases = ["airflow", "ingress-nginx", "iris-serving", "mlflow"]
    images = [image for name in releases for image in _release(rendered, name)["images"]]
    values_images = _image_refs(_values(rendered, "mlflow")) + _image_refs(_values(rendered, "iris-serving"))
    values_images += _image_refs(_values(rendered, "airflow")["images"])
    assert set(values_images) <= set(images), "the release descriptions list every image the values set"
    assert {ref for ref in images if ref.split(":")[0].rsplit("/", 1)[-1] in images_stage["published"]} <= own
    for image in images:
        assert ":" in image.rsplit("/", 1)[-1], f"{image}: no tag"
        if image in own:
            problems = image_refs.image_ref_problems(
                image, image, images_stage["delivery"], images_stage["registry"], images_stage["delivered"]
            )
            assert problems == [], problems
        else:  # a third-party image: pulled from its public registry by name
            assert not image.startswith("localhost/"), f"{image}: a node cannot pull a localhost/ image"
    # the serving chart renders exactly the image its release lists
    deploy = _find(_render_serving(_values(rendered, "iris-serving")), "Deployment", "iris-serving")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] in _release(rendered, "iris-serving")["images"]


def test_no_stock_airflow_image_for_task_pods_while_the_pipeline_dags_are_deployed(rendered: Render) -> None:
    values = helm_merge(chart_defaults("airflow"), _values(rendered, "airflow"))
    env = {e["name"] for e in values["env"]}
    # the pipeline DAGs are deployed: gitSync brings them, their configuration is in the environment
    assert values["dags"]["gitSync"]["enabled"]
    assert "MLOPSLAB_MODEL_NAME" in env
    # KubernetesExecutor task pods run images.pod_template, else defaultAirflowRepository/Tag
    # (not images.airflow): every one of them must carry the DAGs' dependencies
    task_image = values["images"]["pod_template"]["repository"] or values["defaultAirflowRepository"]
    for repository in (task_image, values["defaultAirflowRepository"], values["images"]["airflow"]["repository"]):
        assert repository not in STOCK_AIRFLOW, f"{repository}: the stock image has neither mlflow nor scikit-learn"


def test_no_admin_password_from_defaults_or_in_values(rendered: Render) -> None:
    chart = chart_defaults("airflow")
    assert chart["createUserJob"]["defaultUser"]["password"] == "admin", "the chart's default this guards against"
    text = (rendered.out / "values" / "airflow.values.yml").read_text()
    values = helm_merge(chart, _values(rendered, "airflow"))
    job = values["createUserJob"]
    args = " ".join(job["args"])
    # the chart's args pass defaultUser.password with -p; the release's read the Secret instead
    assert "-p" not in job["args"]
    assert "defaultUser.password" not in args
    assert '--password "${MLOPSLAB_AIRFLOW_ADMIN_PASSWORD' in args
    (env,) = [e for e in job["env"] if e["name"] == "MLOPSLAB_AIRFLOW_ADMIN_PASSWORD"]
    assert env["valueFrom"] == {"secretKeyRef": {"name": "airflow-admin-password", "key": "password"}}
    assert "admin/admin" not in text
    assert job["defaultUser"]["password"] != "admin"
    secret = _secret_data(_find(_docs(rendered), "Secret", "airflow-admin-password"))
    assert secret == {"password": _placeholder("k8s_secrets_airflow_admin_password")}
    # the password is a vault secret: required, no default, no_log; the release role has none
    spec = load_yaml(ROLES_DIR / "k8s_secrets" / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    option = spec["k8s_secrets_airflow_admin_password"]
    assert (option.get("required"), option.get("no_log"), "default" in option) == (True, True, False)
    release = load_yaml(ROLES_DIR / "airflow_release" / "defaults" / "main.yml")
    assert not [name for name in release if "password" in name and not name.endswith(("_name", "_key"))]


def _kubernetes_core_version() -> tuple[int, ...]:
    import ansible_collections.kubernetes.core as core  # the bundled collection kubernetes.core.helm runs

    manifest = json.loads((Path(next(iter(core.__path__))) / "MANIFEST.json").read_text())
    return tuple(int(part) for part in manifest["collection_info"]["version"].split("."))


def test_the_helm_version_window_is_one_kubernetes_core_supports() -> None:
    defaults = load_yaml(ROLES_DIR / "helm_binary" / "defaults" / "main.yml")
    low = tuple(int(p) for p in str(defaults["helm_binary_min_version"]).split("."))
    high = tuple(int(p) for p in str(defaults["helm_binary_max_version"]).split("."))
    pinned = tuple(int(p) for p in str(defaults["helm_binary_version"]).lstrip("v").split("."))
    assert low <= pinned < high
    # the Airflow chart 1.22.0 needs Helm 3.19; kubernetes.core < 6.4 breaks on Helm 4 (kubernetes.core#1038)
    assert low >= (3, 19, 0)
    if _kubernetes_core_version() < (6, 4):
        assert high <= (4, 0, 0), "kubernetes.core before 6.4 does not support Helm 4"


def test_serving_install_does_not_depend_on_a_model_existing(rendered: Render) -> None:
    watch = _release(rendered, "iris-serving")["install"]["watch"]
    # started containers, not Ready pods: Ready (/readyz) means a model is loaded
    assert watch["wait_for"] == "started"
    deploy = _find(_render_serving(_values(rendered, "iris-serving")), "Deployment", "iris-serving")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the releases are steps of one play, in order: a first-champion step fits between airflow
    # and serving (or after serving, waiting for Ready)
    (play,) = [p for p in load_yaml(REPO_ROOT / "playbooks" / "platform.yml") if p["hosts"] == "k8s_control"]
    roles = [r["role"].rsplit(".", 1)[-1] for r in play["roles"]]
    assert roles.index("mlflow_release") < roles.index("airflow_release") < roles.index("serving_release")
    for name in ("mlflow", "airflow", "ingress-nginx"):
        assert _release(rendered, name)["install"]["watch"]["wait_for"] == "ready"


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


def test_serving_chart_with_the_release_values_validates_against_kubernetes_1_30(rendered: Render) -> None:
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


def test_mlflow_image_pins_the_project_mlflow_version(rendered: Render) -> None:
    requirements = (REPO_ROOT / "images" / "mlflow" / "requirements.txt").read_text()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert "mlflow==3.15.1" in pyproject
    assert "mlflow==3.15.1" in requirements
    assert "psycopg2-binary==" in requirements
    assert "boto3==" in requirements
    # the image the lab's release deploys is that version (content-tagged: <version>-<digest>)
    assert _values(rendered, "mlflow")["image"]["tag"].split("-")[0] == "3.15.1"
