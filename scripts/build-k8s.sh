#!/usr/bin/env bash
# Builds the binaries of the real single-node Kubernetes test harness (tests/support/kube_cluster.py)
# from the Go module proxy, and caches them under
#   ${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}/k8s/<kubernetes version>-<recipe hash>/bin
# A second run finds every part cached and returns in about a second ("cached").
#
# What and why (versions are chosen in docs/development.md, "Kubernetes test harness"):
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl in
#               ONE `go build` (shared packages compile once), from a throw-away module that requires
#               k8s.io/kubernetes and replaces each k8s.io/* staging module by its published v0.x twin.
#   etcd        a three-line main around go.etcd.io/etcd/server/v3/etcdmain (Debian's 3.4 predates the
#               3.6 client that the 1.36 apiserver is tested with).
#   containerd  containerd, containerd-shim-runc-v2 and ctr from containerd/v2: kubelet 1.36 no longer
#               supports containerd 1.x (Debian bookworm has 1.6.20).
#   helm        helm.sh/helm/v3 (kubernetes.core 6 drives Helm 3; Helm 4 is another CLI).
#   coredns     a small main that imports coremain and only the plugins a cluster DNS needs.
#   pause       upstream's static C pause from the same k8s.io/kubernetes module (gcc, libc6-dev).
# runc and the CNI plugins come from Debian (scripts/apt-packages.txt: runc, containernetworking-plugins).
# git-sync is not served by the Go module proxy here; images/git-sync/ holds a git-sync-compatible
# script instead (scripts/build-cluster-images.sh builds its image).
#
# Sandbox patch (only one, checked to apply): kubelet "modifies" six GLOBAL kernel sysctls at start
# (vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops, kernel.keys.root_max*)
# unless protectKernelDefaults is set, and with it set it refuses to start when they differ. Neither is
# acceptable on a shared machine, so the module copy gets `b := KernelTunableWarn` (still true in 1.36).
#
# Every part has its own cache key (its version + a hash of its build function), so changing the
# CoreDNS recipe does not rebuild Kubernetes. Go's module and build caches live in $CACHE/go (never in
# the repository); `--clean-go-cache` deletes the build cache (~2-3 GB) once the binaries exist.
#
# Usage: scripts/build-k8s.sh                 build what is missing; last line of stdout = the bin dir
#        scripts/build-k8s.sh --print-bin-dir print the bin dir path without building
#        scripts/build-k8s.sh --clean-go-cache  build, then delete Go's build cache
# Environment: MLOPSLAB_CACHE, BUILD_NICE (default 10), BUILD_K8S_PARTS (only these parts, no bin dir).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.36.3
K8S_STAGING_VERSION=v0.36.3
ETCD_VERSION=v3.6.16
CONTAINERD_VERSION=v2.3.7
HELM_VERSION=v3.21.4
COREDNS_VERSION=v1.15.0
# build/pause/Makefile's TAG in that Kubernetes module
PAUSE_VERSION=3.10.2

CACHE=${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}
PARTS=$CACHE/k8s/parts
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOPATH=$CACHE/go/path
export GOFLAGS="-modcacherw -buildvcs=false" GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 GOWORK=off
NICE=(nice -n "${BUILD_NICE:-10}")

log() { printf '\033[1;34m[build-k8s]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[build-k8s]\033[0m %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# A throw-away module in $1 that requires the modules given as "path@version" and builds the
# listed packages (tools.go imports the commands so that `go mod tidy` records every dependency).
new_module() {
  local dir=$1
  shift
  rm -rf "$dir"
  mkdir -p "$dir"
  printf 'module mlopslab.invalid/build\n\ngo 1.26.0\n' >"$dir/go.mod"
}
tools_go() { # dir pkg...
  local dir=$1
  shift
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' "$@"
    printf ')\n'
  } >"$dir/tools.go"
}

