"""Fixtures of the network-namespace suites."""

from tests.network.seed_network import seed_network

__all__ = ["seed_network"]
