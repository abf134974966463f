"""A real single-node Kubernetes for tests: control plane, kubelet, containerd, kube-proxy, CoreDNS, sshd.

Interface (pytest)
------------------
``kube_cluster`` is a **session-scoped fixture** (exposed to every test through ``tests/conftest.py``).
Mark tests that use it with ``@pytest.mark.cluster``. It builds what is missing
(``scripts/build-k8s.sh``, ``scripts/build-cluster-images.sh``), starts the node, waits until the node
is Ready and CoreDNS answers, yields a :class:`KubeCluster`, and always tears everything down. It yields:

* ``kubeconfig`` (Path): admin kubeconfig (client certificate in ``system:masters``), context ``lab``;
  context ``lab-token`` uses ``token`` (a static ``system:masters`` bearer token). ``server`` (str):
  ``https://10.235.0.2:6443``; ``ca_cert`` (Path).
* ``version`` (str): ``"1.36.3"``. ``node_name`` (``"mlopslab-node"``), ``node_ip`` (``"10.235.0.2"``,
  reachable from the host), ``host_ip`` (``"10.235.0.1"``: the host's end of the veth, the address a pod
  uses to reach a server the test runs in the host namespace), ``pod_cidr`` (``"10.233.0.0/16"``),
  ``service_cidr`` (``"10.234.0.0/16"``), ``dns_ip`` (``"10.234.0.10"``), ``cluster_domain``.
* ``bin_dir`` (Path): kubectl, helm, ctr, crictl-free tools of the same build; ``env()``: ``os.environ``
  plus ``KUBECONFIG``, ``K8S_AUTH_KUBECONFIG`` and ``PATH`` with ``bin_dir`` first (so a playbook's
  ``kubernetes.core.helm`` finds this helm 3).
* ``api_client()`` -> ``kubernetes.client.ApiClient``; ``kubectl(*args, input=None, check=True)`` ->
  CompletedProcess (text); ``create_namespace(prefix)`` -> a fresh unique namespace (the cluster is
  shared by the session: never assume it is empty).
* Images: the node has no registry. ``import_image(tar)`` loads a docker-archive/OCI tar (e.g. from
  ``scripts/build-cluster-images.sh --context DIR --tag localhost/mlops-lab/NAME:VER``) into the node's
  containerd (namespace ``k8s.io``); pods then use the tag with ``imagePullPolicy: IfNotPresent`` or
  ``Never``. ``images`` maps the harness's own tags: ``pause``, ``coredns``, ``git-sync`` (a
  git-sync-v4-compatible image, see images/git-sync/git-sync). ``ctr(*args)`` runs ctr in the node;
  ``containerd_address`` is a host path to the node's socket (``/run/containerd/containerd.sock`` inside).
* ``node_exec(argv, ...)`` -> CompletedProcess: runs a command inside the node's network and mount
  namespaces (its iptables, its routes, its containerd socket).
* The node is an Ansible host: sshd listens on ``node_ip:22``, root logs in with ``ssh_private_key``
  (a key pair made per session); ``ansible_host_vars()`` gives the inventory variables. Over ssh,
  ``iptables -t nat ...`` acts on the node's netns and a stock ``ctr -n k8s.io images import`` reaches
  the node's containerd, as on a real node; ``bin_dir`` is first on the session's PATH.
* ``logs`` (Path): one log per component; ``timings`` (dict, seconds) and ``memory_mib()``;
  ``report()`` prints them (the fixture does at start).

Addresses (they cannot clash with the network-namespace tests' 10.244.0.0/16 and 198.51.100.0/24,
podman's 10.88.0.0/16 or the lab VMs' 10.236.0.0/24): pods 10.233.0.0/16 (the node's /24 is
10.233.0.0/24, gateway 10.233.0.1), services 10.234.0.0/16 (kubernetes 10.234.0.1, DNS 10.234.0.10),
veth 10.235.0.0/30. Every component listens inside the node's own network namespace on its standard
port (apiserver 6443, kubelet 10250, etcd 127.0.0.1:2379, sshd 22), so nothing on the host can clash.
One cluster runs per machine at a time: a second session waits on a machine-wide lock.

What the node is: a ``sleep`` holder started with ``unshare --net --mount`` owns a private network and
mount namespace; every component is started in both with ``nsenter``. The host keeps only a veth and two
routes (pod and service CIDRs via the node), removed at teardown. In the node's mount namespace /run is
a private tmpfs (containerd's socket and shims, pod netns, the xtables lock, sshd's privsep dir) and only
the directories kubelet and CNI hard-code are bind-mounted from the state directory (/var/lib/kubelet,
/var/lib/cni, /var/log/pods, /var/log/containers): /var/lib/dpkg and the rest stay the host's, so tools
run over ssh see a normal Debian system. (The probe's tmpfs over /var/lib would have hidden dpkg's
database from apt over ssh.) Empty mount points the harness had to create on the host are removed again.
Kubelet's mounts, kube-proxy's and CNI's iptables chains, the bridge and the pod netns all live in the
node's namespaces and vanish with them; teardown kills by recorded PID (checked against the recorded
start time), then what is left in the node's netns, the pods' netns and the containers' cgroups, and
removes those cgroup directories. Nothing is ever killed by name.

Sandbox settings (see docs/development.md): cgroup v1 (``cgroupDriver: cgroupfs``,
``cgroupsPerQOS: false``, ``enforceNodeAllocatable: []``, ``failCgroupV1: false``), no
CAP_SYS_RESOURCE (``oomScoreAdj: 0``, containerd ``restrict_oom_score_adj``), no global sysctl writes
(kubelet patched to warn only, kube-proxy ``conntrack.maxPerCore: 0``). CoreDNS has no ``forward``: the
sandbox has no upstream resolver a test may reach. The kernel has no NFS client: use hostPath/local PVs.
The node has no default route: pods reach only the node, the host (``host_ip``) and what a fixture routes
(the lab VMs, tests/support/lab_vms.py).

Outside pytest: ``python -m tests.support.kube_cluster up|down|status`` (``scripts/kube-cluster.sh``).
``MLOPSLAB_KEEP_CLUSTER_LOGS=1`` keeps the state directory's logs after teardown.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s.sh"
IMAGES_SCRIPT = REPO_ROOT / "scripts" / "build-cluster-images.sh"
KUBE_VERSION = "1.36.3"

NODE_NAME = "mlopslab-node"
HOST_IP = "10.235.0.1"
NODE_IP = "10.235.0.2"
VETH_HOST, VETH_NODE = "mlk8s-h", "mlk8s-n"
POD_CIDR = "10.233.0.0/16"
NODE_POD_SUBNET = "10.233.0.0/24"
SERVICE_CIDR = "10.234.0.0/16"
API_SERVICE_IP = "10.234.0.1"
DNS_IP = "10.234.0.10"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
STATE_DIR = Path(os.environ.get("MLOPSLAB_KUBE_STATE") or "/var/tmp/mlops-lab/kube-cluster")
# Directories kubelet/CNI hard-code, bind-mounted from the state dir inside the node's mount namespace.
NODE_BINDS = {
    "/var/lib/kubelet": "kubelet",
    "/var/lib/cni": "cni",
    "/var/log/pods": "log/pods",
    "/var/log/containers": "log/containers",
}
NODE_SOCKET = "/run/containerd/containerd.sock"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_root() -> Path:
    return Path(os.environ.get("MLOPSLAB_CACHE") or Path.home() / ".cache" / "mlops-lab")


def _now() -> float:
    return time.monotonic()


def ensure_built() -> tuple[Path, dict[str, tuple[str, Path]], float]:
    """Build (or find cached) the binaries and images; returns (bin dir, images, seconds).

    images maps a short name (pause, coredns, git-sync) to (tag, tar)."""
    t0 = _now()
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    bin_dir = Path(out.stdout.strip().splitlines()[-1])
    out = subprocess.run(["bash", str(IMAGES_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    images: dict[str, tuple[str, Path]] = {}
    for line in out.stdout.strip().splitlines():
        tag, tar = line.split()
        images[tag.rsplit("/", 1)[1].split(":")[0]] = (tag, Path(tar))
    return bin_dir, images, _now() - t0


# --- processes recorded by pid and start time ------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(rec: dict[str, Any]) -> bool:
    """The recorded process still runs (a zombie child of ours is reaped and counts as gone)."""
    if not rec or _start_time(int(rec["pid"])) != rec["start"]:
        return False
    try:
        state = Path(f"/proc/{rec['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(int(rec["pid"]), os.WNOHANG)
        return False
    return True


def _kill_rec(rec: dict[str, Any], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after timeout, the recorded process only (never a reused pid)."""
    if not _alive(rec):
        return
    pid = int(rec["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = _now() + timeout
    while _now() < deadline and _alive(rec):
        time.sleep(0.1)
    if _alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Reap it if it is our child (Popen), so no zombie keeps the record "alive".
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _ns_inode(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- PKI (EC P-256: an order of magnitude faster to generate than RSA on 2 loaded cores) -----------


def _write_pki(pki: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def save_key(k: ec.EllipticCurvePrivateKey, name: str) -> None:
        path = pki / name
        path.write_bytes(
            k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        path.chmod(0o600)

    def subject(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = subject("mlopslab-cluster-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    save_key(ca_key, "ca.key")
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(file: str, name: x509.Name, server_sans: list[str] | None = None) -> None:
        k = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_sans is not None else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server_sans is not None:
            alt: list[x509.GeneralName] = []
            for san in server_sans:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(san)))
                except ValueError:
                    alt.append(x509.DNSName(san))
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        save_key(k, f"{file}.key")
        (pki / f"{file}.crt").write_bytes(b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))

    issue(
        "apiserver",
        subject("kube-apiserver"),
        [
            "127.0.0.1",
            NODE_IP,
            API_SERVICE_IP,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
        ],
    )
    issue("kubelet-serving", subject(NODE_NAME), [NODE_IP, NODE_NAME])
    issue("apiserver-kubelet-client", subject("kube-apiserver-kubelet-client", "system:masters"))
    issue("admin", subject("mlopslab-admin", "system:masters"))
    issue("kcm", subject("system:kube-controller-manager"))
    issue("scheduler", subject("system:kube-scheduler"))
    issue("kubelet", subject(f"system:node:{NODE_NAME}", "system:nodes"))
    issue("proxy", subject("system:kube-proxy"))
    sa = ec.generate_private_key(ec.SECP256R1())
    save_key(sa, "sa.key")
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token = secrets.token_hex(16)
    (pki / "token").write_text(token)
    (pki / "tokens.csv").write_text(f'{token},token-admin,token-admin,"system:masters"\n')
    (pki / "tokens.csv").chmod(0o600)


def _kubeconfig(path: Path, pki: Path, user: str, with_token: bool = False) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    server = f"https://{NODE_IP}:{API_PORT}"
    token_user = token_ctx = ""
    if with_token:
        token_user = f"- name: token-admin\n  user:\n    token: {(pki / 'token').read_text()}\n"
        token_ctx = "- name: lab-token\n  context: {cluster: lab, user: token-admin, namespace: default}\n"
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
{token_user}contexts:
- name: lab
  context: {{cluster: lab, user: {user}, namespace: default}}
{token_ctx}current-context: lab
"""
    )
    path.chmod(0o600)


# --- configuration files ---------------------------------------------------------------------------


def _put(path: Path, text: str) -> None:
    """Write only when the content differs: kube-proxy exits when its config file is rewritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_configs(st: Path, bin_dir: Path, pause_tag: str) -> None:
    n, c, pki = st / "node", st / "conf", st / "pki"
    _put(
        c / "containerd.toml",
        f"""version = 3
root = "{n}/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = "{NODE_SOCKET}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{n}/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause_tag}"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  # CAP_SYS_RESOURCE is not in this sandbox's bounding set: nothing may lower oom_score_adj below 0,
  # and runc fails every sandbox on the default -998 ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  # cgroup v1 has no hugetlb controller here.
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "/run/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{c}/cni"
    max_conf_num = 1
""",
    )
    # No ipMasq: like Calico's routed pods, a pod's address reaches what it talks to unchanged (the
    # lab's VM-access symptom needs exactly that); the node has no default route to leak through.
    _put(
        c / "cni" / "10-mlopslab.conflist",
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "mlopslab",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "mlk8s0",
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": NODE_POD_SUBNET, "gateway": "10.233.0.1"}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            },
            indent=2,
        ),
    )
    _put(n / "resolv.conf", "# no upstream resolver in the sandbox (see tests/support/kube_cluster.py)\n")
    _put(
        c / "kubelet.yaml",
        f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki}/ca.crt}}
authorization: {{mode: Webhook}}
tlsCertFile: {pki}/kubelet-serving.crt
tlsPrivateKeyFile: {pki}/kubelet-serving.key
containerRuntimeEndpoint: unix://{NODE_SOCKET}
# cgroup v1 (no cgroup2 at /sys/fs/cgroup): kubelet 1.35+ refuses it unless failCgroupV1 is false.
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
# The default -999 needs CAP_SYS_RESOURCE, which this sandbox lacks.
oomScoreAdj: 0
makeIPTablesUtilChains: true
clusterDomain: {CLUSTER_DOMAIN}
clusterDNS: [{DNS_IP}]
resolvConf: {n}/resolv.conf
volumePluginDir: {n}/volume-plugins
# A shared disk must not evict the only copies of the hand-imported images.
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
podPidsLimit: -1
maxPods: 80
shutdownGracePeriod: 0s
""",
    )
    _put(
        c / "kube-proxy.yaml",
        f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {pki}/proxy.kubeconfig}}
mode: iptables
clusterCIDR: {POD_CIDR}
hostnameOverride: {NODE_NAME}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
# 0 leaves the GLOBAL nf_conntrack_max and hashsize alone.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
""",
    )


