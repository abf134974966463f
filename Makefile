# The two commands of the README: `make up` brings up the local platform, `make test` runs
# every test. Both run scripts/setup-host.sh first (`make test` once it has started the real
# cluster's Go build, below), which installs what a fresh Debian/Ubuntu machine lacks and does
# nothing on a prepared one.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: up test setup lint down status plan bench-serving bench-platform

setup:
	bash scripts/setup-host.sh

up: setup
	$(PY) -m runner bootstrap

# On a fresh machine the real cluster's Go build (scripts/build-k8s.sh, about 25 min on 2 cores, 1 s
# when cached) is the run's critical path, and it needs nothing but Go: `make test` starts its Go
# parts before the set-up, which runs beside it. scripts/test.sh finishes it in the background of the
# tests (the pause binary, which needs the apt packages' gcc, then the cluster's images): each part
# has its own lock, so the later build waits for the parts under way instead of building them again.
test:
	@if [ "$$(id -u)" -eq 0 ] && [ -z "$${MLOPSLAB_NO_BACKGROUND_BUILD:-}" ]; then mkdir -p .artifacts; \
	  (BUILD_NICE=0 BUILD_K8S_PARTS="kubernetes etcd containerd helm coredns" bash scripts/build-k8s.sh) \
	    >.artifacts/cluster-build-go.log 2>&1 & fi
	bash scripts/setup-host.sh
	bash scripts/test.sh

lint: setup
	bash scripts/lint.sh

down:
	$(PY) -m runner down

status:
	$(PY) -m runner status

plan:
	$(PY) -m runner plan

# Benchmarks print figures (ratios against a baseline measured in the same run); not tests.
bench-serving: setup
	$(PY) bench/serving.py

bench-platform: setup
	$(PY) bench/local_platform.py
