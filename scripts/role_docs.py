"""Render each role README's variable tables from its meta/argument_specs.yml.

    python scripts/role_docs.py          # rewrite the generated block of every role README
    python scripts/role_docs.py --check  # exit 1 and name the READMEs whose block is stale

The argument spec is the one place a role variable is described (type, choices, default,
required, description); defaults/main.yml holds the values Ansible applies, each with a one-line
comment, and tests/test_argument_specs.py keeps the two equal. A README keeps its prose by hand
and gets its tables from here, between two marker comments:

    <!-- BEGIN role_docs ... -->
    ...
    <!-- END role_docs -->

Roles are found the way the tests find them: every directory with a tasks/ folder under the
collection's roles/ and the site-level roles/ of the repository.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ROLE_BASES = (REPO / "collections/ansible_collections/mlopslab/platform/roles", REPO / "roles")
BEGIN = "<!-- BEGIN role_docs: generated from meta/argument_specs.yml by scripts/role_docs.py; do not edit -->"
END = "<!-- END role_docs -->"
# A list or dict default longer than this is shown as YAML under the table instead of inline.
INLINE_DEFAULT_MAX = 60


def role_dirs() -> list[Path]:
    return sorted(p for base in ROLE_BASES if base.is_dir() for p in base.iterdir() if (p / "tasks").is_dir())


# ansible-doc markup: C(code), V(value), O(option), I(italic), B(bold), U(url).
_MARKUP = re.compile(r"\b([CVOIBU])\(([^()]*)\)")
_MARKDOWN = {"C": "`{}`", "V": "`{}`", "O": "`{}`", "I": "*{}*", "B": "**{}**", "U": "<{}>"}


def _text(value: Any) -> str:
    """A description (a string or a list of paragraphs) on one table line, in Markdown."""
    if isinstance(value, list):
        value = " ".join(str(v).strip() for v in value)
    text = " ".join(str(value or "").split())
    return _MARKUP.sub(lambda m: _MARKDOWN[m.group(1)].format(m.group(2)), text)


class _IndentedDumper(yaml.SafeDumper):
    """Lists indented under their key, as the rest of the repository writes YAML."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _flow(value: Any) -> str:
    """A value as one line: strings as they are, everything else as JSON (what YAML accepts too)."""
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value, ensure_ascii=False)


def _type(option: dict[str, Any]) -> str:
    kind = str(option.get("type", "str"))
    if kind == "list" and option.get("elements"):
        kind = f"list of {option['elements']}"
    if option.get("choices"):
        kind += " (" + ", ".join(_flow(c) for c in option["choices"]) + ")"
    return kind


def _rows(options: dict[str, Any], prefix: str, blocks: list[tuple[str, Any]]) -> Iterator[str]:
    for name, raw in options.items():
        option = raw or {}
        path = f"{prefix}{name}"
        if option.get("required") and "default" not in option:
            default = "**required**"
        elif "default" in option:
            flow = _flow(option["default"])
            if not isinstance(option["default"], str) and len(flow) > INLINE_DEFAULT_MAX:
                blocks.append((path, option["default"]))
                default = "(below)"
            else:
                default = _code(flow)
        else:
            default = "unset"
        if option.get("no_log"):
            default += ", secret"
        description = _text(option.get("description"))
        yield f"| {_code(path)} | {_cell(_type(option))} | {_cell(default)} | {_cell(description)} |"
        if option.get("options"):
            suffix = "[]." if option.get("type") == "list" else "."
            yield from _rows(option["options"], f"{path}{suffix}", blocks)


def _table(options: dict[str, Any]) -> list[str]:
    blocks: list[tuple[str, Any]] = []
    lines = ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
    lines += list(_rows(options, "", blocks))
    for path, value in blocks:
        dumped = yaml.dump({path: value}, Dumper=_IndentedDumper, default_flow_style=False, sort_keys=False, width=100)
        lines += ["", f"Default of {_code(path)}:", "", "```yaml", dumped.rstrip(), "```"]
    return lines


def render(role: Path) -> str:
    """The generated block of one role: a table per entry point, `main` first."""
    specs: dict[str, Any] = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    lines = [BEGIN]
    for entry in sorted(specs, key=lambda e: (e != "main", e)):
        spec = specs[entry] or {}
        if entry != "main":
            lines += ["", f"### Entry point `{entry}`", "", _text(spec.get("short_description"))]
        options = spec.get("options") or {}
        lines += [""] + (_table(options) if options else ["No variables."])
    lines += ["", END]
    return "\n".join(lines)


class MarkerError(ValueError):
    """A README without exactly one pair of markers."""


def rewrite(readme_text: str, block: str) -> str:
    if readme_text.count(BEGIN) != 1 or readme_text.count(END) != 1:
        raise MarkerError("needs exactly one BEGIN role_docs and one END role_docs marker")
    head, rest = readme_text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def stale(role: Path) -> str | None:
    """Why the role's README is not what the generator writes, or None when it is current."""
    readme = role / "README.md"
    if not readme.is_file():
        return f"{readme.relative_to(REPO)}: missing"
    text = readme.read_text()
    try:
        wanted = rewrite(text, render(role))
    except MarkerError as error:
        return f"{readme.relative_to(REPO)}: {error}"
    return None if wanted == text else f"{readme.relative_to(REPO)}: variable tables differ from the argument spec"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a README is stale")
    args = parser.parse_args(argv)
    problems = []
    for role in role_dirs():
        problem = stale(role)
        if problem is None:
            continue
        readme = role / "README.md"
        if args.check or not readme.is_file():
            problems.append(problem)
            continue
        try:
            readme.write_text(rewrite(readme.read_text(), render(role)))
        except MarkerError as error:
            problems.append(f"{readme.relative_to(REPO)}: {error}")
            continue
        print(f"rewrote {readme.relative_to(REPO)}")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems and args.check:
        print("run: python scripts/role_docs.py", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
