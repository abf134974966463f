"""A real, loopback-only Kubernetes control plane for tests: etcd + kube-apiserver (+ controller manager).

Interface (pytest)
------------------
``kube_apiserver`` is a **session-scoped fixture** (exposed to every test through
``tests/conftest.py``). Mark tests that use it with ``@pytest.mark.k8s``. It yields a
:class:`KubeApiserver`:

* ``kubeconfig`` (Path): an admin kubeconfig (client certificate, group ``system:masters``),
  context ``lab``. Use it as ``K8S_AUTH_KUBECONFIG`` / ``KUBECONFIG`` for Ansible's
  kubernetes.core modules, ``kubectl`` or ``helm_python.Config(kubeconfig_path=...)``.
* ``server`` (str): ``https://127.0.0.1:<port>``; ``ca_cert`` (Path); ``token`` (str): a static
  bearer token of a ``system:masters`` user (context ``lab-token`` in the kubeconfig).
* ``version`` (str): the server version, ``"1.20.2"`` (Debian bookworm's source package).
  The server lacks autoscaling/v2, policy/v1 and batch/v1 CronJob: validate such objects by
  schema only. No scheduler and no kubelet run, so Pods stay Pending: never wait for them.
  kube-controller-manager runs, so namespaces finish deleting and Deployments get ReplicaSets.
* ``env()`` -> dict: ``os.environ`` plus ``KUBECONFIG`` and ``K8S_AUTH_KUBECONFIG``.
* ``api_client()`` -> ``kubernetes.client.ApiClient`` bound to this server.
* ``create_namespace(prefix)`` -> str: a fresh namespace with a unique name (tests share one
  server per session, so use your own namespaces and never assume an empty cluster).
* ``logs`` (Path): directory with ``etcd.log``, ``kube-apiserver.log``,
  ``kube-controller-manager.log`` for debugging a failure.

Custom resources (e.g. Calico's ``IPPool``): create the CRD first (``apiextensions.k8s.io/v1`` is
served), wait until it is Established, then create/patch objects of that kind.

Binaries come from ``scripts/build-kube-apiserver.sh``, which builds them from Debian's
``kubernetes`` source package and caches them under
``${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}/kube-apiserver/<version>/bin`` (cold ~6 min, then a
no-op). All listeners are on 127.0.0.1 with ports chosen free at start; certificates are generated
per session in a temporary directory; every process is stopped at the end of the session.

``MLOPSLAB_KEEP_KUBE_WORKDIR=1`` keeps the temporary work directory (certificates, logs) after the
session for debugging.

Outside pytest: ``python -m tests.support.kube_apiserver`` builds if needed, starts the server,
prints its kubeconfig path and waits for Ctrl-C.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-kube-apiserver.sh"
KUBE_VERSION = "1.20.2"


def cache_root() -> Path:
    return Path(os.environ.get("MLOPSLAB_CACHE") or Path.home() / ".cache" / "mlops-lab")


def bin_dir() -> Path:
    return cache_root() / "kube-apiserver" / KUBE_VERSION / "bin"


def ensure_binaries() -> Path:
    """Build (or find in the cache) kube-apiserver, kube-controller-manager and etcd."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    return bin_dir()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates ------------------------------------------------------------------------------


