#!/usr/bin/env bash
# Builds container images for the test cluster without any registry, and caches each as a
# docker-archive tar that `ctr -n k8s.io images import` (or `podman load`) reads:
#   ${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}/images/cluster/<name>-<content key>.tar
# The key hashes the build context (Containerfile and every file beside it), the tag and the base
# image version, so a warm run touches neither podman nor the network, and any change rebuilds.
#
# The one way images are built for the harness: rootful podman (runc + the containers.conf of
# scripts/build-base-image.sh). Images on the Molecule base (FROM localhost/debian-systemd:bookworm)
# get it imported first. Tags are fully qualified (localhost/mlops-lab/NAME:VERSION), so a pod with
# `imagePullPolicy: IfNotPresent` or `Never` never tries a registry.
#
# Usage:
#   scripts/build-cluster-images.sh              the harness's images (pause, coredns, git-sync, toolbox);
#                                                prints "TAG TAR" per image
#   scripts/build-cluster-images.sh --context DIR --tag TAG   any image whose Containerfile (or
#                                                Dockerfile) is in DIR; prints the tar path
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CACHE=${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}
OUT=$CACHE/images/cluster
BASE_IMAGE=localhost/debian-systemd:bookworm

log() { printf '\033[1;34m[cluster-images]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[cluster-images]\033[0m %s\n' "$*" >&2; exit 1; }

containerfile() {
  local d=$1
  if [ -f "$d/Containerfile" ]; then echo "$d/Containerfile"; elif [ -f "$d/Dockerfile" ]; then echo "$d/Dockerfile"; else
    die "no Containerfile or Dockerfile in $d"
  fi
}

# build_image TAG CONTEXT_DIR -> prints the cached tar
build_image() {
  local tag=$1 ctx=$2 cf name key base_version="" tar
  cf=$(containerfile "$ctx")
  if grep -qE "^FROM[[:space:]]+$BASE_IMAGE" "$cf"; then
    base_version=$(sed -n 's/^IMAGE_VERSION=//p' "$REPO/scripts/build-base-image.sh")
  fi
  key=$({
    echo "$tag $base_version"
    tar -C "$ctx" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - .
  } | sha256sum | cut -c1-16)
  name=$(basename "${tag%:*}")
  tar=$OUT/$name-$key.tar
  if [ -s "$tar" ]; then
    echo "$tar"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "building $tag needs rootful podman (run as root)"
  command -v podman >/dev/null || die "podman is missing: run scripts/setup-host.sh"
  local t0=$SECONDS
  if [ -n "$base_version" ]; then
    # Imports the base image (from its cached tar) when podman lacks it; builds it on a fresh machine.
    CONTAINERS_CONF=$(bash "$REPO/scripts/build-base-image.sh" | tail -1)
  else
    CONTAINERS_CONF=$(bash "$REPO/scripts/build-base-image.sh" --conf)
  fi
  export CONTAINERS_CONF
  log "building $tag from $ctx"
  mkdir -p "$OUT"
  podman build -q --format docker --network host -t "$tag" -f "$cf" "$ctx" >/dev/null \
    || die "podman build of $tag failed"
  podman save -q --format docker-archive -o "$tar.partial" "$tag"
  mv -f "$tar.partial" "$tar"
  # Older builds of the same image are stale.
  find "$OUT" -maxdepth 1 -name "$name-*.tar" ! -name "$(basename "$tar")" -delete
  log "$tag: $(du -h "$tar" | cut -f1) in $((SECONDS - t0)) s"
  echo "$tar"
}

# An image whose context is a repo directory plus binaries from the harness build.
with_binaries() { # tag dir binary...
  local tag=$1 dir=$2 ctx b
  shift 2
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/mlopslab-image.XXXXXX")
  cp -a "$dir/." "$ctx/"
  for b in "$@"; do cp "$BIN/$b" "$ctx/"; done
  build_image "$tag" "$ctx"
  rm -rf "$ctx"
}

# One build at a time: the background build of scripts/test.sh and a test session may overlap.
mkdir -p "$OUT"
exec 8>"$OUT/.build.lock"
flock 8

case "${1:-}" in
  --context)
    [ $# -eq 4 ] && [ "$3" = --tag ] || die "usage: $0 --context DIR --tag TAG"
    build_image "$4" "$(cd "$2" && pwd)"
    exit 0
    ;;
  "") ;;
  *) die "unknown argument: $1" ;;
esac

BIN=$(bash "$REPO/scripts/build-k8s.sh" | tail -1)
# Versions: pause follows the Kubernetes source it is compiled from; coredns its binary; git-sync
# names the upstream v4 contract it follows, with our own suffix.
PAUSE_TAG=localhost/mlops-lab/pause:$("$BIN/pause" -v | sed -n "s/^pause.c v//p")
COREDNS_TAG=localhost/mlops-lab/coredns:$("$BIN/coredns" -version | sed -n 's/^CoreDNS-//p' | head -1)
GIT_SYNC_TAG=localhost/mlops-lab/git-sync:v4-mlopslab1
TOOLBOX_TAG=localhost/mlops-lab/toolbox:bookworm
echo "$PAUSE_TAG $(with_binaries "$PAUSE_TAG" "$REPO/images/pause" pause)"
echo "$COREDNS_TAG $(with_binaries "$COREDNS_TAG" "$REPO/images/coredns" coredns)"
echo "$GIT_SYNC_TAG $(build_image "$GIT_SYNC_TAG" "$REPO/images/git-sync")"
echo "$TOOLBOX_TAG $(build_image "$TOOLBOX_TAG" "$REPO/images/toolbox")"
