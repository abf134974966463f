"""Self-tests of the real single-node cluster harness (tests/support/kube_cluster.py, lab_vms.py).

Each test proves one capability the lab's tests will rely on, with real components: the node and its
version, cluster DNS (Service and headless pod records), Services through kube-proxy from a pod and
from the host, exec/logs, Jobs, hostPath volumes written as a non-root uid, Secrets, the git-sync image,
the node as an ssh/Ansible host whose iptables are its own, the lab VMs' SNAT symptom and fix, and the
helm 3 of the same build. Figures (start-up times, memory) are printed, never asserted on time.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube_cluster import KubeCluster
from tests.support.lab_vms import LabVms

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ns(kube_cluster: KubeCluster) -> Iterator[str]:
    name = kube_cluster.create_namespace("harness")
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def toolbox(cluster: KubeCluster) -> str:
    return cluster.images["toolbox"][0]


def apply(cluster: KubeCluster, ns: str, manifest: str) -> None:
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=textwrap.dedent(manifest))


def wait(cluster: KubeCluster, ns: str, what: str, condition: str = "Ready", timeout: int = 120) -> None:
    """kubectl wait for a condition ("Ready") or a jsonpath test ("jsonpath={.status.phase}=Bound")."""
    cond = condition if condition.startswith("jsonpath=") else f"condition={condition}"
    cluster.kubectl("-n", ns, "wait", f"--for={cond}", what, f"--timeout={timeout}s", timeout=timeout + 10)


def run_pod(
    cluster: KubeCluster,
    ns: str,
    name: str,
    script: str,
    timeout: int = 120,
    container: dict[str, Any] | None = None,
    **extra: Any,
) -> str:
    """Run a one-shot toolbox pod with `sh -c script`; return its logs once it Succeeded.

    container: extra fields of the main container (env, volumeMounts); extra: extra pod spec fields."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": toolbox(cluster),
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    **(container or {}),
                }
            ],
            **extra,
        },
    }
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = cluster.kubectl("-n", ns, "get", "pod", name, "-o", "jsonpath={.status.phase}").stdout
        if phase in {"Succeeded", "Failed"}:
            break
        time.sleep(0.5)
    logs = cluster.kubectl("-n", ns, "logs", name, "--all-containers", check=False).stdout
    assert phase == "Succeeded", f"pod {name} ended {phase!r}; logs:\n{logs}"
    return logs


def test_node_ready_with_expected_version(kube_cluster: KubeCluster) -> None:
    node = json.loads(kube_cluster.kubectl("get", "node", kube_cluster.node_name, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    info = node["status"]["nodeInfo"]
    assert ready == "True"
    assert info["kubeletVersion"] == f"v{kube_cluster.version}"
    assert info["kubeProxyVersion"] in {"", f"v{kube_cluster.version}"}
    assert info["containerRuntimeVersion"].startswith("containerd://2."), info
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == kube_cluster.node_ip
    server = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == f"v{kube_cluster.version}"
    kube_cluster.report()


def test_dns_resolves_services_and_headless_pod_records(kube_cluster: KubeCluster, ns: str) -> None:
    apply(
        kube_cluster,
        ns,
        f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: hl}}
        spec:
          replicas: 2
          selector: {{matchLabels: {{app: hl}}}}
          template:
            metadata: {{labels: {{app: hl}}}}
            spec:
              terminationGracePeriodSeconds: 0
              containers:
              - {{name: main, image: {toolbox(kube_cluster)}, imagePullPolicy: Never}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: hl}}
        spec:
          clusterIP: None
          selector: {{app: hl}}
          ports: [{{port: 80}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: named}}
        spec:
          selector: {{app: nothing}}
          ports: [{{port: 80}}]
        """,
    )
    wait(kube_cluster, ns, "deployment/hl", "Available")
    pod_ips = sorted(
        kube_cluster.kubectl(
            "-n", ns, "get", "pods", "-l", "app=hl", "-o", "jsonpath={.items[*].status.podIP}"
        ).stdout.split()
    )
    cluster_ip = kube_cluster.kubectl("-n", ns, "get", "svc", "named", "-o", "jsonpath={.spec.clusterIP}").stdout
    domain = kube_cluster.cluster_domain
    logs = run_pod(
        kube_cluster,
        ns,
        "dns-client",
        f"""python3 - <<'EOF'
