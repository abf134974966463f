#!/usr/bin/env bash
# Quality gates: yamllint, ansible-lint (production profile, no skip list), ruff, mypy strict,
# the role READMEs' generated variable tables, and a syntax check of site.yml against both
# inventories.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
step() { printf '\033[1;34m[lint]\033[0m %s\n' "$*"; }
step "yamllint"; yamllint --strict .
step "ansible-lint"; ansible-lint --offline -q
step "ruff"; ruff check .; ruff format --check .
step "mypy"; mypy
step "role READMEs (python scripts/role_docs.py rewrites them)"; python scripts/role_docs.py --check
for inv in lab local; do
  step "syntax-check site.yml -i inventories/$inv"
  ansible-playbook --syntax-check site.yml -i "inventories/$inv" >/dev/null
done
step "all gates passed"