build_kubernetes() { # out
  local out=$1 w=$CACHE/k8s/work/kubernetes src mod commit date m cmds ver
  new_module "$w"
  (cd "$w" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >module.json)
  src=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Dir"])' "$w/module.json")
  # A writable copy, so the one sandbox patch touches neither the module cache nor the checksum.
  cp -a "$src" "$w/kubernetes"
  chmod -R u+w "$w/kubernetes"
  local cm=$w/kubernetes/pkg/kubelet/cm/container_manager_linux.go
  grep -q 'b := KernelTunableModify' "$cm" || die "kubelet sysctl patch: 'b := KernelTunableModify' not found in $cm"
  sed -i 's/b := KernelTunableModify/b := KernelTunableWarn \/\/ mlops-lab: never write global sysctls/' "$cm"
  {
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace k8s.io/kubernetes => ./kubernetes\n' "$K8S_VERSION"
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$w/kubernetes/go.mod"); do
      printf 'replace %s => %s %s\n' "$m" "$m" "$K8S_STAGING_VERSION"
    done
  } >>"$w/go.mod"
  cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
  tools_go "$w" "${cmds[@]/#/k8s.io/kubernetes/cmd/}"
  (cd "$w" && go mod tidy)
  date=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Time"])' \
    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Info"])' "$w/module.json")")
  commit=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("Origin", {}).get("Hash", ""))' \
    "$w/module.json")
  ver=${K8S_VERSION#v}
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=${ver%%.*} -X $p.gitMinor=$(echo "$ver" | cut -d. -f2)"
    ld+=" -X $p.gitTreeState=archive -X $p.buildDate=$date -X $p.gitCommit=$commit"
  done
  (cd "$w" && "${NICE[@]}" go build -trimpath -ldflags "$ld" -o "$out/" "${cmds[@]/#/k8s.io/kubernetes/cmd/}")
  rm -rf "$w"
}

build_etcd() { # out
  local out=$1 w=$CACHE/k8s/work/etcd
  new_module "$w"
  cat >"$w/main.go" <<'EOF'
// etcd, as the upstream root module's main.go builds it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$w" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy)
  (cd "$w" && "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
  rm -rf "$w"
}

build_containerd() { # out
  local out=$1 w=$CACHE/k8s/work/containerd m=github.com/containerd/containerd/v2
  new_module "$w"
  tools_go "$w" "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
  (cd "$w" && go get "$m@$CONTAINERD_VERSION" && go mod tidy)
  # The cgo-only snapshotters (btrfs, devmapper, zfs) are left out; overlayfs is what the node uses.
  (cd "$w" && "${NICE[@]}" go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m" \
    -o "$out/" "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr")
  rm -rf "$w"
}

build_helm() { # out
  local out=$1 w=$CACHE/k8s/work/helm m=helm.sh/helm/v3 kminor
  new_module "$w"
  tools_go "$w" "$m/cmd/helm"
  (cd "$w" && go get "$m@$HELM_VERSION" && go mod tidy)
  # The Kubernetes version helm assumes for offline rendering and lint, as helm's Makefile sets it.
  kminor=$(cd "$w" && go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
  (cd "$w" && "${NICE[@]}" go build -trimpath -ldflags "-s -w -X $m/internal/version.version=$HELM_VERSION \
    -X $m/internal/version.gitTreeState=clean \
    -X $m/pkg/lint/rules.k8sVersionMajor=1 -X $m/pkg/lint/rules.k8sVersionMinor=$kminor \
    -X $m/pkg/chartutil.k8sVersionMajor=1 -X $m/pkg/chartutil.k8sVersionMinor=$kminor" \
    -o "$out/helm" "$m/cmd/helm")
  rm -rf "$w"
}

build_coredns() { # out
  local out=$1 w=$CACHE/k8s/work/coredns
  new_module "$w"
  cat >"$w/main.go" <<'EOF'
// CoreDNS with only the plugins a cluster DNS needs. Directives keep CoreDNS's own order
// (core/dnsserver/zdirectives.go): it decides how the plugins chain, whatever the Corefile says.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	dnsserver.Directives = []string{
		"reload", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes", "loop", "forward",
	}
}

func main() { coremain.Run() }
EOF
  (cd "$w" && go get "github.com/coredns/coredns@$COREDNS_VERSION" && go mod tidy)
  (cd "$w" && "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$out/coredns" .)
  rm -rf "$w"
}

build_pause() { # out: upstream's static C pause (the sandbox image's only binary), same k8s.io/kubernetes module
  local out=$1 src
  src=$(cd "$CACHE" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  grep -q "^TAG ?= $PAUSE_VERSION\$" "$src/build/pause/Makefile" || die "pause is not $PAUSE_VERSION in $K8S_VERSION"
  "${NICE[@]}" gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$out/pause" "$src/build/pause/linux/pause.c"
  strip "$out/pause"
}

# part name -> version; the key adds a hash of the build function and of the Go toolchain version.
declare -A VERSIONS=(
  [kubernetes]=$K8S_VERSION [etcd]=$ETCD_VERSION [containerd]=$CONTAINERD_VERSION
  [helm]=$HELM_VERSION [coredns]=$COREDNS_VERSION [pause]=$PAUSE_VERSION
)
ORDER=(kubernetes etcd containerd helm coredns pause)
# The machine's Go (/usr/local/go on this kind of machine, not always on a non-login PATH).
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
GO_VERSION=$(go env GOVERSION 2>/dev/null) || die "no Go toolchain on PATH (the machine's Go, 1.26+)"
part_key() {
  local h
  h=$({ declare -f "build_$1" new_module tools_go; echo "$GO_VERSION $K8S_STAGING_VERSION"; } | sha256sum | cut -c1-12)
  echo "$1-${VERSIONS[$1]}-$h"
}
BIN_KEY=$(for p in "${ORDER[@]}"; do part_key "$p"; done | sha256sum | cut -c1-12)
BIN=$CACHE/k8s/$K8S_VERSION-$BIN_KEY/bin

case "${1:-}" in
  --print-bin-dir) echo "$BIN"; exit 0 ;;
  --clean-go-cache | "") ;;
  *) die "unknown argument: $1" ;;
