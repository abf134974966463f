"""Reads an inventory's groups and hosts (never its variables, so no vault password is needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader


class InventoryError(ValueError):
    """The inventory cannot be read."""


@dataclass(frozen=True)
class Inventory:
    path: Path
    groups: dict[str, list[str]]

    def hosts_of(self, groups: tuple[str, ...]) -> list[str]:
        """Hosts in any of the groups, in inventory order, without repeats."""
        seen: dict[str, None] = {}
        for group in groups:
            if group == "localhost":
                seen.setdefault("localhost", None)
                continue
            for host in self.groups.get(group, []):
                seen.setdefault(host, None)
        return list(seen)


def load_inventory(path: Path, limit: str | None = None) -> Inventory:
    if not path.exists():
        raise InventoryError(f"inventory {path} does not exist")
    manager = InventoryManager(loader=DataLoader(), sources=[str(path)])
    if not manager.hosts and not manager.groups.get("all"):
        raise InventoryError(f"inventory {path} could not be parsed")
    if limit:
        manager.subset(limit)
    groups: dict[str, list[str]] = {}
    for name in manager.groups:
        hosts = manager.get_hosts(pattern=name)
        groups[name] = [host.name for host in hosts]
    return Inventory(path=path, groups=groups)
