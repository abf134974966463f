#!/usr/bin/env bash
# The real single-node test cluster for developers (tests/support/kube_cluster.py):
#   scripts/kube-cluster.sh up       build what is missing (cold build / "cached" times are printed),
#                                    start the node, print the warm start figures and the KUBECONFIG
#   scripts/kube-cluster.sh down     tear it down (processes by pid, veth, routes, cgroups)
#   scripts/kube-cluster.sh status   what runs, with memory
# Needs root, like the pytest fixture; uses the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run scripts/setup-host.sh first" >&2; exit 1; }
exec .venv/bin/python -m tests.support.kube_cluster "${1:-status}"
