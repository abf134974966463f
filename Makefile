# The two commands of the README: `make up` brings up the local platform, `make test` runs
# every test. Both start with scripts/setup-host.sh, which installs what a fresh
# Debian/Ubuntu machine lacks and does nothing on a prepared one.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: up test setup lint down status plan bench-serving bench-platform

setup:
	bash scripts/setup-host.sh

up: setup
	$(PY) -m runner bootstrap

test: setup
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
