"""Reads iptables -S / iptables-save text: the rules that carry a marker comment.

calico_vm_access marks every rule it owns with a comment; this filter finds them among
kube-proxy's and Calico's, so that the role compares wanted and present rules and removes
exactly its own.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

_OPTION = re.compile(r"^-(s|d|j|A)$|^--(source|destination|jump|append)$")


def iptables_marked_rules(text: str, marker: str) -> list[dict[str, Any]]:
    """Parse the ``-A`` lines of ``iptables -S`` (or iptables-save) output that contain ``marker``.

    Each rule is a dict with ``chain``, ``source``, ``destination``, ``jump``, ``line`` and
    ``key`` (``"SOURCE DESTINATION"``, as the role compares wanted and present rules).
    """
    found: list[dict[str, Any]] = []
    for line in (text or "").splitlines():
        if not line.startswith("-A ") or marker not in line:
            continue
        words = shlex.split(line)
        rule: dict[str, Any] = {"line": line, "chain": None, "source": None, "destination": None, "jump": None}
        for i, word in enumerate(words[:-1]):
            match = _OPTION.match(word)
            if not match:
                continue
            key = (match.group(1) or match.group(2))[0]
            value = words[i + 1]
            if key in ("A", "a"):
                rule["chain"] = value
            elif key == "s":
                rule["source"] = value
            elif key == "d":
                rule["destination"] = value
            elif key == "j":
                rule["jump"] = value
        rule["key"] = f"{rule['source']} {rule['destination']}"
        found.append(rule)
    return found


class FilterModule:
    """mlopslab.platform iptables filters."""

    def filters(self) -> dict[str, Any]:
        return {"iptables_marked_rules": iptables_marked_rules}
