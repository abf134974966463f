#!/usr/bin/env bash
# The README's test command: lint gates, then every pytest suite (Molecule scenarios, the
# kube-apiserver, real-cluster, network-namespace, MLflow, Airflow and end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
# A full run starts the real cluster's build (scripts/build-k8s.sh and build-cluster-images.sh: the
# slowest step on a fresh machine, a ~1 s no-op when cached) in the background, so that it overlaps
# the lint gates and the other suites; the cluster tests run last (tests/conftest.py) and their
# fixture waits on the build's lock. Its log: .artifacts/cluster-build.log.
if [ "$#" -eq 0 ] && [ "$(id -u)" -eq 0 ] && [ -z "${MLOPSLAB_NO_BACKGROUND_BUILD:-}" ]; then
  mkdir -p .artifacts
  (bash scripts/build-k8s.sh && bash scripts/build-cluster-images.sh) >.artifacts/cluster-build.log 2>&1 &
fi
bash scripts/lint.sh
# The slowest tests are listed at the end of every run (where the time of a fresh machine goes).
exec .venv/bin/python -m pytest --durations=25 "$@"
