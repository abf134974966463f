#!/usr/bin/env bash
# Installs everything `make up` and `make test` need on a fresh Debian/Ubuntu machine:
# the apt packages in scripts/apt-packages.txt and the project venv (.venv). Idempotent:
# a second run installs nothing and takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- apt packages
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' scripts/apt-packages.txt)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the lists when they are older than a day (a fresh machine has none).
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    $SUDO apt-get update -qq
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts a PostgreSQL cluster on install where it can; the platform manages its
  # own clusters, so a package install must not leave one running on the default port.
else
  log "apt packages: all present"
fi

# --- project venv
PY=${PYTHON:-python3}
# (the stamp's recipe part changes when the way the venv is made changes)
stamp_src=$( (cat pyproject.toml; echo "recipe: compile-bytecode") | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.mlopslab-stamp 2>/dev/null)" != "$stamp_src" ]; then
  log "creating .venv (uv keeps the wheels in ~/.cache/uv)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # uv installs the project (about 4 min with pip on a fresh machine, under 1 with uv); it is
  # one of the project's dependencies, so the venvs the platform builds use it as well.
  .venv/bin/pip install -q --disable-pip-version-check 'uv>=0.9'
  # --compile-bytecode, as pip does by default: every ansible-playbook start and every module run
  # imports from here, and without .pyc files (never written where PYTHONDONTWRITEBYTECODE is set)
  # each compiles its imports from source: a warm `make up` took 71 s instead of 57 s.
  .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -e '.[dev,serving,mlflow]'
  echo "$stamp_src" > .venv/.mlopslab-stamp
else
  log ".venv: up to date"
fi
log "done"