esac

T0=$(now)
if [ -f "$BIN/.complete" ]; then
  log "cached: $BIN ($(since "$T0") s)"
  echo "$BIN"
  exit 0
fi

mkdir -p "$PARTS"
# BUILD_K8S_PARTS="etcd helm" builds only those parts (e.g. in a second process); a lock per part lets
# concurrent runs share the work and never build one part twice.
for p in ${BUILD_K8S_PARTS:-${ORDER[*]}}; do
  key=$(part_key "$p")
  dir=$PARTS/$key
  exec 9>"$PARTS/$key.lock"
  flock 9
  if [ -f "$dir/.complete" ]; then
    log "$p ${VERSIONS[$p]}: cached"
    continue
  fi
  t=$(now)
  log "$p ${VERSIONS[$p]}: building"
  rm -rf "$dir"
  mkdir -p "$dir/bin"
  "build_$p" "$dir/bin" >"$CACHE/k8s/build-$p.log" 2>&1 || { tail -30 "$CACHE/k8s/build-$p.log" >&2; die "$p failed (log: $CACHE/k8s/build-$p.log)"; }
  touch "$dir/.complete"
  log "$p ${VERSIONS[$p]}: built in $(since "$t") s"
done
exec 9>&-
[ -z "${BUILD_K8S_PARTS:-}" ] || exit 0

# Assemble the bin dir from hard links (same file system) and drop stale bin dirs and parts, one
# process at a time: scripts/test.sh's background build and a test session's fixture reach this
# point together on a fresh machine (both waited on the last part's lock), and two assemblies in
# one .partial directory fail with "cannot create hard link ... File exists".
exec 9>"$CACHE/k8s/assemble.lock"
flock 9
if [ -f "$BIN/.complete" ]; then
  log "cached: $BIN ($(since "$T0") s)"
  echo "$BIN"
  exit 0
fi
rm -rf "$BIN.partial"
mkdir -p "$BIN.partial"
for p in "${ORDER[@]}"; do cp -l "$PARTS/$(part_key "$p")"/bin/* "$BIN.partial/"; done
touch "$BIN.partial/.complete"
rm -rf "$BIN"
mv "$BIN.partial" "$BIN"
keep=$(for p in "${ORDER[@]}"; do part_key "$p"; done)
for d in "$PARTS"/*/; do
  grep -qx "$(basename "$d")" <<<"$keep" || rm -rf "$d" "${d%/}.lock"
done
for d in "$CACHE"/k8s/v*/; do
  [ "$d" = "$(dirname "$BIN")/" ] || rm -rf "$d"
done
if [ "${1:-}" = --clean-go-cache ]; then
  go clean -cache
fi
"$BIN/kubectl" version --client 2>/dev/null | head -1 >&2 || true
log "total $(since "$T0") s: $BIN"
echo "$BIN"