def _write_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin and controller-manager client certs, SA key pair, token."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def save_key(k: rsa.RSAPrivateKey, name: str) -> None:
        path = pki / name
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name("mlopslab-test-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    save_key(ca_key, "ca.key")
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(file: str, subject: x509.Name, usage: Any, san: x509.SubjectAlternativeName | None) -> None:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        save_key(k, f"{file}.key")
        (pki / f"{file}.crt").write_bytes(
            builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )

    issue(
        "apiserver",
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName(
            [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes.default.svc"),
            ]
        ),
    )
    issue("admin", name("mlopslab-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, None)
    issue(
        "kcm",
        name("system:kube-controller-manager", "system:masters"),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
    )
    sa = key()
    save_key(sa, "sa.key")
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = secrets.token_hex(16)
    (pki / "token").write_text(token)
    (pki / "tokens.csv").write_text(f'{token},token-admin,token-admin,"system:masters"\n')
    (pki / "tokens.csv").chmod(0o600)


def _kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    token = (pki / "token").read_text()
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: {server}
    certificate-authority-data: {b64("ca.crt")}
users:
- name: {user}
  user:
    client-certificate-data: {b64(user + ".crt")}
    client-key-data: {b64(user + ".key")}
- name: token-admin
  user:
    token: {token}
contexts:
- name: lab
  context: {{cluster: lab, user: {user}, namespace: default}}
- name: lab-token
  context: {{cluster: lab, user: token-admin, namespace: default}}
current-context: lab
"""
    )
    path.chmod(0o600)


# --- processes ---------------------------------------------------------------------------------


@dataclass
class KubeApiserver:
    """A running control plane; see the module docstring for the interface."""

    workdir: Path
    server: str
    kubeconfig: Path
    ca_cert: Path
    token: str
    logs: Path
    version: str = KUBE_VERSION
    _procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list, repr=False)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["K8S_AUTH_KUBECONFIG"] = str(self.kubeconfig)
        return env

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def create_namespace(self, prefix: str = "test") -> str:
        from kubernetes import client

        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def stop(self) -> None:
        for _name, proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()


def _wait_ready(url: str, timeout: float, ctx: ssl.SSLContext | None, procs: list[Any]) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for name, proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # noqa: S310 (loopback)
                if resp.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s: {last}")


@contextlib.contextmanager
def running_kube_apiserver(
    workdir: Path | None = None, *, with_controller_manager: bool = True
) -> Iterator[KubeApiserver]:
    """Build if needed, start etcd + kube-apiserver (+ controller manager), yield, stop."""
    bins = ensure_binaries()
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mlopslab-kube-")) if workdir is None else workdir
    pki, logs = work / "pki", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _write_pki(pki)
    etcd_port, etcd_peer, api_port, kcm_port = (_free_port() for _ in range(4))
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = work / "kubeconfig"
    _kubeconfig(kubeconfig, server, pki, "admin")
    _kubeconfig(pki / "kcm.kubeconfig", server, pki, "kcm")
    api = KubeApiserver(
        workdir=work,
        server=server,
        kubeconfig=kubeconfig,
        ca_cert=pki / "ca.crt",
        token=(pki / "token").read_text(),
        logs=logs,
    )

    def spawn(name: str, argv: list[str]) -> None:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the process)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        api._procs.append((name, proc))

    try:
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        spawn(
            "etcd",
            [
                str(bins / "etcd"),
                "--name=mlopslab",
                f"--data-dir={work / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=mlopslab={peer_url}",
                "--logger=zap",
                "--log-outputs=stderr",
            ],
        )
        _wait_ready(f"{etcd_url}/health", 30, None, api._procs)
        spawn(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--insecure-port=0",  # exists until 1.24; the cached build is 1.20
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--cert-dir={pki / 'apiserver-certdir'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/12",
                "--authorization-mode=RBAC",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        _wait_ready(f"{server}/readyz", 120, ctx, api._procs)
        if with_controller_manager:
            kcm_kubeconfig = pki / "kcm.kubeconfig"
            spawn(
                "kube-controller-manager",
                [
                    str(bins / "kube-controller-manager"),
                    f"--kubeconfig={kcm_kubeconfig}",
                    f"--authentication-kubeconfig={kcm_kubeconfig}",
                    f"--authorization-kubeconfig={kcm_kubeconfig}",
                    "--authentication-skip-lookup",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    "--port=0",
                    f"--cert-dir={pki / 'kcm-certdir'}",
                    "--leader-elect=false",
                    "--use-service-account-credentials=false",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                    f"--cluster-signing-key-file={pki / 'ca.key'}",
                    "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service,"
                    "-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-pvc-protection,"
                    "-pv-protection,-ttl",
                    "--v=1",
                ],
            )
        _wait_default_namespace(api)
        yield api
    finally:
        api.stop()
        if own_tmp and not os.environ.get("MLOPSLAB_KEEP_KUBE_WORKDIR"):
            shutil.rmtree(work, ignore_errors=True)


def _wait_default_namespace(api: KubeApiserver) -> None:
    """Wait until the default namespace exists (the apiserver creates it shortly after /readyz)."""
    from kubernetes import client

    deadline = time.monotonic() + 30
    with api.api_client() as c:
        core = client.CoreV1Api(c)
        while True:
            try:
                core.read_namespace("default")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[KubeApiserver]:
    """A loopback kube-apiserver shared by the whole session (see the module docstring)."""
    with running_kube_apiserver() as api:
        yield api


if __name__ == "__main__":
    with running_kube_apiserver() as running:
        print(f"export KUBECONFIG={running.kubeconfig}  # server {running.server}, logs {running.logs}")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
