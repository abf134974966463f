"""Both ways the images reach the nodes, against the real components, on loopback.

- push: Debian's docker-registry (distribution) with htpasswd auth and TLS from a CA made here,
  on 127.0.0.1; the role pushes, a second run pushes nothing, an outsider is refused, the
  registry's manifest carries the local image ID; the pull Secret lands in each namespace of the
  loopback kube-apiserver;
- load: Debian's containerd on a private socket and root under a temporary directory (import
  needs no runc), reached by Ansible as a local-connection node with the ctr address as a
  variable; a second run imports nothing, an image removed from the node is imported again, and
  a changed build input gives a new tag that is built and loaded.

The harness points the same role at a real cluster node over SSH.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.images.conftest import BuiltImages, build_vars
from tests.support.images import REPO_ROOT, podman, run_images_role
from tests.support.mlflow_server import free_port

pytestmark = [pytest.mark.images]

ROLE_DEFAULTS = REPO_ROOT / "collections/ansible_collections/mlopslab/platform/roles/container_images/defaults/main.yml"


def definitions(*names: str) -> list[dict[str, Any]]:
    every = yaml.safe_load(ROLE_DEFAULTS.read_text())["container_images_definitions"]
    return [d for d in every if d["name"] in names]


def image_id(ref: str) -> str:
    return "sha256:" + podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


# --- push -------------------------------------------------------------------------------------------


@dataclass
class Registry:
    host: str
    ca_file: Path
    username: str
    password: str

    def get(self, path: str, *, auth: bool = True, accept: str = "") -> tuple[int, bytes]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        headers = {"Accept": accept} if accept else {}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        request = urllib.request.Request(f"https://{self.host}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError):  # not listening yet
            return 0, b""


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


# Session-scoped: the cluster's pull-Secret test runs last (tests/conftest.py), after the cluster
# starts; it then finds the registry the push tests filled instead of pushing again into a new one.
@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("registry")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mlops-lab test CA",
             "-keyout", str(work / "ca.key"), "-out", str(work / "ca.crt"))  # fmt: skip
    (work / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", str(work / "server.key"), "-out", str(work / "server.csr"))  # fmt: skip
    _openssl("x509", "-req", "-in", str(work / "server.csr"), "-CA", str(work / "ca.crt"),
             "-CAkey", str(work / "ca.key"), "-CAcreateserial", "-days", "1",
             "-extfile", str(work / "san.ext"), "-out", str(work / "server.crt"))  # fmt: skip
    username, password = "robot", base64.b32encode(os.urandom(15)).decode()
    htpasswd = subprocess.run(["htpasswd", "-Bbn", username, password], check=True, capture_output=True, text=True)
    (work / "htpasswd").write_text(htpasswd.stdout)
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {
            "addr": f"127.0.0.1:{port}",
            "tls": {"certificate": str(work / "server.crt"), "key": str(work / "server.key")},
        },
        "auth": {"htpasswd": {"realm": "mlops-lab-test", "path": str(work / "htpasswd")}},
    }
    (work / "config.yml").write_text(yaml.safe_dump(config))
    with (work / "registry.log").open("wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")], stdout=log, stderr=log)
    reg = Registry(host=f"127.0.0.1:{port}", ca_file=work / "ca.crt", username=username, password=password)
    try:
        deadline = time.monotonic() + 30
        while reg.get("/v2/", auth=False)[0] != 401:
            assert proc.poll() is None, (work / "registry.log").read_text()
            assert time.monotonic() < deadline, (work / "registry.log").read_text()
            time.sleep(0.3)
        yield reg
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        # The role tags what it pushes with the registry's name: those tags go with the registry.
        names = podman("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
        for name in (n for n in names if n.startswith(f"{reg.host}/")):
            podman("untag", name, name, check=False)


def _push_vars(built: BuiltImages, registry: Registry, work: Path, **extra: Any) -> dict[str, Any]:
    return {
        **build_vars(built.base),
        "container_images_definitions": definitions("diagnose"),
        "container_images_delivery": "registry",
        "container_images_registry": f"{registry.host}/mlops-lab",
        "container_images_registry_username": registry.username,
        "container_images_registry_password": registry.password,
        "container_images_registry_ca_file": str(registry.ca_file),
        # Credentials of this test stay in its own directory.
        "container_images_work_dir": str(work / "work"),
        **extra,
    }


def _changed(run: Any) -> list[str]:
    return [task.split(" : ", 1)[-1] for task in run.changed_tasks()]


def test_push_to_a_registry_with_auth_is_idempotent(
    built_images: BuiltImages, registry: Registry, tmp_path: Path
) -> None:
    first = run_images_role(tmp_path / "first", _push_vars(built_images, registry, tmp_path))
    assert first.rc == 0, "\n".join(first.failures) or first.output[-4000:]
    assert "Push each image the registry lacks" in _changed(first)
    ref = first.published["diagnose"]["ref"]
    assert ref.startswith(f"{registry.host}/mlops-lab/diagnose:0.1.0-")
    assert first.facts["container_images_pull_secrets"] == [{"name": "mlops-lab-registry"}]
    assert oct((tmp_path / "work" / "auth" / "config.json").stat().st_mode & 0o777) == "0o600"
    assert registry.password not in first.output

    second = run_images_role(tmp_path / "second", _push_vars(built_images, registry, tmp_path))
    assert second.rc == 0, second.failures
    assert _changed(second) == []

    # What the nodes would pull: the registry holds the tag, with the builder's image ID as config.
    assert registry.get("/v2/_catalog", auth=False)[0] == 401
    status, body = registry.get("/v2/_catalog")
    assert status == 200
    assert json.loads(body)["repositories"] == ["mlops-lab/diagnose"]
    tag = first.published["diagnose"]["tag"]
    status, manifest = registry.get(
        f"/v2/mlops-lab/diagnose/manifests/{tag}", accept="application/vnd.docker.distribution.manifest.v2+json"
    )
    assert status == 200
    assert json.loads(manifest)["config"]["digest"] == image_id(built_images.ref("diagnose"))


def test_push_refuses_a_wrong_password(built_images: BuiltImages, registry: Registry, tmp_path: Path) -> None:
    run = run_images_role(
        tmp_path, _push_vars(built_images, registry, tmp_path, container_images_registry_password="wrong-password")
    )
    assert run.rc != 0
    assert "wrong-password" not in run.output


@pytest.mark.cluster
def test_pull_secret_in_each_namespace(
    built_images: BuiltImages, registry: Registry, tmp_path: Path, kube_cluster: Any
) -> None:
    from kubernetes import client

    namespaces = [kube_cluster.create_namespace("images-a"), kube_cluster.create_namespace("images-b")]
    variables = _push_vars(built_images, registry, tmp_path, container_images_pull_secret_namespaces=namespaces)
    first = run_images_role(tmp_path / "first", variables, env=kube_cluster.env())
    assert first.rc == 0, "\n".join(first.failures) or first.output[-4000:]
    assert "Create the image pull Secret in each namespace" in _changed(first)
    core = client.CoreV1Api(kube_cluster.api_client())
    for namespace in namespaces:
        secret = core.read_namespaced_secret("mlops-lab-registry", namespace)
        assert secret.type == "kubernetes.io/dockerconfigjson"
        config = json.loads(base64.b64decode(secret.data[".dockerconfigjson"]))
        auth = config["auths"][registry.host]
        assert base64.b64decode(auth["auth"]).decode() == f"{registry.username}:{registry.password}"
    second = run_images_role(tmp_path / "second", variables, env=kube_cluster.env())
    assert second.rc == 0, second.failures
    assert _changed(second) == []
    assert registry.password not in first.output + second.output


# --- load into containerd ----------------------------------------------------------------------------


@dataclass
class Containerd:
    socket: Path
    root: Path

    def ctr(self, *args: str) -> str:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    def images(self) -> dict[str, str]:
        """ref -> config digest."""
        found = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            ref, _, digest = line.split()[:3]
            found[ref] = json.loads(self.ctr("content", "get", digest))["config"]["digest"]
        return found


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    work = tmp_path / "containerd"
    work.mkdir()
    # A unix socket path has at most 107 bytes, and a test's tmp_path under a pytest-xdist worker is
    # long: the sockets live in a short directory of their own.
    sockets = Path(tempfile.mkdtemp(prefix="mlopslab-ctr-"))
    socket = sockets / "containerd.sock"
    (work / "config.toml").write_text(
        "version = 2\n"
        f'root = "{work / "root"}"\nstate = "{work / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n[metrics]\n  address = ""\n'
    )
    with (work / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(["containerd", "--config", str(work / "config.toml")], stdout=log, stderr=log)
    node = Containerd(socket=socket, root=work / "root")
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "--address", str(socket), "version"], capture_output=True).returncode != 0:
            assert proc.poll() is None, (work / "containerd.log").read_text()
            assert time.monotonic() < deadline, (work / "containerd.log").read_text()
            time.sleep(0.3)
        yield node
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run(["umount", "-R", str(work / "root")], capture_output=True)
        shutil.rmtree(sockets, ignore_errors=True)


def _load_vars(built: BuiltImages, node: Containerd, work: Path, **extra: Any) -> dict[str, Any]:
    return {
        **build_vars(built.base),
        "container_images_definitions": definitions("diagnose"),
        "container_images_delivery": "load",
        "container_images_nodes": ["node1"],
        "container_images_ctr_address": str(node.socket),
        "container_images_node_become": False,
        "container_images_node_tmp_dir": str(work / "node-tmp"),
        # Built elsewhere, delivered the same way (here: the Python base itself).
        "container_images_extra_refs": [built.base],
        "container_images_work_dir": str(work / "work"),
        **extra,
    }


def test_load_into_containerd_is_idempotent_and_follows_the_content(
    built_images: BuiltImages, containerd: Containerd, tmp_path: Path
) -> None:
    (tmp_path / "node-tmp").mkdir()
    variables = _load_vars(built_images, containerd, tmp_path)
    first = run_images_role(tmp_path / "first", variables, nodes=["node1"])
    assert first.rc == 0, "\n".join(first.failures) or first.output[-4000:]
    assert {"Save each image to its archive", "Import them into containerd (node1)"} <= set(_changed(first))
    diagnose = built_images.ref("diagnose")
    assert containerd.images() == {diagnose: image_id(diagnose), built_images.base: image_id(built_images.base)}
    assert list((tmp_path / "node-tmp").iterdir()) == []

    second = run_images_role(tmp_path / "second", variables, nodes=["node1"])
    assert second.rc == 0, second.failures
    assert _changed(second) == []
    checked = run_images_role(tmp_path / "check", variables, nodes=["node1"], check=True)
    assert checked.rc == 0, checked.failures
    assert _changed(checked) == []

    # An image the node lost comes back from the cached archive (no new save).
    containerd.ctr("images", "rm", diagnose)
    third = run_images_role(tmp_path / "third", variables, nodes=["node1"])
    assert third.rc == 0, third.failures
    assert "Save each image to its archive" not in _changed(third)
    assert "Import them into containerd (node1)" in _changed(third)
    assert diagnose in containerd.images()

    # A changed build input: a new tag, built (only its last layers) and loaded beside the old one.
    checkout = tmp_path / "checkout"
    for part in ("images/diagnose", "collections/ansible_collections/mlopslab/platform/plugins/module_utils"):
        shutil.copytree(REPO_ROOT / part, checkout / part)
    dockerfile = checkout / "images" / "diagnose" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# a changed build input\n")
    changed = run_images_role(
        tmp_path / "changed", {**variables, "container_images_source_dir": str(checkout)}, nodes=["node1"]
    )
    assert changed.rc == 0, "\n".join(changed.failures) or changed.output[-4000:]
    new_ref = changed.published["diagnose"]["ref"]
    try:
        assert new_ref != diagnose
        assert "Build each missing image" in _changed(changed)
        assert containerd.images()[new_ref] == image_id(new_ref)
    finally:
        podman("rmi", new_ref, check=False)
