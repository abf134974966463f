#!/usr/bin/python
"""What a registry holds under an image reference (manifest and config digests), read-only."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from urllib.error import HTTPError
from urllib.parse import urlencode

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

DOCUMENTATION = r"""
---
module: container_registry_image_info
short_description: Read the manifest a registry holds for an image reference
description:
  - Asks a registry (Docker Registry HTTP API v2 / OCI distribution) for the manifest of
    I(reference) and returns whether it exists, its digest and the digest of the image config
    (the image ID the builder reports), so that a push can be skipped when the registry already
    has exactly the image.
  - Answers both Basic and Bearer-token challenges (distribution with htpasswd, Harbor, GitLab,
    GHCR and the like). Never changes anything; runs in check mode.
options:
  reference:
    description: The image reference, C(host[:port]/path:tag).
    type: str
    required: true
  username:
    description: Registry user ("" for anonymous access).
    type: str
    default: ""
  password:
    description: Its password or token.
    type: str
    default: ""
  validate_certs:
    description: Verify the registry's TLS certificate.
    type: bool
    default: true
  ca_path:
    description: CA bundle that signed the registry's certificate ("" for the system's).
    type: path
    default: ""
  plain_http:
    description: Talk HTTP instead of HTTPS (a registry on loopback without TLS).
    type: bool
    default: false
  timeout:
    description: Seconds per request.
    type: int
    default: 30
author: mlops-lab maintainers
"""

EXAMPLES = r"""
- name: Look for the serving image in the registry
  mlopslab.platform.container_registry_image_info:
    reference: registry.example.lab:5000/mlops-lab/serving:0.1.0-3f2a9c1b0d
    username: "{{ registry_user }}"
    password: "{{ registry_password }}"
  register: remote
"""

RETURN = r"""
exists:
  description: Whether the registry holds a manifest under the reference.
  returned: always
  type: bool
digest:
  description: Digest of that manifest (Docker-Content-Digest).
  returned: when exists
  type: str
config_digest:
  description: Digest of the image config (the local image ID); empty for a multi-platform index.
  returned: when exists
  type: str
media_type:
  description: Media type of the manifest.
  returned: when exists
  type: str
"""


ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def split_reference(reference):
    host, sep, rest = reference.partition("/")
    if not sep or not ("." in host or ":" in host or host == "localhost"):
        raise ValueError(f"{reference!r} names no registry host")
    if "@" in rest:
        path, _, ref = rest.partition("@")
    else:
        path, _, ref = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
    return host, path, ref


class Registry:
    def __init__(self, params):
        self.params = params
        self.scheme = "http" if params["plain_http"] else "https"
        self.token = None

    def _open(self, url, headers, basic=False):
        params = self.params
        kwargs = {
            "headers": headers,
            "validate_certs": params["validate_certs"],
            "timeout": params["timeout"],
            "method": "GET",
        }
        if params["ca_path"]:
            kwargs["ca_path"] = params["ca_path"]
        if basic and params["username"]:
            kwargs.update(url_username=params["username"], url_password=params["password"], force_basic_auth=True)
        return open_url(url, **kwargs)

    def _bearer_token(self, challenge):
        fields = dict(_CHALLENGE.findall(challenge))
        realm = fields.pop("realm", "")
        if not realm:
            raise ValueError(f"the registry's Bearer challenge names no realm: {challenge}")
        response = self._open(f"{realm}?{urlencode(fields)}", {}, basic=True)
        body = json.loads(response.read())
        return body.get("token") or body.get("access_token")

    def get(self, url):
        headers = {"Accept": ACCEPT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            return self._open(url, headers)
        except HTTPError as error:
            if error.code != 401:
                raise
            challenge = error.headers.get("WWW-Authenticate", "")
        if challenge.lower().startswith("bearer"):
            self.token = self._bearer_token(challenge)
            return self._open(url, {"Accept": ACCEPT, "Authorization": f"Bearer {self.token}"})
        if not self.params["username"]:
            raise ValueError("the registry wants credentials and none were given")
        credentials = base64.b64encode(f"{self.params['username']}:{self.params['password']}".encode()).decode()
        return self._open(url, {"Accept": ACCEPT, "Authorization": f"Basic {credentials}"})


def main():
    module = AnsibleModule(
        argument_spec={
            "reference": {"type": "str", "required": True},
            "username": {"type": "str", "default": ""},
            "password": {"type": "str", "default": "", "no_log": True},
            "validate_certs": {"type": "bool", "default": True},
            "ca_path": {"type": "path", "default": ""},
            "plain_http": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    try:
        host, path, ref = split_reference(module.params["reference"])
    except ValueError as error:
        module.fail_json(msg=f"reference: {error}")
    registry = Registry(module.params)
    url = f"{registry.scheme}://{host}/v2/{path}/manifests/{ref}"
    try:
        response = registry.get(url)
    except HTTPError as error:
        if error.code == 404:
            module.exit_json(changed=False, exists=False)
        module.fail_json(msg=f"GET {url}: HTTP {error.code} {error.reason}")
    except Exception as error:  # connection refused, TLS, a refused login
        module.fail_json(msg=f"GET {url}: {error}")
    body = response.read()
    manifest = json.loads(body)
    media_type = manifest.get("mediaType") or response.headers.get("Content-Type", "")
    digest = response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
    module.exit_json(
        changed=False,
        exists=True,
        digest=digest,
        config_digest=(manifest.get("config") or {}).get("digest", ""),
        media_type=media_type,
    )


if __name__ == "__main__":
    main()
