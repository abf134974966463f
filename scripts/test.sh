#!/usr/bin/env bash
# The README's test command: the lint gates and every pytest suite (Molecule scenarios, the
# real-cluster, network-namespace, MLflow, Airflow and end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
# A full run starts the real cluster's build (scripts/build-k8s.sh and build-cluster-images.sh: the
# slowest step on a fresh machine, a ~1 s no-op when cached) in the background, so that it overlaps
# the lint gates and the other suites (`make test` started its Go parts even before the set-up: this
# build waits for those on their locks); the cluster tests run last (tests/conftest.py) and their
# fixture waits on the build's lock. Its log: .artifacts/cluster-build.log. On a fresh machine the
# build (25 to 30 min of Go on 2 cores) followed by the cluster tests is the run's critical path,
# while the other streams finish well before it: the build keeps nice 0, and the lint gates and the
# other streams run at nice 5 (tests/conftest.py, OTHER_STREAMS_NICE).
if [ "$#" -eq 0 ] && [ "$(id -u)" -eq 0 ] && [ -z "${MLOPSLAB_NO_BACKGROUND_BUILD:-}" ]; then
  mkdir -p .artifacts
  (export BUILD_NICE=0 && bash scripts/build-k8s.sh && bash scripts/build-cluster-images.sh) \
    >.artifacts/cluster-build.log 2>&1 &
fi
# The lint gates run beside the tests (their output follows the tests' summary; a failed gate fails
# the run), and the tests run in parallel streams (pytest-xdist): the cluster
# tests in one, each other directory of tests a unit of the others (tests/conftest.py says why).
# One stream leaves the cores idle while it waits on processes, pods and servers; three keep both busy.
# MLOPSLAB_TEST_WORKERS=0 runs everything in one process.
mkdir -p .artifacts
nice -n 5 bash scripts/lint.sh >.artifacts/lint.log 2>&1 &
lint_pid=$!
rc=0
# The slowest tests are listed at the end of every run (where the time of a fresh machine goes).
.venv/bin/python -m pytest -n "${MLOPSLAB_TEST_WORKERS:-3}" --durations=40 "$@" || rc=$?
lint_rc=0
wait "$lint_pid" || lint_rc=$?
cat .artifacts/lint.log
if [ "$lint_rc" -ne 0 ]; then
  printf '\033[1;31m[lint]\033[0m a gate failed (above; log: .artifacts/lint.log)\n' >&2
  [ "$rc" -ne 0 ] || rc=$lint_rc
fi
exit "$rc"
