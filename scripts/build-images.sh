#!/usr/bin/env bash
# Builds the platform's images (MLflow, serving, Airflow, diagnose) on a machine that cannot pull
# from any registry, through the same role a user's control node runs
# (mlopslab.platform.container_images, playbooks/images.yml), from a local Python base instead of
# docker.io/library/python:3.11-slim-bookworm:
#
#   1. the debootstrap base of scripts/build-base-image.sh (localhost/debian-systemd:bookworm);
#   2. the Python base on top of it (images/python-base/Dockerfile), tagged
#      localhost/mlopslab-python:bookworm-<digest of that Dockerfile and of the base image>, so a
#      changed recipe builds a new one and an unchanged one builds nothing;
#   3. the images, content-tagged by the role (an unchanged checkout builds nothing: podman's own
#      storage is the cache; wheels are downloaded once for all images into podman's build cache).
#
# Usage: scripts/build-images.sh [ansible-playbook args]   build the images, print their refs
#        scripts/build-images.sh --base                     only ensure the Python base, print its ref
# Extra arguments go to ansible-playbook (e.g. -e @vars.json to deliver them). Prints the wall
# time of each step. Needs root (rootful podman, debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[images]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[images]\033[0m %s\n' "$*" >&2; exit 1; }

DEBIAN_IMAGE=localhost/debian-systemd:bookworm
PYTHON_REPO=localhost/mlopslab-python
CACHE=${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}

started=$SECONDS
eval "$(scripts/build-base-image.sh --env)"
log "debian base ready ($((SECONDS - started)) s)"

# Side-by-side callers (test streams) build the Python base once: the others wait for it.
exec 9>"$CACHE/images/.python-base.lock"
flock 9
base_id=$(podman image inspect --format '{{.Id}}' "$DEBIAN_IMAGE")
digest=$(cat images/python-base/Dockerfile <(echo "$base_id") | sha256sum | cut -c1-12)
python_base="$PYTHON_REPO:bookworm-$digest"
if ! podman image exists "$python_base"; then
  step=$SECONDS
  log "building $python_base (apt: python3-venv)"
  nice podman build -q --format docker --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" -t "$python_base" \
    -f images/python-base/Dockerfile images/python-base >/dev/null
  log "built $python_base ($((SECONDS - step)) s)"
fi
# Older Python bases of this script are stale: drop their tags (images still used keep their layers).
podman images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$PYTHON_REPO" \
  | grep -vxF "$python_base" | xargs -r podman untag >/dev/null 2>&1 || true

exec 9>&-
if [ "${1:-}" = --base ]; then
  echo "$python_base"
  exit 0
fi

inventory=$(mktemp -d "${TMPDIR:-/tmp}/mlopslab-images.XXXXXX")
trap 'rm -rf "$inventory"' EXIT
cat >"$inventory/hosts.yml" <<EOF
all:
  children:
    k8s_control:
      hosts:
        control:
          ansible_connection: local
          ansible_python_interpreter: "{{ ansible_playbook_python }}"
EOF
printf '{"container_images_base_image": "%s", "container_images_delivery": "none", "container_images_work_dir": "%s"}\n' \
  "$python_base" "$CACHE/container-images" >"$inventory/vars.json"

step=$SECONDS
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
nice .venv/bin/ansible-playbook -i "$inventory/hosts.yml" playbooks/images.yml -e "@$inventory/vars.json" "$@" >&2 \
  || die "building the images failed (output above)"
log "images ready ($((SECONDS - step)) s; total $((SECONDS - started)) s):"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' --filter 'label=io.mlops-lab.inputs-digest' --filter dangling=false >&2