import socket, time
def a(name):
    for _ in range(40):
        try:
            return sorted({{i[4][0] for i in socket.getaddrinfo(name, None, socket.AF_INET)}})
        except socket.gaierror:
            time.sleep(0.5)
    return []
print("named", *a("named.{ns}.svc.{domain}"))
print("short", *a("named"))
print("headless", *a("hl.{ns}.svc.{domain}"))
EOF""",
    )
    lines = {line.split()[0]: line.split()[1:] for line in logs.splitlines() if line.strip()}
    assert lines["named"] == [cluster_ip]
    assert lines["short"] == [cluster_ip], "the pod's search path (ndots 5) must resolve a short Service name"
    assert lines["headless"] == pod_ips


def test_deployment_behind_clusterip_from_pod_and_host(kube_cluster: KubeCluster, ns: str) -> None:
    apply(
        kube_cluster,
        ns,
        f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web}}
        spec:
          replicas: 2
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              terminationGracePeriodSeconds: 0
              containers:
              - name: web
                image: {toolbox(kube_cluster)}
                imagePullPolicy: Never
                command: [sh, -c, "mkdir -p /tmp/www && hostname > /tmp/www/index.html && cd /tmp/www &&
                  exec python3 -m http.server 8080"]
                readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: web}}
        spec:
          selector: {{app: web}}
          ports: [{{port: 80, targetPort: 8080}}]
        """,
    )
    wait(kube_cluster, ns, "deployment/web", "Available")
    pods = set(
        kube_cluster.kubectl(
            "-n", ns, "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"
        ).stdout.split()
    )
    assert len(pods) == 2
    # Ready pods reach the Service's endpoints, then kube-proxy's rules, a moment later (until then
    # the Service refuses connections): from the host namespace, until both replicas have answered.
    cluster_ip = kube_cluster.kubectl("-n", ns, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while seen != pods and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=5) as resp:
                seen.add(resp.read().decode().strip())
        except OSError:
            time.sleep(0.5)
    assert seen == pods, "both replicas answer through kube-proxy from the host namespace"
    logs = run_pod(
        kube_cluster,
        ns,
        "web-client",
        f"""python3 - <<'EOF'
import urllib.request
for _ in range(30):
    url = "http://web.{ns}.svc.{kube_cluster.cluster_domain}/"
    print(urllib.request.urlopen(url, timeout=5).read().decode().strip())
EOF""",
    )
    assert set(logs.split()) == pods, "both replicas answer through the Service from a pod"


