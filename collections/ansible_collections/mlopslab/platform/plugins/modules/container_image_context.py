#!/usr/bin/python
"""Digest of an image's build inputs, and an exact copy of them as its build context."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: container_image_context
short_description: Digest an image's build inputs and stage exactly those files as its build context
description:
  - Computes a SHA-256 digest over the files under I(paths) (relative path, executable bit and
    content of each, in sorted order) and over I(salt), so that a changed Dockerfile,
    requirement, source file or build argument gives a new digest and nothing else does.
  - With I(dest), makes I(dest) an exact copy of those files (missing or different files are
    copied, files not in the set removed), so the builder sees what was digested and nothing
    else (no virtualenvs, caches or unrelated files of the checkout).
  - Check mode computes the digest and reports whether I(dest) would change, writing nothing.
options:
  src:
    description: Directory the I(paths) are relative to (the root of the build context).
    type: path
    required: true
  paths:
    description: Files or directories under I(src) that make up the build context.
    type: list
    elements: str
    required: true
  dest:
    description: Staging directory to make an exact copy of the inputs in; omitted, only the digest is computed.
    type: path
  exclude:
    description: Base-name patterns (fnmatch) of files and directories left out of digest and copy.
    type: list
    elements: str
    default: ['__pycache__', '*.pyc', '*.pyo', '.pytest_cache', '.mypy_cache', '.ruff_cache']
  salt:
    description: Further inputs of the build (version, build arguments, Dockerfile path) mixed into the digest.
    type: dict
    default: {}
author: mlops-lab maintainers
"""

EXAMPLES = r"""
- name: Stage the serving image's build context
  mlopslab.platform.container_image_context:
    src: "{{ playbook_dir }}/.."
    paths: [serving/Dockerfile, serving/requirements.txt, serving/__init__.py, serving/app]
    dest: ~/.cache/mlops-lab/image-contexts/serving
    salt: {version: 0.1.0, PYTHON_IMAGE: docker.io/library/python:3.11.14-slim-bookworm}
  register: serving_context
"""

RETURN = r"""
digest:
  description: SHA-256 (hex) of the inputs and the salt.
  returned: always
  type: str
files:
  description: Number of files in the context.
  returned: always
  type: int
"""


def _excluded(name, patterns):
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def collect(src, paths, exclude):
    """{relative path: absolute path} of every regular file the inputs name."""
    root = os.path.realpath(src)
    files = {}
    for rel in paths:
        start = os.path.realpath(os.path.join(root, rel))
        if start != root and not start.startswith(root + os.sep):
            raise ValueError(f"{rel!r} is outside {src}")
        if os.path.isfile(start):
            files[os.path.relpath(start, root)] = start
            continue
        if not os.path.isdir(start):
            raise ValueError(f"{rel!r} does not exist under {src}")
        for current, dirs, names in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not _excluded(d, exclude))
            for name in names:
                if _excluded(name, exclude):
                    continue
                path = os.path.join(current, name)
                if not os.path.isfile(path):
                    raise ValueError(f"{os.path.relpath(path, root)!r} is not a regular file")
                files[os.path.relpath(path, root)] = path
    return files


def _executable(path):
    return bool(os.stat(path).st_mode & stat.S_IXUSR)


def digest_of(files, salt):
    digest = hashlib.sha256()
    for rel in sorted(files):
        mode = "755" if _executable(files[rel]) else "644"
        digest.update(f"{rel}\0{mode}\0{_file_digest(files[rel])}\n".encode())
    digest.update(json.dumps(salt, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def stage(files, dest, check_mode):
    """Make dest hold exactly files; True when something was (or would be) changed."""
    changed = False
    for rel, path in sorted(files.items()):
        target = os.path.join(dest, rel)
        mode = 0o755 if _executable(path) else 0o644
        same = (
            os.path.isfile(target)
            and not os.path.islink(target)
            and stat.S_IMODE(os.stat(target).st_mode) == mode
            and _file_digest(target) == _file_digest(path)
        )
        if same:
            continue
        changed = True
        if not check_mode:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target) and not os.path.isfile(target):
                shutil.rmtree(target)
            shutil.copyfile(path, target)
            os.chmod(target, mode)
    if os.path.isdir(dest):
        wanted_dirs = {os.path.dirname(rel) for rel in files}
        wanted_dirs |= {parent for rel in wanted_dirs for parent in _parents(rel)}
        for current, _dirs, names in os.walk(dest, topdown=False):
            rel_dir = os.path.relpath(current, dest)
            for name in names:
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if rel not in files:
                    changed = True
                    if not check_mode:
                        os.remove(os.path.join(current, name))
            if rel_dir != "." and rel_dir not in wanted_dirs:
                changed = True
                if not check_mode:
                    shutil.rmtree(current, ignore_errors=True)
    return changed


def _parents(rel):
    while rel not in ("", "."):
        yield rel
        rel = os.path.dirname(rel)


def main():
    module = AnsibleModule(
        argument_spec={
            "src": {"type": "path", "required": True},
            "paths": {"type": "list", "elements": "str", "required": True},
            "dest": {"type": "path"},
            "exclude": {
                "type": "list",
                "elements": "str",
                "default": ["__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".mypy_cache", ".ruff_cache"],
            },
            "salt": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    if not params["paths"]:
        module.fail_json(msg="paths is empty: name the files and directories of the build context")
    try:
        files = collect(params["src"], params["paths"], params["exclude"])
    except ValueError as error:
        module.fail_json(msg=f"build inputs: {error}")
    result = {"changed": False, "digest": digest_of(files, params["salt"]), "files": len(files)}
    if params["dest"]:
        result["changed"] = stage(files, params["dest"], module.check_mode)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
