#!/usr/bin/python
# Copyright: mlops-lab maintainers
# Apache-2.0
"""Check that a deploy key can read a git repository over SSH and that it holds the DAGs; publish them.

gitSync clones the DAG repository in every Airflow pod, with the deploy key of a Secret and the
chart's known_hosts. When the key, the host key or the repository's contents are wrong, the pods
start and sit there without DAGs, or crash-loop their git-sync sidecar, minutes after the install.
This module does what gitSync will do, first, from the control node, with the same key and the
same known_hosts (StrictHostKeyChecking yes), and says which of them is wrong.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: git_ssh_remote
short_description: Check (and optionally publish) a DAG repository over SSH with a deploy key
description:
  - Runs C(git ls-remote) with the deploy key and the given known_hosts, host keys checked, then a
    shallow clone without checkout to see whether O(sub_path) holds every one of O(required_paths).
  - With O(publish_source), first makes O(sub_path) of O(branch) equal to that directory and pushes a
    commit when anything differs (check mode reports the difference without pushing).
  - Failures name the cause (unknown host key, key refused, repository or branch missing, content missing).
options:
  url:
    description: SSH URL of the repository, C(git@host:owner/repo.git) or C(ssh://user@host:port/path).
    type: str
    required: true
  branch:
    description: Branch gitSync follows.
    type: str
    default: main
  private_key:
    description: The deploy key (OpenSSH private key).
    type: str
    required: true
  known_hosts:
    description: known_hosts lines of the git server.
    type: str
    default: ""
  strict_host_key_checking:
    description: Check the server's host key against O(known_hosts).
    type: bool
    default: true
  sub_path:
    description: Folder of the DAGs in the repository.
    type: str
    default: dags
  required_paths:
    description: Paths below O(sub_path) that must exist.
    type: list
    elements: str
    default: []
  publish_source:
    description: Directory whose files O(sub_path) must hold; empty only checks.
    type: path
    default: ""
  commit_message:
    description: Message of the published commit.
    type: str
    default: Publish the DAGs
  author:
    description: Author of the published commit, as C(Name <email>).
    type: str
    default: mlops-lab <mlops-lab@localhost>
  timeout:
    description: Seconds for each git command.
    type: int
    default: 60
author: mlops-lab maintainers
"""

EXAMPLES = r"""
- name: Check that the deploy key reads the DAG repository
  mlopslab.platform.git_ssh_remote:
    url: git@github.com:me/mlops-dags.git
    private_key: "{{ vault_airflow_git_ssh_private_key }}"
    known_hosts: "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    required_paths: [mlopslab_pipeline/__init__.py]
  no_log: true
"""

RETURN = r"""
commit:
  description: Commit of the branch after the run.
  returned: success
  type: str
published:
  description: Whether a commit was (or in check mode would be) pushed.
  returned: always
  type: bool
files:
  description: Files that were (or would be) added, changed or removed by publishing.
  returned: always
  type: list
  elements: str
key_fingerprint:
  description: SHA256 fingerprint of the deploy key's public half (never the key).
  returned: always
  type: str
cause:
  description: On failure, the named cause.
  returned: failure
  type: str
"""

CAUSES = {
    "host_key_unknown": (
        "The git server's host key is not in the known_hosts given (dag_repository_known_hosts), so ssh refuses "
        "to talk to it, exactly as gitSync will. Add the server's published host key lines (for GitHub: "
        "docs.github.com, GitHub's SSH key fingerprints; for your own server: ssh-keyscan HOST, then compare the "
        "fingerprint with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it)."
    ),
    "host_key_changed": (
        "The git server presented a different host key than the one in dag_repository_known_hosts: either the "
        "server's key changed (update the lines) or something sits between you and it."
    ),
    "key_refused": (
        "The git server refused the deploy key. Add its public key (fingerprint {fingerprint}) as a deploy key of "
        "the repository (read access; write too when dag_repository_publish is true), or put the right private "
        "key in vault_airflow_git_ssh_private_key."
    ),
    "key_invalid": (
        "The deploy key is not a usable OpenSSH private key (check that the vault value keeps its line breaks and "
        "its BEGIN/END lines, and has no passphrase)."
    ),
    "repository_missing": (
        "The server accepts the key but has no such repository: check dag_repository_url (mlopslab_airflow_dags_repo)."
    ),
    "branch_missing": (
        "The repository has no branch {branch}: set mlopslab_airflow_dags_branch, or publish the DAGs "
        "(dag_repository_publish: true) to create it."
    ),
    "content_missing": (
        "The repository's {sub_path}/ lacks {missing}: gitSync would deliver no pipeline. Publish this repository's "
        "dags/ to it (dag_repository_publish: true, or copy dags/ there and push)."
    ),
    "push_refused": "The server refused the push: the deploy key needs write access to publish ({detail}).",
    "unreachable": "Could not reach the git server ({detail}): check the URL's host and port and the network.",
    "error": "git failed: {detail}",
}


class GitError(Exception):
    def __init__(self, cause: str, detail: str = "", **words: str) -> None:
        super().__init__(cause)
        self.cause = cause
        self.detail = detail
        self.words = words


def classify(stderr: str) -> str:
    """The cause behind a failed git-over-ssh command, from what ssh and git print."""
    text = stderr.lower()
    if "remote host identification has changed" in text:
        return "host_key_changed"
    if "host key verification failed" in text or "host key is known for" in text:
        return "host_key_unknown"
    if "load key" in text or "invalid format" in text or "error in libcrypto" in text:
        return "key_invalid"
    if "permission denied (publickey" in text:
        return "key_refused"
    if (
        "does not appear to be a git repository" in text
        or "repository not found" in text
        or "no such file or directory" in text
    ):
        return "repository_missing"
    if "could not resolve hostname" in text or "connection refused" in text or "timed out" in text:
        return "unreachable"
    if "no route to host" in text or "connection closed" in text or "network is unreachable" in text:
        return "unreachable"
    return "error"


class Remote:
    """git against the remote with the deploy key and the known_hosts, in a private temp dir."""

    def __init__(self, params: dict[str, Any], workdir: str) -> None:
        self.params = params
        self.workdir = workdir
        key = os.path.join(workdir, "deploy_key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
            handle.write(params["private_key"].strip() + "\n")
        known_hosts = os.path.join(workdir, "known_hosts")
        with open(known_hosts, "w", encoding="utf-8") as handle:
            handle.write(params["known_hosts"].strip() + "\n" if params["known_hosts"].strip() else "")
        strict = "yes" if params["strict_host_key_checking"] else "no"
        ssh = [
            "ssh", "-F", "/dev/null", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"StrictHostKeyChecking={strict}", "-o", f"ConnectTimeout={min(params['timeout'], 20)}",
        ]  # fmt: skip
        name, _, email = params["author"].partition("<")
        who = {"NAME": name.strip() or "mlops-lab", "EMAIL": email.rstrip(">").strip() or "mlops-lab@localhost"}
        self.env = {
            **os.environ,
            "GIT_SSH_COMMAND": " ".join(shlex.quote(part) for part in ssh),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
            **{f"GIT_{role}_{field}": value for role in ("AUTHOR", "COMMITTER") for field, value in who.items()},
        }
        self.key = key

    def git(self, *args: str, cwd: str | None = None) -> str:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=cwd or self.workdir, env=self.env, capture_output=True, text=True,
                timeout=self.params["timeout"], check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise GitError("unreachable", f"git {args[0]} gave no answer within {self.params['timeout']} s") from exc
        if proc.returncode != 0:
            raise GitError(classify(proc.stderr), " ".join(proc.stderr.split()))
        return proc.stdout

    def fingerprint(self) -> str:
        proc = subprocess.run(["ssh-keygen", "-lf", self.key], capture_output=True, text=True, check=False)
        words = proc.stdout.split()
        return words[1] if proc.returncode == 0 and len(words) > 1 else ""

    def branch_head(self) -> str:
        branch = self.params["branch"]
        out = self.git("ls-remote", "--heads", "--", self.params["url"], f"refs/heads/{branch}")
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}":
                return sha
        return ""

    def clone(self, checkout: bool) -> str:
        path = os.path.join(self.workdir, "repo")
        shutil.rmtree(path, ignore_errors=True)
        args = ["clone", "--quiet", "--depth", "1", "--branch", self.params["branch"], "--single-branch"]
        if not checkout:
            args.append("--no-checkout")
        self.git(*args, "--", self.params["url"], path)
        return path


def _files(root: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for base, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".git"))
        for name in names:
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def publish(remote: Remote, head: str, check_mode: bool) -> list[str]:
    """Make sub_path equal to publish_source on the branch; the files that differ."""
    params = remote.params
    if head:
        repo = remote.clone(checkout=True)
    else:
        repo = os.path.join(remote.workdir, "repo")
        os.makedirs(repo)
        remote.git("init", "--quiet", "--initial-branch", params["branch"], repo)
    sub = params["sub_path"].strip("/")
    target = os.path.join(repo, sub)
    wanted = _files(params["publish_source"])
    present = _files(target) if os.path.isdir(target) else {}
    changed = sorted({name for name in wanted if present.get(name) != wanted[name]} | (set(present) - set(wanted)))
    if not changed or check_mode:
        return changed
    for name in changed:
        path = os.path.join(target, name)
        if name in wanted:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(wanted[name])
        else:
            os.remove(path)
    remote.git("add", "--all", "--", sub, cwd=repo)
    remote.git("commit", "--quiet", "-m", params["commit_message"], cwd=repo)
    try:
        remote.git("push", "--quiet", params["url"], f"HEAD:refs/heads/{params['branch']}", cwd=repo)
    except GitError as exc:
        if exc.cause in ("error", "key_refused"):
            raise GitError("push_refused", exc.detail) from exc
        raise
    return changed


def missing_paths(remote: Remote) -> list[str]:
    """The required paths that the DAG folder of the branch lacks (files, or folders with files)."""
    params = remote.params
    repo = remote.clone(checkout=False)
    sub = params["sub_path"].strip("/")
    listed = set(remote.git("ls-tree", "-r", "--name-only", "HEAD", "--", sub, cwd=repo).splitlines())
    folders = {"/".join(path.split("/")[:i]) for path in listed for i in range(1, path.count("/") + 1)}
    return [path for path in params["required_paths"] if f"{sub}/{path.strip('/')}" not in listed | folders]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "branch": {"type": "str", "default": "main"},
            "private_key": {"type": "str", "required": True, "no_log": True},
            "known_hosts": {"type": "str", "default": ""},
            "strict_host_key_checking": {"type": "bool", "default": True},
            "sub_path": {"type": "str", "default": "dags"},
            "required_paths": {"type": "list", "elements": "str", "default": []},
            "publish_source": {"type": "path", "default": ""},
            "commit_message": {"type": "str", "default": "Publish the DAGs"},
            "author": {"type": "str", "default": "mlops-lab <mlops-lab@localhost>"},
            "timeout": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["strict_host_key_checking"] and not params["known_hosts"].strip():
        module.fail_json(
            msg="No known_hosts for the git server (dag_repository_known_hosts is empty) while host keys are checked: "
            + CAUSES["host_key_unknown"],
            cause="host_key_unknown",
        )
    if params["publish_source"] and not os.path.isdir(params["publish_source"]):
        module.fail_json(msg=f"dag_repository_publish_source {params['publish_source']} is not a directory")
    workdir = tempfile.mkdtemp(prefix="mlopslab-git-")
    os.chmod(workdir, 0o700)
    result: dict[str, Any] = {"changed": False, "published": False, "files": []}
    try:
        remote = Remote(params, workdir)
        result["key_fingerprint"] = remote.fingerprint()
        head = remote.branch_head()
        if params["publish_source"]:
            files = publish(remote, head, module.check_mode)
            result.update(changed=bool(files), published=bool(files), files=files)
            if module.check_mode and (files or not head):
                # nothing was pushed: a look at the branch would only see what is there now
                module.exit_json(**result, commit=head, msg=f"Would publish {len(files)} file(s) to {params['url']}.")
            head = remote.branch_head()
        if not head:
            raise GitError("branch_missing")
        missing = missing_paths(remote)
        if missing:
            raise GitError("content_missing", sub_path=params["sub_path"].strip("/"), missing=", ".join(missing))
    except GitError as exc:
        words = {
            "fingerprint": result.get("key_fingerprint") or "unknown",
            "branch": params["branch"],
            "detail": exc.detail,
            **exc.words,
        }
        message = CAUSES[exc.cause].format(**words)
        if exc.detail and "{detail}" not in CAUSES[exc.cause]:
            message += f" (git: {exc.detail})"
        module.fail_json(msg=message, cause=exc.cause, **result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    sub = params["sub_path"].strip("/")
    published = f"; published {len(result['files'])} file(s)" if result["published"] else ""
    module.exit_json(
        **result,
        commit=head,
        msg=f"The deploy key reads {params['url']} ({params['branch']} at {head[:12]}), whose {sub}/ holds "
        f"{', '.join(params['required_paths']) or 'the DAGs'}{published}.",
    )


if __name__ == "__main__":
    main()