def test_exec_and_logs(kube_cluster: KubeCluster, ns: str) -> None:
    apply(
        kube_cluster,
        ns,
        f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: talker}}
        spec:
          terminationGracePeriodSeconds: 0
          containers:
          - name: main
            image: {toolbox(kube_cluster)}
            imagePullPolicy: Never
            command: [sh, -c, "echo started on $(hostname); exec sleep infinity"]
        """,
    )
    wait(kube_cluster, ns, "pod/talker")
    out = kube_cluster.kubectl("-n", ns, "exec", "talker", "--", "sh", "-c", "echo exec-ok $(id -u)").stdout
    assert out.strip() == "exec-ok 0"
    for _ in range(20):
        logs = kube_cluster.kubectl("-n", ns, "logs", "talker").stdout
        if logs:
            break
        time.sleep(0.5)
    assert logs.strip() == "started on talker"


def test_job_completes(kube_cluster: KubeCluster, ns: str) -> None:
    apply(
        kube_cluster,
        ns,
        f"""
        apiVersion: batch/v1
        kind: Job
        metadata: {{name: once}}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: main
                image: {toolbox(kube_cluster)}
                imagePullPolicy: Never
                command: [python3, -c, "print('job ran', 6 * 7)"]
        """,
    )
    wait(kube_cluster, ns, "job/once", "Complete")
    assert kube_cluster.kubectl("-n", ns, "logs", "job/once").stdout.strip() == "job ran 42"


def test_hostpath_pv_written_as_uid_50000(kube_cluster: KubeCluster, ns: str, tmp_path: Path) -> None:
    data = kube_cluster.state_dir / "node" / f"pv-{ns}"
    data.mkdir(parents=True)
    data.chmod(0o777)
    apply(
        kube_cluster,
        ns,
        f"""
        apiVersion: v1
        kind: PersistentVolume
        metadata: {{name: pv-{ns}}}
        spec:
          capacity: {{storage: 1Gi}}
          accessModes: [ReadWriteOnce]
          persistentVolumeReclaimPolicy: Retain
          storageClassName: harness-hostpath
          hostPath: {{path: {data}, type: Directory}}
        ---
        apiVersion: v1
        kind: PersistentVolumeClaim
        metadata: {{name: logs}}
        spec:
          accessModes: [ReadWriteOnce]
          storageClassName: harness-hostpath
          volumeName: pv-{ns}
          resources: {{requests: {{storage: 1Gi}}}}
        """,
    )
    wait(kube_cluster, ns, "pvc/logs", "jsonpath={.status.phase}=Bound")
    run_pod(
        kube_cluster,
        ns,
        "writer",
        "id -u > /logs/written-by && echo hello > /logs/hello.txt",
        container={"volumeMounts": [{"name": "logs", "mountPath": "/logs"}]},
        securityContext={"runAsUser": 50000, "runAsGroup": 0},
        volumes=[{"name": "logs", "persistentVolumeClaim": {"claimName": "logs"}}],
    )
    assert (data / "hello.txt").read_text() == "hello\n"
    assert (data / "written-by").read_text().strip() == "50000"
    assert (data / "hello.txt").stat().st_uid == 50000
    kube_cluster.kubectl("delete", "pv", f"pv-{ns}", "--wait=false", check=False)


def test_secret_as_env_and_file(kube_cluster: KubeCluster, ns: str) -> None:
    kube_cluster.kubectl("-n", ns, "create", "secret", "generic", "s1", "--from-literal=password=s3cr3t-value")
    logs = run_pod(
        kube_cluster,
        ns,
        "secret-reader",
        'echo "env=$PASSWORD"; echo "file=$(cat /etc/s1/password)"; grep -c " /etc/s1 tmpfs ro," /proc/mounts',
        container={
            "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "password"}}}],
            "volumeMounts": [{"name": "s1", "mountPath": "/etc/s1", "readOnly": True}],
        },
        volumes=[{"name": "s1", "secret": {"secretName": "s1"}}],
    )
    assert logs.split() == ["env=s3cr3t-value", "file=s3cr3t-value", "1"]


def test_git_sync_clones_from_the_host(kube_cluster: KubeCluster, ns: str, tmp_path: Path) -> None:
    src = tmp_path / "repos" / "dags.git"
    work = tmp_path / "work"
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "dags").mkdir()
    (work / "dags" / "hello_dag.py").write_text("DAG_ID = 'hello'\n")
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "dags"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(src)], check=True)
    with socket.socket() as s:
        s.bind((kube_cluster.host_ip, 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            "--reuseaddr",
            f"--base-path={src.parent}",
            f"--listen={kube_cluster.host_ip}",
            f"--port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        logs = run_pod(
            kube_cluster,
            ns,
            "git-sync",
            "cat /git/repo/dags/hello_dag.py; readlink /git/repo",
            container={"volumeMounts": [{"name": "git", "mountPath": "/git"}]},
            initContainers=[
                {
                    "name": "git-sync",
                    "image": kube_cluster.images["git-sync"][0],
                    "imagePullPolicy": "Never",
                    "env": [
                        {"name": "GITSYNC_REPO", "value": f"git://{kube_cluster.host_ip}:{port}/dags.git"},
                        {"name": "GITSYNC_REF", "value": "main"},
                        {"name": "GITSYNC_ROOT", "value": "/git"},
                        {"name": "GITSYNC_LINK", "value": "repo"},
                        {"name": "GITSYNC_ONE_TIME", "value": "true"},
                        {"name": "GITSYNC_ADD_USER", "value": "true"},
                    ],
                    "securityContext": {"runAsUser": 65533},
                    "volumeMounts": [{"name": "git", "mountPath": "/git"}],
                }
            ],
            volumes=[{"name": "git", "emptyDir": {}}],
        )
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "main"], capture_output=True, text=True, check=True)
    lines = logs.split("\n")
    assert "DAG_ID = 'hello'" in lines
    assert any(line.endswith(head.stdout.strip()) for line in lines), logs


def test_node_is_an_ssh_host_with_its_own_iptables(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    node_nat = kube_cluster.ssh("iptables -t nat -S").stdout
    assert "-N KUBE-SERVICES" in node_nat
    host_nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout
    assert "KUBE-" not in host_nat, "kube-proxy's chains must stay in the node's netns"
    images = kube_cluster.ssh("ctr -n k8s.io images ls -q").stdout.split()
    assert kube_cluster.images["coredns"][0] in images, "a stock ctr over ssh reaches the node's containerd"
    assert kube_cluster.ssh("test -s /var/lib/dpkg/status && echo dpkg-ok").stdout.strip() == "dpkg-ok"
    # And as Ansible sees it, with the documented host variables.
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"node": kube_cluster.ansible_host_vars()}}}))
    ansible = shutil.which("ansible", path=str(Path(sys.executable).parent))
    assert ansible, "ansible is in the project venv"
    out = subprocess.run(
        [
            ansible,
            "node",
            "-i",
            str(inventory),
            "-m",
            "ansible.builtin.command",
            "-a",
            "iptables -t nat -S KUBE-SERVICES",
        ],
        capture_output=True,
        text=True,
        env={**kube_cluster.env(), "ANSIBLE_HOST_KEY_CHECKING": "False"},
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "-N KUBE-SERVICES" in out.stdout


def test_vm_sees_pod_ip_then_node_ip_with_masquerade(kube_cluster: KubeCluster, lab_vms: LabVms, ns: str) -> None:
    """The seed's Calico symptom: without SNAT the "postgres VM" sees the pod IP (pg_hba rejects it);
    with the calico_vm_access fix (MASQUERADE -s <pod cidr> -d <vm ip> in the node's nat table) it
    sees the node IP."""
    vm = lab_vms.postgres
    server = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 15432)); s.listen(8)\n"
        "while True:\n"
        "    c, a = s.accept(); c.sendall(a[0].encode() + b'\\n'); c.close()\n"
    )
    vm.exec(["sh", "-c", f'nohup python3 -c "{server}" </dev/null >/tmp/peer-server.log 2>&1 &'])
    client = f"""python3 - <<'EOF'
import socket, time
for _ in range(40):
    try:
        s = socket.create_connection(("{vm.ip}", 15432), timeout=3)
        print(s.recv(64).decode().strip()); break
    except OSError:
        time.sleep(0.5)
EOF"""
    rule = ["-s", kube_cluster.pod_cidr, "-d", f"{vm.ip}/32", "-j", "MASQUERADE"]
    kube_cluster.node_exec(["iptables", "-t", "nat", "-D", "POSTROUTING", *rule], check=False)
    seen_without = run_pod(kube_cluster, ns, "vm-client-1", client).strip()
    pod_ip = kube_cluster.kubectl("-n", ns, "get", "pod", "vm-client-1", "-o", "jsonpath={.status.podIP}").stdout
    assert seen_without == pod_ip, f"without SNAT the VM must see the pod IP {pod_ip}, saw {seen_without!r}"
    kube_cluster.ssh("iptables -t nat -A POSTROUTING " + " ".join(rule))
    try:
        seen_with = run_pod(kube_cluster, ns, "vm-client-2", client).strip()
    finally:
        kube_cluster.node_exec(["iptables", "-t", "nat", "-D", "POSTROUTING", *rule], check=False)
    assert seen_with == kube_cluster.node_ip, f"with MASQUERADE the VM must see the node IP, saw {seen_with!r}"


def test_helm_3_installs_and_uninstalls(kube_cluster: KubeCluster, ns: str, tmp_path: Path) -> None:
    helm = str(kube_cluster.bin_dir / "helm")
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True).stdout.strip()
    major, minor = (int(x) for x in version.lstrip("v").split("+")[0].split(".")[:2])
    assert (major, minor) >= (3, 19), version
    assert major < 4, f"kubernetes.core drives Helm 3: {version}"
    env = kube_cluster.env()
    dry = subprocess.run(
        [helm, "install", "serving", str(REPO / "charts" / "serving"), "-n", ns, "--dry-run=server"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "kind: Deployment" in dry.stdout
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tiny}\ndata: {release: '{{ .Release.Name }}'}\n"
    )
    subprocess.run([helm, "install", "tiny", str(chart), "-n", ns, "--wait"], env=env, check=True, capture_output=True)
    assert kube_cluster.kubectl("-n", ns, "get", "cm", "tiny", "-o", "jsonpath={.data.release}").stdout == "tiny"
    subprocess.run([helm, "uninstall", "tiny", "-n", ns, "--wait"], env=env, check=True, capture_output=True)
    gone = kube_cluster.kubectl("-n", ns, "get", "cm", "tiny", check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr
