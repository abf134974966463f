"""Reads an inventory: its groups and hosts (no vault password needed), and, for the commands that
talk to a running platform (status, train, on a cluster), the values of a few of its variables and
an API client for its cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleUndefinedVariable
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import get_file_vault_secret
from ansible.template import Templar, trust_as_template
from ansible.vars.manager import VariableManager


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


def inventory_variables(
    path: Path, host: str, names: list[str], vault_password_file: Path | None = None
) -> dict[str, Any]:
    """The values ``names`` take for ``host``, templated as a play would (hostvars and groups
    included); a name that is undefined is left out. Vault-encrypted files need the password file.
    """
    loader = DataLoader()
    if vault_password_file is not None:
        secret = get_file_vault_secret(filename=str(vault_password_file), loader=loader)
        secret.load()
        loader.set_vault_secrets([("default", secret)])
    manager = InventoryManager(loader=loader, sources=[str(path)])
    variables = VariableManager(loader=loader, inventory=manager)
    target = manager.get_host(host)
    if target is None:
        raise InventoryError(f"inventory {path} has no host {host}")
    hostvars = {h.name: variables.get_vars(host=h, include_hostvars=False) for h in manager.get_hosts()}
    templar = Templar(loader=loader, variables={**variables.get_vars(host=target, include_hostvars=False),
                                                "hostvars": hostvars})  # fmt: skip
    found: dict[str, Any] = {}
    for name in names:
        try:
            found[name] = templar.template(trust_as_template("{{ " + name + " }}"))
        except AnsibleUndefinedVariable:
            continue
    return found


def kube_client(kubeconfig: str | None, context: str | None) -> Any:
    """An API client for the inventory's cluster (mlopslab_kubeconfig / mlopslab_kube_context, else
    the usual KUBECONFIG or ~/.kube/config)."""
    from kubernetes import config

    path = str(Path(kubeconfig).expanduser()) if kubeconfig else None
    return config.new_client_from_config(config_file=path, context=context or None)  # type: ignore[no-untyped-call]
