"""Filters that read and edit iptables-save text (the format of /etc/iptables/rules.v4).

No module manages a few marked lines inside a persisted rules file without taking over the
whole file (``netfilter-persistent save`` would also persist kube-proxy's and Calico's own
rules), so the role computes the new file content with these filters and writes it with
``ansible.builtin.copy``, which compares checksums and reports ``changed`` truthfully.
"""

from __future__ import annotations

import re
import shlex
from typing import Any


def _section_markers(marker: str) -> tuple[str, str]:
    return f"# BEGIN {marker}", f"# END {marker}"


def iptables_save_merge(content: str, rules: list[str], marker: str, table: str = "nat") -> str:
    """Return ``content`` with exactly ``rules`` (each already carrying ``marker``) in ``table``.

    Every line containing ``marker`` is dropped first (rules added earlier, and the whole
    ``# BEGIN/# END marker`` section written when the text had no such table); the rules are
    then inserted before the ``COMMIT`` of the ``*table`` section, or appended as a new marked
    section. With no rules the result is the input without anything this filter added.
    """
    if not marker:
        raise ValueError("iptables_save_merge: marker must not be empty")
    for rule in rules:
        if marker not in rule:
            raise ValueError(f"iptables_save_merge: rule does not carry the marker {marker!r}: {rule}")
    begin, end = _section_markers(marker)
    kept: list[str] = []
    inside_own_section = False
    for line in (content or "").splitlines():
        if line == begin:
            inside_own_section = True
            continue
        if line == end:
            inside_own_section = False
            continue
        if inside_own_section or marker in line:
            continue
        kept.append(line)

    if rules:
        header = f"*{table}"
        start = next((i for i, line in enumerate(kept) if line.strip() == header), None)
        commit = None
        if start is not None:
            commit = next((i for i in range(start + 1, len(kept)) if kept[i].strip() == "COMMIT"), None)
        if commit is not None:
            kept[commit:commit] = rules
        else:
            kept.extend([begin, header, *rules, "COMMIT", end])

    return "\n".join(kept) + "\n" if kept else ""


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
    """mlopslab.platform iptables-save filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "iptables_save_merge": iptables_save_merge,
            "iptables_marked_rules": iptables_marked_rules,
        }
