#!/bin/bash
# Build kube-apiserver and kube-controller-manager from Debian bookworm's own `kubernetes`
# source package (1.20.5+really1.20.2, which ships vendor/), with Debian's golang-1.19, and
# cache the binaries (plus etcd/etcdctl from Debian's etcd-server/etcd-client) under
#   ${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}/kube-apiserver/<version>/bin
# for the test harness (tests/support/kube_apiserver.py). A no-op when the cache is complete.
# Cold: ~5-6 min on 2 idle cores (30 min measured on a machine loaded by other builds), ~1.4 GB RAM; the ~2 GB of sources and Go cache are deleted after.
#
# Why this way: no kind/k3s/minikube/helm binary is installable on the lab's build machines,
# and only the package registries are reachable. Two vendored modules (reflect2 v1.0.1 and
# json-iterator) crash under Go >= 1.18, so Debian's newer packaged sources replace them.
#
# Environment: MLOPSLAB_CACHE (cache root), KUBE_APISERVER_COMPONENTS (default
# "kube-apiserver kube-controller-manager"), KEEP_BUILD_DIR=1 keeps the work tree for debugging.
set -euo pipefail

DEB_SOURCE_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBE_VERSION="1.20.2"
KUBE_GIT_COMMIT="faecb196815e248d3ecfb03c680a4507229c2a56"
COMPONENTS=${KUBE_APISERVER_COMPONENTS:-kube-apiserver kube-controller-manager}
# Build dependencies, all from Debian's archive (etcd is a runtime need of the harness).
BUILD_DEPS=(golang-1.19-go golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
            rsync make etcd-server etcd-client)

CACHE_ROOT=${MLOPSLAB_CACHE:-$HOME/.cache/mlops-lab}
DEST=$CACHE_ROOT/kube-apiserver/$KUBE_VERSION
BIN=$DEST/bin

cached() {
  local c
  for c in $COMPONENTS etcd; do [ -x "$BIN/$c" ] || return 1; done
}
if cached; then
  echo "kube-apiserver $KUBE_VERSION: cached in $BIN"
  exit 0
fi

mkdir -p "$DEST"
# One build at a time (two test sessions may start together).
exec 9>"$DEST/.build.lock"
flock 9
if cached; then
  echo "kube-apiserver $KUBE_VERSION: built by a concurrent run in $BIN"
  exit 0
fi

T0=$(date +%s)
W=$DEST/build
rm -rf "$W"
mkdir -p "$W"/{apt/lists/partial,apt/cache/archives/partial,apt/etc/sources.list.d,src,home} "$BIN"
cleanup() { [ "${KEEP_BUILD_DIR:-0}" = 1 ] || rm -rf "$W"; }
trap cleanup EXIT

# 1. build dependencies through apt (what is missing only)
missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing build dependencies: ${missing[*]}"
  apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 \
    install --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. the source package, through a private apt configuration that adds deb-src for the
#    host's own Debian mirrors (the system's sources have "deb" only)
sources=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
MIRROR=$( [ -n "$sources" ] && grep -h '^URIs:' $sources | awk '$2 ~ /debian\/?$/ {print $2; exit}')
SECMIRROR=$( [ -n "$sources" ] && grep -h '^URIs:' $sources | awk '$2 ~ /debian-security\/?$/ {print $2; exit}')
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${SECMIRROR:-http://deb.debian.org/debian-security}
cat > "$W/apt/etc/sources.list.d/debsrc.sources" <<SRC
Types: deb-src
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $SECMIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
cat > "$W/apt/apt.conf" <<CONF
Dir::Etc::SourceList "/dev/null";
Dir::Etc::SourceParts "$W/apt/etc/sources.list.d";
Dir::State::Lists "$W/apt/lists";
Dir::Cache "$W/apt/cache";
APT::Sandbox::User "root";
CONF
APT_CONFIG=$W/apt/apt.conf apt-get -q update >/dev/null
(cd "$W/src" && APT_CONFIG=$W/apt/apt.conf apt-get -q source --download-only \
  "kubernetes=$DEB_SOURCE_VERSION" >/dev/null)
S=$W/src/kubernetes-$KUBE_VERSION
tar -xzf "$W/src/kubernetes_1.20.5+really1.20.2.orig.tar.gz" -C "$W/src"
[ -d "$S" ] || { echo "unexpected source layout under $W/src" >&2; exit 1; }

# 3. Go >= 1.18: replace the vendored reflect2/json-iterator with Debian's packaged sources
G=/usr/share/gocode/src/github.com
for m in modern-go/reflect2 json-iterator/go; do
  rm -rf "$S/vendor/github.com/$m"
  mkdir -p "$S/vendor/github.com/$m"
  find "$G/$m" -maxdepth 1 -type f ! -name '*_test.go' -exec cp {} "$S/vendor/github.com/$m/" \;
done

export PATH=/usr/lib/go-1.19/bin:$PATH HOME=$W/home GOCACHE=$W/gocache
# 4. generate pkg/generated/openapi (not in the tarball; upstream's make does it)
(cd "$S" && make gen_openapi >/dev/null)
T1=$(date +%s)

# 5. GOPATH mode, as upstream hack/lib/init.sh does for 1.20
export GOPATH=$W/gopath GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$S" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
K=k8s.io/kubernetes/vendor/k8s.io
LDV=""
for pkg in component-base/version client-go/pkg/version; do
  LDV="$LDV -X $K/$pkg.gitVersion=v$KUBE_VERSION -X $K/$pkg.gitMajor=1 -X $K/$pkg.gitMinor=20"
  LDV="$LDV -X $K/$pkg.gitTreeState=clean -X $K/$pkg.buildDate=2021-01-13T13:20:00Z -X $K/$pkg.gitCommit=$KUBE_GIT_COMMIT"
done
for c in $COMPONENTS; do
  go build -trimpath -ldflags "-s -w $LDV" -o "$BIN/$c.tmp" "./cmd/$c"
  mv "$BIN/$c.tmp" "$BIN/$c"
done
cp /usr/bin/etcdctl "$BIN/etcdctl"
cp /usr/bin/etcd "$BIN/etcd.tmp" && mv "$BIN/etcd.tmp" "$BIN/etcd"
T2=$(date +%s)
echo "kube-apiserver $KUBE_VERSION: prep+openapi $((T1-T0)) s, go build $((T2-T1)) s, total $((T2-T0)) s"
ls -la "$BIN"
