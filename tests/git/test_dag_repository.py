"""mlopslab.platform.dag_repository against a real git server over SSH (marker ``netns``, root).

The server is this machine's own sshd, started by the test inside a fresh network namespace
(listening on that namespace's loopback only) with a host key, a deploy key and git-shell
generated at test time; the repositories are bare repositories in a temporary directory. The role
runs from ansible-playbook inside the same namespace, so what it checks is exactly what gitSync
does: ssh with the deploy key, StrictHostKeyChecking yes against the given known_hosts lines.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.role_play import RoleRun, apply_role

pytestmark = [pytest.mark.netns, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SSHD = Path("/usr/sbin/sshd")


def run(*argv: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=cwd, check=check, capture_output=True, text=True, timeout=120)


def keygen(path: Path) -> str:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class GitServer:
    ns: str
    root: Path
    deploy_key: str
    other_key: str
    known_hosts: str
    other_known_hosts: str

    def url(self, name: str) -> str:
        return f"ssh://root@127.0.0.1{self.root}/{name}.git"

    def head(self, name: str, branch: str = "main") -> str:
        out = run(
            "git", "--git-dir", str(self.root / f"{name}.git"), "rev-parse", "--verify", "-q", branch, check=False
        )
        return out.stdout.strip()

    def tree(self, name: str, branch: str = "main") -> list[str]:
        out = run("git", "--git-dir", str(self.root / f"{name}.git"), "ls-tree", "-r", "--name-only", branch)
        return out.stdout.splitlines()


def bare_repository(root: Path, name: str, files: dict[str, str]) -> None:
    """A bare repository whose main branch holds ``files`` (none: a repository with no branch)."""
    run("git", "init", "-q", "--bare", "--initial-branch", "main", str(root / f"{name}.git"))
    if not files:
        return
    work = root / f"{name}-work"
    run("git", "init", "-q", "--initial-branch", "main", str(work))
    for rel, text in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    env = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    run("git", *env, "add", "-A", cwd=work)
    run("git", *env, "commit", "-q", "-m", "seed", cwd=work)
    run("git", "push", "-q", str(root / f"{name}.git"), "main", cwd=work)
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and sshd need root")
    if not SSHD.exists() or shutil.which("git-shell") is None:
        pytest.fail("sshd or git-shell is missing: scripts/setup-host.sh installs openssh-server and git")
    base = tmp_path_factory.mktemp("git-server")
    base.chmod(0o755)
    root = base / "srv"
    root.mkdir()
    host_pub = keygen(base / "host_key")
    other_host_pub = keygen(base / "other_host_key")
    deploy_pub = keygen(base / "deploy_key")
    keygen(base / "other_key")
    (base / "authorized_keys").write_text(f'restrict,command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"" {deploy_pub}\n')
    dags = {f"dags/{p.relative_to(REPO / 'dags')}": p.read_text() for p in (REPO / "dags").rglob("*.py")}
    bare_repository(root, "dags", {**dags, "README.md": "DAGs\n"})
    bare_repository(root, "nodags", {"README.md": "not the pipeline\n", "dags/other_dag.py": "# another DAG\n"})
    bare_repository(root, "empty", {})
    shadow = run("getent", "shadow", "root", check=False).stdout.split(":")
    locked = len(shadow) > 1 and shadow[1].startswith("!")  # a locked root needs PAM's account check
    (base / "sshd_config").write_text(
        "ListenAddress 127.0.0.1\nPort 22\n"
        f"HostKey {base / 'host_key'}\nAuthorizedKeysFile {base / 'authorized_keys'}\n"
        f"PidFile {base / 'sshd.pid'}\nStrictModes no\nPermitRootLogin prohibit-password\nAllowUsers root\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"UsePAM {'yes' if locked else 'no'}\nLogLevel VERBOSE\n"
    )
    # sshd's privilege-separation directory (made by its init script, which does not run here)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    ns = f"mldag{secrets.token_hex(2)}"
    run("ip", "netns", "add", ns)
    log = (base / "sshd.log").open("wb")
    proc: subprocess.Popen[bytes] | None = None
    try:
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(SSHD), "-D", "-e", "-f", str(base / "sshd_config")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while run("ip", "netns", "exec", ns, "ss", "-Hltn", "sport = :22").stdout.strip() == "":
            assert proc.poll() is None, (base / "sshd.log").read_text()
            assert time.monotonic() < deadline, (base / "sshd.log").read_text()
            time.sleep(0.2)
        yield GitServer(
            ns=ns,
            root=root,
            deploy_key=(base / "deploy_key").read_text(),
            other_key=(base / "other_key").read_text(),
            known_hosts=f"127.0.0.1 {host_pub.rsplit(' ', 1)[0]}",
            other_known_hosts=f"127.0.0.1 {other_host_pub.rsplit(' ', 1)[0]}",
        )
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        log.close()
        run("ip", "netns", "del", ns, check=False)


def check(server: GitServer, tmp: Path, *args: str, **role_vars: Any) -> RoleRun:
    """The role, run inside the server's namespace (where 127.0.0.1 is the git server)."""
    variables = {
        "dag_repository_url": server.url("dags"),
        "dag_repository_known_hosts": server.known_hosts,
        "dag_repository_ssh_private_key": server.deploy_key,
        "dag_repository_publish_source": str(REPO / "dags"),
        **role_vars,
    }
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp),
        "LC_ALL": "C.UTF-8",
    }
    result = apply_role(
        "mlopslab.platform.dag_repository", variables, tmp, *args, prefix=["ip", "netns", "exec", server.ns], env=env
    )
    for key in (server.deploy_key, server.other_key):
        assert key.splitlines()[1] not in result.out, "a private key was printed"
    return result


