"""The cluster stage's objects and the release path on the real single-node cluster
(tests/support/kube_cluster.py: kubelet, containerd, real pods).

- playbooks/cluster.yml, with the lab inventory's own wiring, applies the namespaces, Secrets,
  ConfigMap and the NFS log volume (``--tags k8s_namespaces,k8s_secrets,k8s_log_volume``); the
  objects' keys and decoded contents are checked, a second run reports changed=0, check mode
  changes nothing, and no secret value appears in any Ansible output (run with -v and --diff).
  The PV names the lab's NFS server; no pod mounts it, so nothing contacts that address.
- charts/serving is installed and upgraded as a Helm release through the Helm SDK, with its
  HorizontalPodAutoscaler and PodDisruptionBudget (no wait: its image and model are the lab
  test's business, tests/cluster/test_lab.py).
- The release watch (mlopslab.platform.k8s_release_watch, the module the release path follows a
  release with): a Deployment whose pod kubelet cannot pull fails within seconds, naming the
  release and the pod, with the container state and kubelet's events in the error; a Deployment
  whose pod becomes Ready passes.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from kubernetes import client

from tests.support.k8s_layer import SERVING_CHART, ansible_env, recap, run_playbook
from tests.support.kube_cluster import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

SUFFIX = uuid.uuid4().hex[:6]
NS_TRAINING = f"mlops-training-{SUFFIX}"
NS_SERVING = f"mlops-serving-{SUFFIX}"
NS_INGRESS = f"ingress-nginx-{SUFFIX}"
PV_NAME = f"airflow-logs-pv-{SUFFIX}"

CANARIES = {
    "vault_airflow_db_password": f"Cn@ry:{SUFFIX}/af-db%",
    "vault_mlflow_db_password": f"Cnry-{SUFFIX}-mlflow-db",
    "vault_aws_access_key_id": f"CNRYAKID{SUFFIX}",
    "vault_aws_secret_access_key": f"Cnry-{SUFFIX}-aws-secret",
    "vault_airflow_fernet_key": f"Cnry-{SUFFIX}-fernet",
    "vault_airflow_api_secret_key": f"Cnry-{SUFFIX}-api",
    "vault_airflow_jwt_secret": f"Cnry-{SUFFIX}-jwt",
    "vault_airflow_admin_password": f"Cnry-{SUFFIX}-admin",
    "vault_airflow_git_ssh_private_key": (
        f"-----BEGIN OPENSSH PRIVATE KEY-----\nCnry-{SUFFIX}-ssh\n-----END OPENSSH PRIVATE KEY-----"
    ),
    "vault_serving_reload_token": f"Cnry-{SUFFIX}-reload-token",
}
TAGS = "k8s_namespaces,k8s_secrets,k8s_log_volume"


def _secret_lines(canaries: dict[str, str]) -> list[str]:
    return [line for value in canaries.values() for line in value.splitlines() if "-----" not in line]


def _extra_vars(api: KubeCluster, tmp: Path, name: str, canaries: dict[str, str], **more: Any) -> str:
    extra = {
        "mlopslab_kubeconfig": str(api.kubeconfig),
        "mlopslab_namespace_training": more.pop("training", NS_TRAINING),
        "mlopslab_namespace_serving": more.pop("serving", NS_SERVING),
        "mlopslab_namespace_ingress": more.pop("ingress", NS_INGRESS),
        "k8s_log_volume_pv_name": more.pop("pv", PV_NAME),
        **canaries,
        **more,
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(extra))
    path.chmod(0o600)
    return f"@{path}"


def _cluster(api: KubeCluster, extra: str, *flags: str) -> str:
    args = ["playbooks/cluster.yml", "-i", "inventories/lab", "--tags", TAGS, "-e", extra, "-v", *flags]
    return run_playbook(args, ansible_env({"K8S_AUTH_KUBECONFIG": str(api.kubeconfig)}))


@pytest.fixture(scope="module")
def core(kube_cluster: KubeCluster) -> Iterator[client.CoreV1Api]:
    with kube_cluster.api_client() as c:
        yield client.CoreV1Api(c)


@pytest.fixture(scope="module")
def converged(
    kube_cluster: KubeCluster, core: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Two converges of the cluster stage's object roles; yields their outputs."""
    tmp = tmp_path_factory.mktemp("k8s-cluster")
    extra = _extra_vars(kube_cluster, tmp, "extra", CANARIES)
    first = _cluster(kube_cluster, extra)
    second = _cluster(kube_cluster, extra)
    yield {"first": first, "second": second, "tmp": str(tmp)}
    for ns in (NS_TRAINING, NS_SERVING, NS_INGRESS):
        core.delete_namespace(ns)
    core.delete_persistent_volume(PV_NAME)


def _decoded(secret: client.V1Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def test_first_converge_creates_and_second_reports_no_change(converged: dict[str, str]) -> None:
    first, second = recap(converged["first"])["control"], recap(converged["second"])["control"]
    assert first["failed"] == 0
    assert first["changed"] >= 3
    assert second["failed"] == 0
    assert second["changed"] == 0, converged["second"]


def test_namespaces_exist_with_limit_ranges(converged: dict[str, str], core: client.CoreV1Api) -> None:
    for ns in (NS_TRAINING, NS_SERVING, NS_INGRESS):
        assert core.read_namespace(ns).metadata.labels["app.kubernetes.io/part-of"] == "mlops-lab"
        (limit_range,) = core.list_namespaced_limit_range(ns).items
        assert limit_range.spec.limits[0].default == {"cpu": "1", "memory": "1Gi"}


def test_secrets_and_configmap_hold_exactly_the_expected_keys_and_values(
    converged: dict[str, str], core: client.CoreV1Api
) -> None:
    aws_env = {
        "AWS_ACCESS_KEY_ID": CANARIES["vault_aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CANARIES["vault_aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "ap-northeast-2",
        "MLFLOW_S3_ENDPOINT_URL": "https://s3.ap-northeast-2.amazonaws.com",
    }
    for ns in (NS_TRAINING, NS_SERVING):
        assert _decoded(core.read_namespaced_secret("aws-credentials-secret", ns)) == aws_env
    assert _decoded(core.read_namespaced_secret("mlflow-db-secret", NS_TRAINING)) == {
        "username": "mlflow_user",
        "password": CANARIES["vault_mlflow_db_password"],
    }
    assert core.read_namespaced_config_map("mlflow-db-config", NS_TRAINING).data == {
        "host": "192.168.18.142",
        "port": "5432",
        "dbname": "mlflow_db",
    }
    credentials = _decoded(core.read_namespaced_secret("airflow-aws-credentials", NS_TRAINING))
    assert list(credentials) == ["credentials"]
    assert f"aws_secret_access_key = {CANARIES['vault_aws_secret_access_key']}" in credentials["credentials"]
    connection = _decoded(core.read_namespaced_secret("airflow-db-secret", NS_TRAINING))
    assert list(connection) == ["connection"]
    from sqlalchemy.engine import make_url

    url = make_url(connection["connection"])
    assert (url.username, url.password) == ("airflow_user", CANARIES["vault_airflow_db_password"])
    assert (url.host, url.port, url.database) == ("192.168.18.142", 5432, "airflow_db")
    assert _decoded(core.read_namespaced_secret("airflow-fernet-key", NS_TRAINING)) == {
        "fernet-key": CANARIES["vault_airflow_fernet_key"]
    }
    assert _decoded(core.read_namespaced_secret("airflow-api-secret-key", NS_TRAINING)) == {
        "api-secret-key": CANARIES["vault_airflow_api_secret_key"]
    }
    assert _decoded(core.read_namespaced_secret("airflow-jwt-secret", NS_TRAINING)) == {
        "jwt-secret": CANARIES["vault_airflow_jwt_secret"]
    }
    assert _decoded(core.read_namespaced_secret("airflow-admin-password", NS_TRAINING)) == {
        "password": CANARIES["vault_airflow_admin_password"]
    }
    assert _decoded(core.read_namespaced_secret("airflow-git-ssh-secret", NS_TRAINING)) == {
        "gitSshKey": CANARIES["vault_airflow_git_ssh_private_key"] + "\n"
    }
    assert _decoded(core.read_namespaced_secret("serving-reload-token", NS_SERVING)) == {
        "token": CANARIES["vault_serving_reload_token"]
    }
    # the same token in the training namespace, for the Airflow task pods (secretKeyRef)
    assert _decoded(core.read_namespaced_secret("airflow-serving-reload-token", NS_TRAINING)) == {
        "token": CANARIES["vault_serving_reload_token"]
    }
    # no kubectl-style last-applied annotation carrying the secret in clear
    annotations = core.read_namespaced_secret("mlflow-db-secret", NS_TRAINING).metadata.annotations or {}
    assert not any(CANARIES["vault_mlflow_db_password"] in v for v in annotations.values())


def test_log_volume_and_claim(converged: dict[str, str], core: client.CoreV1Api) -> None:
    pv = core.read_persistent_volume(PV_NAME)
    assert (pv.spec.nfs.server, pv.spec.nfs.path) == ("192.168.18.141", "/mnt/nfs_share/mlops/airflow/logs")
    assert pv.spec.access_modes == ["ReadWriteMany"]
    assert pv.spec.persistent_volume_reclaim_policy == "Retain"
    assert pv.spec.claim_ref.namespace == NS_TRAINING
    assert pv.spec.claim_ref.name == "airflow-logs-pvc"
    pvc = core.read_namespaced_persistent_volume_claim("airflow-logs-pvc", NS_TRAINING)
    assert pvc.spec.volume_name == PV_NAME
    assert pvc.spec.storage_class_name == ""
    assert pvc.spec.resources.requests == {"storage": "5Gi"}


def test_check_mode_changes_nothing(
    converged: dict[str, str], kube_cluster: KubeCluster, core: client.CoreV1Api
) -> None:
    tmp = Path(converged["tmp"])
    rotated = {k: f"{v}-rotated" for k, v in CANARIES.items()}
    # converged cluster, new secret values: reported as changes, nothing written
    output = _cluster(kube_cluster, _extra_vars(kube_cluster, tmp, "rotated", rotated), "--check", "--diff")
    assert recap(output)["control"]["changed"] >= 1
    assert (
        _decoded(core.read_namespaced_secret("mlflow-db-secret", NS_TRAINING))["password"]
        == (CANARIES["vault_mlflow_db_password"])
    )
    assert (
        _decoded(core.read_namespaced_secret("serving-reload-token", NS_SERVING))["token"]
        == (CANARIES["vault_serving_reload_token"])
    )
    assert (
        _decoded(core.read_namespaced_secret("airflow-serving-reload-token", NS_TRAINING))["token"]
        == (CANARIES["vault_serving_reload_token"])
    )
    for line in _secret_lines(rotated) + _secret_lines(CANARIES):
        assert line not in output
    # fresh names: nothing is created
    fresh = uuid.uuid4().hex[:6]
    names = {
        "training": f"chk-t-{fresh}",
        "serving": f"chk-s-{fresh}",
        "ingress": f"chk-i-{fresh}",
        "pv": f"chk-pv-{fresh}",
    }
    output = _cluster(kube_cluster, _extra_vars(kube_cluster, tmp, "fresh", CANARIES, **names), "--check")
    assert recap(output)["control"]["failed"] == 0
    existing = {ns.metadata.name for ns in core.list_namespace().items}
    assert not {names["training"], names["serving"], names["ingress"]} & existing
    assert names["pv"] not in {pv.metadata.name for pv in core.list_persistent_volume().items}


def test_no_secret_value_in_the_ansible_output(converged: dict[str, str]) -> None:
    for run in ("first", "second"):
        for line in _secret_lines(CANARIES):
            assert line not in converged[run], f"a secret value appeared in the {run} run's output"
    assert "censored" in converged["first"]


def test_serving_chart_installs_as_a_helm_release(kube_cluster: KubeCluster, core: client.CoreV1Api) -> None:
    ns = kube_cluster.create_namespace("serving")
    values = {"env": {"SERVING_MODEL_NAME": "iris_classifier"}}
    cfg = helm.Config(kubeconfig_path=kube_cluster.kubeconfig, namespace=ns)
    try:
        release = cfg.install(helm.Chart.load(SERVING_CHART), "iris-serving", values, namespace=ns, timeout=120)
        assert release["status"] == "deployed"
        assert cfg.status("iris-serving")["revision"] == 1
        with kube_cluster.api_client() as c:
            deploy = client.AppsV1Api(c).read_namespaced_deployment("iris-serving", ns)
            ingress = client.NetworkingV1Api(c).read_namespaced_ingress("iris-serving", ns)
        # the Deployment leaves replicas to the HorizontalPodAutoscaler, which raises it to minReplicas
        assert deploy.spec.replicas in (None, 1, 2)
        container = deploy.spec.template.spec.containers[0]
        assert container.readiness_probe.http_get.path == "/readyz"
        assert container.env[0].value_from.secret_key_ref.name == "serving-reload-token"
        svc = core.read_namespaced_service("iris-serving", ns)
        assert (svc.spec.ports[0].port, svc.spec.ports[0].target_port) == (80, "http")
        assert ingress.spec.rules[0].host == "fastapi.local"
        with kube_cluster.api_client() as c:
            hpa = client.AutoscalingV2Api(c).read_namespaced_horizontal_pod_autoscaler("iris-serving", ns)
            pdb = client.PolicyV1Api(c).read_namespaced_pod_disruption_budget("iris-serving", ns)
        assert (hpa.spec.scale_target_ref.name, hpa.spec.min_replicas) == ("iris-serving", 2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with kube_cluster.api_client() as c:
                replicas = client.AppsV1Api(c).read_namespaced_deployment("iris-serving", ns).spec.replicas
            if replicas == 2:
                break
            time.sleep(2)
        assert replicas == 2, "the HorizontalPodAutoscaler did not raise the Deployment to minReplicas"
        assert pdb.spec.selector.match_labels == deploy.spec.selector.match_labels
        assert core.read_namespaced_config_map("iris-serving", ns).data["SERVING_MODEL_NAME"] == "iris_classifier"
        # an upgrade that changes configuration rolls the pods (config checksum) as revision 2
        before = deploy.spec.template.metadata.annotations["checksum/config"]
        cfg.upgrade(
            helm.Chart.load(SERVING_CHART),
            "iris-serving",
            {**values, "env": {"SERVING_MODEL_NAME": "other_model"}},
            namespace=ns,
            timeout=120,
        )
        with kube_cluster.api_client() as c:
            after = client.AppsV1Api(c).read_namespaced_deployment("iris-serving", ns)
        assert after.spec.template.metadata.annotations["checksum/config"] != before
        assert cfg.status("iris-serving")["revision"] == 2
    finally:
        cfg.uninstall("iris-serving")
        core.delete_namespace(ns)


# --- the release watch -------------------------------------------------------------------------


def _watch_play(api: KubeCluster, tmp: Path, namespace: str, selector: str) -> tuple[int, str]:
    playbook = tmp / "watch.yml"
    playbook.write_text(
        json.dumps(
            [
                {
                    "name": "Watch",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "module_defaults": {"group/mlopslab.platform.k8s": {"kubeconfig": str(api.kubeconfig)}},
                    "tasks": [
                        {
                            "name": "Wait for the release",
                            "mlopslab.platform.k8s_release_watch": {
                                "release": "demo",
                                "namespace": namespace,
                                "selector": selector,
                                "timeout": "90s",
                                "interval": 1,
                                "fail_fast_after": 3,
                            },
                        }
                    ],
                }
            ]
        )
    )
    output = run_playbook(
        [str(playbook), "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"],
        ansible_env(),
        check=False,
    )
    return (0 if recap(output).get("localhost", {}).get("failed", 1) == 0 else 1), output


def _deployment(cluster: KubeCluster, namespace: str, name: str, image: str, **container: Any) -> None:
    labels = {"app.kubernetes.io/instance": name}
    with cluster.api_client() as c:
        client.AppsV1Api(c).create_namespaced_deployment(
            namespace,
            client.V1Deployment(
                metadata=client.V1ObjectMeta(name=name, labels=labels),
                spec=client.V1DeploymentSpec(
                    replicas=1,
                    selector=client.V1LabelSelector(match_labels=labels),
                    template=client.V1PodTemplateSpec(
                        metadata=client.V1ObjectMeta(labels=labels),
                        spec=client.V1PodSpec(
                            containers=[client.V1Container(name="app", image=image, **container)],
                            termination_grace_period_seconds=0,
                        ),
                    ),
                ),
            ),
        )


def test_the_release_watch_fails_fast_on_an_image_pull_and_shows_why(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    # "localhost/..." is a registry to containerd: kubelet tries https://localhost and is refused
    ns = kube_cluster.create_namespace("watch")
    _deployment(kube_cluster, ns, "pulls", "localhost/pulls:1", image_pull_policy="IfNotPresent")
    rc, output = _watch_play(kube_cluster, tmp_path, ns, "app.kubernetes.io/instance=pulls")
    said = " ".join(output.split())
    assert rc != 0, output
    assert f"release demo (namespace {ns}) cannot come up: pod pulls-" in said
    assert "ErrImagePull" in said or "ImagePullBackOff" in said, said
    assert 'Failed to pull image "localhost/pulls:1"' in said, said
    assert "not up after 90" not in said, "it must fail fast, not at the timeout"
    kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_release_watch_passes_a_release_whose_pods_are_ready(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    ns = kube_cluster.create_namespace("watch")
    toolbox = kube_cluster.images["toolbox"][0]
    _deployment(kube_cluster, ns, "ready", toolbox, image_pull_policy="Never", command=["sleep", "3600"])
    rc, output = _watch_play(kube_cluster, tmp_path, ns, "app.kubernetes.io/instance=ready")
    assert rc == 0, output
    kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
