#!/usr/bin/python
"""Which images a node's containerd holds, by reference and by config digest (read-only)."""

from __future__ import annotations

import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: containerd_image_info
short_description: Report which image references a node's containerd holds, with their config digests
description:
  - Lists the images of a containerd namespace with C(ctr images ls) and, for each of
    I(references) it holds, reads the manifest with C(ctr content get) to report the digest of
    the image config (the image ID a builder such as podman, docker or buildah gives it), so
    an import can be skipped when the node already has exactly that image.
  - Works with a plain containerd (C(ctr)) and with k3s (I(ctr_command) C([k3s, ctr])). Never
    changes anything; runs in check mode.
options:
  references:
    description: Image references to look for.
    type: list
    elements: str
    required: true
  ctr_command:
    description: The ctr command, as a list (C([ctr]), or C([k3s, ctr]) on k3s).
    type: list
    elements: str
    default: [ctr]
  address:
    description: containerd's socket ("" for ctr's default).
    type: str
    default: ""
  namespace:
    description: containerd namespace (kubelet's CRI uses k8s.io).
    type: str
    default: k8s.io
author: mlops-lab maintainers
"""

EXAMPLES = r"""
- name: Look for the platform's images on a node
  mlopslab.platform.containerd_image_info:
    references: [localhost/mlops-lab/serving:0.1.0-3f2a9c1b0d12]
    ctr_command: [k3s, ctr]
  register: node_images
"""

RETURN = r"""
images:
  description: For each reference, whether containerd holds it, its manifest digest and its config digest.
  returned: always
  type: dict
  sample:
    "localhost/mlops-lab/serving:0.1.0-3f2a9c1b0d12":
      {"present": true, "digest": "sha256:...", "config_digest": "sha256:..."}
"""


_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def main():
    module = AnsibleModule(
        argument_spec={
            "references": {"type": "list", "elements": "str", "required": True},
            "ctr_command": {"type": "list", "elements": "str", "default": ["ctr"]},
            "address": {"type": "str", "default": ""},
            "namespace": {"type": "str", "default": "k8s.io"},
        },
        supports_check_mode=True,
    )
    params = module.params
    ctr = list(params["ctr_command"])
    ctr += ["--address", params["address"]] if params["address"] else []
    ctr += ["--namespace", params["namespace"]]

    def run(*args):
        rc, out, err = module.run_command(ctr + list(args))
        if rc != 0:
            module.fail_json(msg=f"{' '.join(ctr + list(args))} failed (rc {rc}): {err.strip() or out.strip()}")
        return out

    listed = {}
    for line in run("images", "ls").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            listed[fields[0]] = fields[2]

    def config_digest(digest, depth=0):
        manifest = json.loads(run("content", "get", digest))
        if manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
            # An index (an archive with several platforms): one platform only is ever imported here.
            entries = manifest.get("manifests") or []
            return config_digest(entries[0]["digest"], depth + 1) if entries and depth < 2 else ""
        return (manifest.get("config") or {}).get("digest", "")

    images = {}
    for ref in params["references"]:
        if ref in listed:
            images[ref] = {"present": True, "digest": listed[ref], "config_digest": config_digest(listed[ref])}
        else:
            images[ref] = {"present": False, "digest": "", "config_digest": ""}
    module.exit_json(changed=False, images=images)


if __name__ == "__main__":
    main()
