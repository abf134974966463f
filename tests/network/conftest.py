"""Fixtures of the network-namespace suites."""

from tests.network.seed_network import seed_network
from tests.network.seed_services import seed_services

__all__ = ["seed_network", "seed_services"]