def test_a_readable_repository_with_the_pipeline_passes(git_server: GitServer, tmp_path: Path) -> None:
    ok = check(git_server, tmp_path)
    assert ok.rc == 0, ok.out
    assert ok.changed == 0, ok.out
    assert (
        f"The deploy key reads {git_server.url('dags')} (main at {git_server.head('dags')[:12]}), whose dags/ holds"
        in (ok.text)
    ), ok.out


def test_a_wrong_key_is_named(git_server: GitServer, tmp_path: Path) -> None:
    refused = check(git_server, tmp_path, dag_repository_ssh_private_key=git_server.other_key)
    assert refused.rc != 0, refused.out
    assert "The git server refused the deploy key. Add its public key (fingerprint SHA256:" in refused.text, refused.out


def test_an_unknown_host_key_is_named(git_server: GitServer, tmp_path: Path) -> None:
    # known_hosts has no line for this server
    other_host = "192.0.2.1 " + git_server.known_hosts.split(" ", 1)[1]
    unknown = check(git_server, tmp_path, dag_repository_known_hosts=other_host)
    assert unknown.rc != 0, unknown.out
    assert "The git server's host key is not in the known_hosts given (dag_repository_known_hosts)" in unknown.text
    # known_hosts has a line for this server, with another key
    changed = check(git_server, tmp_path, dag_repository_known_hosts=git_server.other_known_hosts)
    assert changed.rc != 0, changed.out
    assert "The git server presented a different host key than the one in dag_repository_known_hosts" in changed.text
    empty = check(git_server, tmp_path, dag_repository_known_hosts="")
    assert empty.rc != 0, empty.out
    assert "dag_repository_known_hosts the git server's host key lines" in empty.text, empty.out


def test_a_repository_without_the_pipeline_is_named(git_server: GitServer, tmp_path: Path) -> None:
    missing = check(git_server, tmp_path, dag_repository_url=git_server.url("nodags"))
    assert missing.rc != 0, missing.out
    assert (
        "The repository's dags/ lacks mlopslab_pipeline/__init__.py, train_and_promote.py, rollback_champion.py"
        in missing.text
    ), missing.out
    nowhere = check(git_server, tmp_path, dag_repository_url=git_server.url("does-not-exist"))
    assert nowhere.rc != 0, nowhere.out
    assert "The server accepts the key but has no such repository" in nowhere.text, nowhere.out


def test_publishing_fills_an_empty_repository_once(git_server: GitServer, tmp_path: Path) -> None:
    url = git_server.url("empty")
    no_branch = check(git_server, tmp_path, dag_repository_url=url)
    assert no_branch.rc != 0, no_branch.out
    assert "The repository has no branch main" in no_branch.text, no_branch.out

    dry = check(git_server, tmp_path, "--check", dag_repository_url=url, dag_repository_publish=True)
    assert dry.rc == 0, dry.out
    assert dry.changed == 1, dry.out
    assert git_server.head("empty") == ""

    published = check(git_server, tmp_path, dag_repository_url=url, dag_repository_publish=True)
    assert published.rc == 0, published.out
    assert published.changed == 1, published.out
    tree = git_server.tree("empty")
    assert "dags/mlopslab_pipeline/__init__.py" in tree
    assert "dags/train_and_promote.py" in tree
    assert not [name for name in tree if "__pycache__" in name]

    again = check(git_server, tmp_path, dag_repository_url=url, dag_repository_publish=True)
    assert again.rc == 0, again.out
    assert again.changed == 0, again.out
    assert check(git_server, tmp_path, dag_repository_url=url).rc == 0