def _sshd_config(st: Path, bin_dir: Path) -> str:
    s = st / "ssh"
    return f"""# sshd of the test node (tests/support/kube_cluster.py): root with the session's key only.
ListenAddress {NODE_IP}:22
HostKey {s}/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
AuthorizedKeysFile {s}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
AcceptEnv LANG LC_*
SetEnv PATH={bin_dir}:{SYSTEM_PATH}
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def _coredns_manifest(image: str) -> str:
    return f"""apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  # No forward: the sandbox has no upstream resolver a test may send queries to.
  Corefile: |
    .:53 {{
        errors
        health {{
            lameduck 2s
        }}
        ready
        kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 5
        }}
        cache 5
        reload
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      securityContext:
        # Lets CoreDNS run as nobody and still bind :53 (a namespaced, "safe" sysctl).
        sysctls: [{{name: net.ipv4.ip_unprivileged_port_start, value: "53"}}]
      containers:
      - name: coredns
        image: {image}
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {{containerPort: 53, name: dns, protocol: UDP}}
        - {{containerPort: 53, name: dns-tcp, protocol: TCP}}
        securityContext:
          runAsUser: 65534
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {{drop: [ALL]}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 1
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
          periodSeconds: 10
        resources:
          requests: {{cpu: 20m, memory: 32Mi}}
          limits: {{memory: 128Mi}}
        volumeMounts: [{{name: config, mountPath: /etc/coredns, readOnly: true}}]
      volumes:
      - name: config
        configMap: {{name: coredns}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  selector: {{k8s-app: kube-dns}}
  clusterIP: {DNS_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
"""


# --- the cluster ------------------------------------------------------------------------------------


@dataclass
class KubeCluster:
    """A running single-node cluster; see the module docstring for the interface."""

    state_dir: Path
    bin_dir: Path
    images: dict[str, tuple[str, Path]] = field(default_factory=dict)
    version: str = KUBE_VERSION
    node_name: str = NODE_NAME
    node_ip: str = NODE_IP
    host_ip: str = HOST_IP
    pod_cidr: str = POD_CIDR
    service_cidr: str = SERVICE_CIDR
    dns_ip: str = DNS_IP
    cluster_domain: str = CLUSTER_DOMAIN
    timings: dict[str, float] = field(default_factory=dict)

    # -- paths and addresses
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.node_ip}:{API_PORT}"

    @property
    def ca_cert(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @property
    def token(self) -> str:
        return (self.state_dir / "pki" / "token").read_text()

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def ssh_private_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def holder_pid(self) -> int:
        return int(_read_state(self.state_dir)["procs"]["holder"]["pid"])

    @property
    def containerd_address(self) -> str:
        """The node's containerd socket as a host path (through the holder's root)."""
        return f"/proc/{self.holder_pid}/root{NODE_SOCKET}"

    # -- clients
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["K8S_AUTH_KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', SYSTEM_PATH)}"
        return env

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """kubectl of the same build against this cluster; raises with stderr on failure when check."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def create_namespace(self, prefix: str = "test") -> str:
        from kubernetes import client

        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name

    def node_exec(
        self, argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the node's network and mount namespaces (PATH has bin_dir first)."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.holder_pid), "-n", "-m", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PATH": f"{self.bin_dir}:{SYSTEM_PATH}"},
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"node_exec {list(argv)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.node_exec([str(self.bin_dir / "ctr"), "-n", "k8s.io", *args], check=check, timeout=timeout)

    def import_image(self, tar: Path | str) -> None:
        """Load a docker-archive or OCI tar into the node's containerd, where kubelet finds it."""
        self.ctr("images", "import", "--no-unpack=false", str(Path(tar).resolve()))

    # -- Ansible
    def ansible_host_vars(self) -> dict[str, str]:
        """Inventory variables for the node as an ssh host (a throw-away host key: no checking)."""
        return {
            "ansible_host": self.node_ip,
            "ansible_port": "22",
            "ansible_connection": "ssh",
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh_private_key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            "ansible_python_interpreter": "/usr/bin/python3",
        }

    def ssh(self, command: str, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the node over ssh, as Ansible would."""
        proc = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.ssh_private_key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                f"root@{self.node_ip}",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"ssh {command!r} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    # -- figures
    def memory_mib(self) -> dict[str, float]:
        """VmRSS of each node process (the components, containerd, sshd) and of the shims, in MiB."""
        st = _read_state(self.state_dir)
        out: dict[str, float] = {}
        for name, rec in st["procs"].items():
            if name != "holder" and _alive(rec):
                out[name] = _rss_kib(int(rec["pid"])) / 1024
        netns = _ns_inode(self.holder_pid, "net")
        shims = 0
        for pid in _pids():
            if _ns_inode(pid, "net") == netns and _comm(pid) == "containerd-shim":
                shims += _rss_kib(pid)
        out["shims"] = shims / 1024
        return out

    def report(self, write: Callable[[str], None] = print) -> None:
        t = self.timings
        write(
            f"kube_cluster v{self.version}: build/cache check {t.get('build', 0):.1f} s, "
            f"node Ready {t.get('node_ready', 0):.1f} s, CoreDNS Ready {t.get('coredns_ready', 0):.1f} s "
            f"after start (containerd+images {t.get('containerd', 0):.1f} s, "
            f"apiserver {t.get('apiserver_ready', 0):.1f} s)"
        )
        mem = self.memory_mib()
        write(
            "kube_cluster memory (RSS MiB): "
            + ", ".join(f"{k} {v:.0f}" for k, v in mem.items())
            + f"; total {sum(mem.values()):.0f}"
        )


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _read_state(st: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((st / "state.json").read_text())
        return data
    except (OSError, ValueError):
        return {"procs": {}, "created_dirs": [], "routes": [], "containers": []}


def _write_state(st: Path, state: dict[str, Any]) -> None:
    tmp = st / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(st / "state.json")


def _wait(what: str, cond: Callable[[], bool], timeout: float, check: Callable[[], None] | None = None) -> None:
    deadline = _now() + timeout
    while _now() < deadline:
        if check is not None:
            check()
        try:
            if cond():
                return
        except Exception:  # not up yet: the next round asks again  # noqa: S110
            pass
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class _Node:
    """Starts and stops the node; all state (pids, created dirs, routes) is in STATE_DIR/state.json."""

    def __init__(self, st: Path, bin_dir: Path, images: dict[str, tuple[str, Path]]) -> None:
        self.st, self.bin, self.images = st, bin_dir, images
        self.state = _read_state(st)
        self.t0 = _now()
        self.timings: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.timings[name] = round(_now() - self.t0, 1)

    def save(self) -> None:
        _write_state(self.st, self.state)

    def nsenter(self) -> list[str]:
        return ["nsenter", "-t", str(self.state["procs"]["holder"]["pid"]), "-n", "-m", "--"]

    def run_in_node(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.nsenter(), *argv],
            capture_output=True,
            text=True,
            check=kw.pop("check", True),
            env={**os.environ, "PATH": f"{self.bin}:{SYSTEM_PATH}"},
            **kw,
        )

    def spawn(self, name: str, argv: Sequence[str], in_node: bool = True) -> None:
        log = open(self.st / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child)
        proc = subprocess.Popen(
            [*self.nsenter(), *argv] if in_node else list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PATH": f"{self.bin}:{SYSTEM_PATH}"},
        )
        log.close()
        # nsenter execs the command, so the pid is the component's own.
        time.sleep(0.05)
        self.state["procs"][name] = {"pid": proc.pid, "start": _start_time(proc.pid)}
        self.save()

    def check_alive(self, *names: str) -> Callable[[], None]:
        def check() -> None:
            for n in names:
                if not _alive(self.state["procs"].get(n, {})):
                    tail = (self.st / "logs" / f"{n}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{n} exited during start-up; end of its log:\n{tail}")

        return check

    # -- steps
    def namespaces(self) -> None:
        """The holder, the bind mounts kubelet/CNI need, the veth and the host routes."""
        n = self.st / "node"
        for target, rel in NODE_BINDS.items():
            (n / rel).mkdir(parents=True, exist_ok=True)
            # The mount point must exist on the host; create it empty and remove it at teardown.
            missing = []
            p = Path(target)
            while not p.exists():
                missing.append(str(p))
                p = p.parent
            for d in reversed(missing):
                os.mkdir(d)
                self.state["created_dirs"].insert(0, d)
        self.save()
        binds = " && ".join(f"mount --bind '{n / rel}' '{target}'" for target, rel in NODE_BINDS.items())
        script = (
            "mount -t tmpfs -o mode=755 mlopslab-node-run /run && mkdir -p /run/sshd /run/containerd /run/lock && "
            f"{binds} && exec sleep infinity"
        )
        log = open(self.st / "logs" / "holder.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        time.sleep(0.05)
        self.state["procs"]["holder"] = {"pid": proc.pid, "start": _start_time(proc.pid)}
        self.save()
        host_mnt = _ns_inode("self", "mnt")

        def ready() -> bool:
            return (
                _ns_inode(proc.pid, "mnt") != host_mnt
                and "mlopslab-node-run" in Path(f"/proc/{proc.pid}/mountinfo").read_text()
                and _comm(proc.pid) == "sleep"
            )

        _wait("the node namespace holder", ready, 15)
        self.state["procs"]["holder"]["start"] = _start_time(proc.pid)
        self.save()
        subprocess.run(
            ["ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NODE, "netns", str(proc.pid)],
            check=True,
        )
        self.state["veth"] = VETH_HOST
        self.save()
        subprocess.run(["ip", "addr", "add", f"{HOST_IP}/30", "dev", VETH_HOST], check=True)
        subprocess.run(["ip", "link", "set", VETH_HOST, "up"], check=True)
        self.run_in_node(
            [
                "sh",
                "-c",
                f"ip link set lo up && ip addr add {NODE_IP}/30 dev {VETH_NODE} && ip link set {VETH_NODE} up && "
                "sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 "
                "net.ipv4.conf.all.route_localnet=1 && "
                # No default route: a route for the service CIDR lets the node's own processes reach
                # ClusterIPs (the first route lookup precedes kube-proxy's DNAT in OUTPUT).
                f"ip route add {SERVICE_CIDR} dev {VETH_NODE} src {NODE_IP}",
            ]
        )
        for cidr in (POD_CIDR, SERVICE_CIDR):
            subprocess.run(["ip", "route", "add", cidr, "via", NODE_IP, "dev", VETH_HOST], check=True)
            self.state["routes"].append(cidr)
            self.save()

    def containerd(self) -> None:
        self.spawn("containerd", [str(self.bin / "containerd"), "--config", str(self.st / "conf" / "containerd.toml")])
        _wait(
            "containerd",
            lambda: self.run_in_node([str(self.bin / "ctr"), "version"], check=False).returncode == 0,
            30,
            self.check_alive("containerd"),
        )

    def import_images(self, names: Sequence[str]) -> None:
        for name in names:
            self.run_in_node([str(self.bin / "ctr"), "-n", "k8s.io", "images", "import", str(self.images[name][1])])

    def sshd(self) -> None:
        s = self.st / "ssh"
        s.mkdir(mode=0o700, exist_ok=True)
        for key in ("id_ed25519", "ssh_host_ed25519_key"):
            if not (s / key).exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mlopslab-{key}", "-f", str(s / key)],
                    check=True,
                )
        shutil.copy(s / "id_ed25519.pub", s / "authorized_keys")
        _put(s / "sshd_config", _sshd_config(self.st, self.bin))
        self.spawn("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(s / "sshd_config")])

    def control_plane(self) -> None:
        pki, n = self.st / "pki", self.st / "node"
        self.spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=mlopslab",
                f"--data-dir={n / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=mlopslab=http://127.0.0.1:2380",
                "--listen-metrics-urls=http://127.0.0.1:2381",
                "--quota-backend-bytes=2147483648",
                # A test cluster: durability is not worth an fsync per write on a shared disk.
                "--unsafe-no-fsync",
                "--logger=zap",
                "--log-level=warn",
            ],
        )
        self.spawn(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                "--etcd-servers=http://127.0.0.1:2379",
                "--bind-address=0.0.0.0",
                f"--secure-port={API_PORT}",
                f"--advertise-address={NODE_IP}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--cert-dir={n / 'apiserver-certs'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )

        def api_ready() -> bool:
            out = self.run_in_node(
                [
                    "curl",
                    "-fsS",
                    "--max-time",
                    "2",
                    "--cacert",
                    str(pki / "ca.crt"),
                    "--cert",
                    str(pki / "admin.crt"),
                    "--key",
                    str(pki / "admin.key"),
                    f"https://{NODE_IP}:{API_PORT}/readyz",
                ],
                check=False,
            )
            return out.returncode == 0

        _wait("kube-apiserver /readyz", api_ready, 120, self.check_alive("etcd", "kube-apiserver"))
        self.mark("apiserver_ready")
        common = [
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--v=1",
        ]
        self.spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={pki / 'kcm.kubeconfig'}",
                f"--authentication-kubeconfig={pki / 'kcm.kubeconfig'}",
                f"--authorization-kubeconfig={pki / 'kcm.kubeconfig'}",
                "--secure-port=10257",
                f"--cert-dir={n / 'kcm-certs'}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--allocate-node-cidrs=true",
                f"--cluster-cidr={POD_CIDR}",
                "--node-cidr-mask-size=24",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                *common,
            ],
        )
        self.spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={pki / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={pki / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={pki / 'scheduler.kubeconfig'}",
                "--secure-port=10259",
                f"--cert-dir={n / 'scheduler-certs'}",
                *common,
            ],
        )

    def node_agents(self) -> None:
        pki, c = self.st / "pki", self.st / "conf"
        self.spawn(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={c / 'kubelet.yaml'}",
                f"--kubeconfig={pki / 'kubelet.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        self.spawn("kube-proxy", [str(self.bin / "kube-proxy"), f"--config={c / 'kube-proxy.yaml'}", "--v=1"])


def _kubectl_json(cluster: KubeCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _node_ready(cluster: KubeCluster) -> bool:
    node = _kubectl_json(cluster, "get", "node", NODE_NAME)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def _coredns_ready(cluster: KubeCluster) -> bool:
    dep = _kubectl_json(cluster, "-n", "kube-system", "get", "deployment", "coredns")
    if dep["status"].get("readyReplicas", 0) < 1:
        return False
    # Ready also means it answers: a query for the API service's name through the Service IP.
    out = cluster.node_exec(
        ["python3", "-c", _DNS_QUERY, f"kubernetes.default.svc.{CLUSTER_DOMAIN}", DNS_IP], check=False
    )
    return out.stdout.strip() == API_SERVICE_IP


# A dependency-free A query (the node has no dig): prints the first A record's address.
_DNS_QUERY = r"""
import random, socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
qid = random.randrange(65536)
q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(q, (server, 53))
r = s.recv(4096); an = struct.unpack(">H", r[6:8])[0]; i = len(q)
for _ in range(an):
    i += 2 if r[i] & 0xC0 == 0xC0 else r.index(b"\0", i) + 1 - i
    t, _c, _ttl, ln = struct.unpack(">HHIH", r[i:i + 10]); i += 10
    if t == 1:
        print(socket.inet_ntoa(r[i:i + 4])); break
    i += ln
"""


@contextlib.contextmanager
def _machine_lock(st: Path, timeout: float = 3600) -> Iterator[IO[str]]:
    """One cluster per machine (fixed addresses): a second session waits, saying so."""
    st.parent.mkdir(parents=True, exist_ok=True)
    f = open(st.parent / "kube-cluster.lock", "w")  # noqa: SIM115
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"kube_cluster: another session holds {f.name}; waiting", file=sys.stderr)
            deadline = _now() + timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if _now() > deadline:
                        raise TimeoutError(f"{f.name} still held after {timeout:.0f} s") from None
                    time.sleep(2)
        yield f
    finally:
        f.close()


def start_cluster(st: Path = STATE_DIR) -> KubeCluster:
    """Build if needed, then start the node in st (stopping a stale one recorded there first)."""
    if os.geteuid() != 0:
        raise PermissionError("the cluster harness needs root (namespaces, veth, containerd)")
    bin_dir, images, build_s = ensure_built()
    stop_cluster(st)
    shutil.rmtree(st, ignore_errors=True)
    for d in ("logs", "node", "conf", "pki"):
        (st / d).mkdir(parents=True, exist_ok=True)
    _write_state(st, {"procs": {}, "created_dirs": [], "routes": [], "containers": []})
    node = _Node(st, bin_dir, images)
    cluster = KubeCluster(state_dir=st, bin_dir=bin_dir, images=images)
    try:
        _write_pki(st / "pki")
        for user in ("admin", "kcm", "scheduler", "kubelet", "proxy"):
            _kubeconfig(st / "pki" / f"{user}.kubeconfig", st / "pki", user)
        _kubeconfig(cluster.kubeconfig, st / "pki", "admin", with_token=True)
        _write_configs(st, bin_dir, images["pause"][0])
        node.namespaces()
        node.containerd()
        node.import_images(["pause", "coredns"])
        node.mark("containerd")
        # The bigger Debian-based images load while the control plane starts.
        loader = threading.Thread(target=node.import_images, args=(["git-sync", "toolbox"],), daemon=True)
        loader.start()
        node.sshd()
        node.control_plane()
        node.node_agents()
        _wait("node Ready", lambda: _node_ready(cluster), 180, node.check_alive(*COMPONENTS, "containerd"))
        node.mark("node_ready")
        cluster.kubectl("apply", "--server-side", "-f", "-", input=_coredns_manifest(images["coredns"][0]))
        _wait("CoreDNS Ready", lambda: _coredns_ready(cluster), 120, node.check_alive(*COMPONENTS))
        node.mark("coredns_ready")
        loader.join(timeout=300)
        _wait("sshd", lambda: cluster.ssh("true", check=False, timeout=10).returncode == 0, 20)
    except BaseException:
        with contextlib.suppress(Exception):
            print(_failure_context(st), file=sys.stderr)
        stop_cluster(st)
        raise
    cluster.timings = {"build": round(build_s, 1), **node.timings}
    (st / "timings.json").write_text(json.dumps(cluster.timings))
    return cluster


def _failure_context(st: Path) -> str:
    out = []
    for log in sorted((st / "logs").glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        out.append(f"--- {log.name} (last lines)\n" + "\n".join(lines))
    return "\n".join(out)


def stop_cluster(st: Path = STATE_DIR) -> None:
    """Tear down what st/state.json records: processes by pid, then what is left in the node's and the
    pods' netns and in the containers' cgroups, the veth, the routes, the mount points, the cgroups."""
    state = _read_state(st)
    procs: dict[str, dict[str, Any]] = state.get("procs", {})
    holder = procs.get("holder", {})
    holder_alive = _alive(holder)
    bin_dir = Path(_read_bin_dir(st))
    containers: set[str] = set(state.get("containers", []))
    pod_netns: set[str] = set()
    node_netns = _ns_inode(holder["pid"], "net") if holder_alive else None
    if holder_alive:
        ns = ["nsenter", "-t", str(holder["pid"]), "-n", "-m", "--"]
        if _alive(procs.get("containerd", {})) and (bin_dir / "ctr").exists():
            ls = subprocess.run(
                [*ns, str(bin_dir / "ctr"), "-n", "k8s.io", "containers", "ls", "-q"],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            containers |= set(ls.stdout.split())
        netns_dir = Path(f"/proc/{holder['pid']}/root/run/netns")
        with contextlib.suppress(OSError):
            for f in netns_dir.iterdir():
                with contextlib.suppress(OSError):
                    pod_netns.add(f"net:[{f.stat().st_ino}]")
    state["containers"] = sorted(containers)
    if st.exists():
        _write_state(st, state)
    # 1. the components, by recorded pid (kubelet first, so nothing restarts what we stop)
    for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "sshd"):
        _kill_rec(procs.get(name, {}))
    _kill_rec(procs.get("etcd", {}))
    _kill_rec(procs.get("containerd", {}), timeout=5)
    # 2. what is left in the node's netns (shims, servers a test started) and in the pods' netns
    if node_netns:
        doomed = []
        for pid in _pids():
            if pid == int(holder["pid"]):
                continue
            if _ns_inode(pid, "net") in {node_netns, *pod_netns}:
                doomed.append(pid)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # 3. container processes left in their cgroups (runc's cgroupfs paths /k8s.io/<id>)
    for cid in containers:
        for procs_file in Path("/sys/fs/cgroup").glob(f"*/k8s.io/{cid}/cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid_s in procs_file.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid_s), signal.SIGKILL)
    time.sleep(0.3 if containers else 0)
    # 4. the holder: its namespaces go, and with them every mount, iptables rule, bridge and pod netns
    _kill_rec(holder, timeout=5)
    # 5. host-side: routes, veth, the empty mount points, the container cgroups
    for cidr in state.get("routes", []):
        subprocess.run(["ip", "route", "del", cidr, "via", NODE_IP], capture_output=True, check=False)
    if state.get("veth"):
        subprocess.run(["ip", "link", "del", state["veth"]], capture_output=True, check=False)
    for d in state.get("created_dirs", []):
        with contextlib.suppress(OSError):
            os.rmdir(d)
    for cid in containers:
        for cg in Path("/sys/fs/cgroup").glob(f"*/k8s.io/{cid}"):
            _rmdir_tree(cg)
    for parent in Path("/sys/fs/cgroup").glob("*/k8s.io"):
        with contextlib.suppress(OSError):
            parent.rmdir()  # only when empty: another containerd may use it
    if st.exists():
        _write_state(st, {"procs": {}, "created_dirs": [], "routes": [], "containers": []})
        if not os.environ.get("MLOPSLAB_KEEP_CLUSTER_LOGS"):
            for d in ("node", "pki", "ssh"):
                shutil.rmtree(st / d, ignore_errors=True)


def _rmdir_tree(path: Path) -> None:
    for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir():
            with contextlib.suppress(OSError):
                sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _read_bin_dir(st: Path) -> str:
    try:
        return subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-bin-dir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "/nonexistent"


@contextlib.contextmanager
def running_cluster(st: Path = STATE_DIR) -> Iterator[KubeCluster]:
    """The machine lock, a started cluster, and teardown whatever happens."""
    with _machine_lock(st):
        cluster = start_cluster(st)
        try:
            yield cluster
        finally:
            stop_cluster(st)


@pytest.fixture(scope="session")
def kube_cluster(pytestconfig: pytest.Config) -> Iterator[KubeCluster]:
    """A real single-node cluster shared by the whole session (see the module docstring)."""
    if os.geteuid() != 0:
        pytest.skip("the real cluster needs root (namespaces, veth, containerd)")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")

    def write(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)

    with running_cluster() as cluster:
        cluster.report(write)
        yield cluster


def _status(st: Path) -> int:
    state = _read_state(st)
    procs = state.get("procs", {})
    if not procs:
        print("kube-cluster: not running")
        return 1
    for name, rec in procs.items():
        print(
            f"{name:24} {'running' if _alive(rec) else 'stopped'} pid {rec['pid']} "
            f"rss {_rss_kib(rec['pid']) / 1024:.0f} MiB"
        )
    with contextlib.suppress(OSError):
        print("timings:", (st / "timings.json").read_text())
    print(f"export KUBECONFIG={st / 'kubeconfig'}")
    return 0


def main(argv: Sequence[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    if cmd == "up":
        lock = _machine_lock(STATE_DIR, timeout=5)
        lock.__enter__()
        cluster = start_cluster()
        cluster.report()
        print(f"export KUBECONFIG={cluster.kubeconfig}  # logs in {cluster.logs}; stop with: down")
        # The lock is released with this process; `down` needs no lock (it only acts on state.json).
        return 0
    if cmd == "down":
        t0 = _now()
        stop_cluster()
        print(f"kube-cluster: down in {_now() - t0:.1f} s")
        return 0
    if cmd == "status":
        return _status(STATE_DIR)
    print("usage: python -m tests.support.kube_cluster up|down|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))


__all__ = ["KubeCluster", "kube_cluster", "running_cluster", "start_cluster", "stop_cluster"]
