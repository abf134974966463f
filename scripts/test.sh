#!/usr/bin/env bash
# The README's test command: lint gates, then every pytest suite (Molecule scenarios, the
# kube-apiserver, network-namespace, MLflow, Airflow and end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/lint.sh
exec .venv/bin/python -m pytest "$@"
