"""Shared test harness code: real servers, venvs and clusters the suites start (see each module)."""
