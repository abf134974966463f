"""The platform's images, built once per session through the container_images role (podman).

``built_images`` builds all four images on the local Python base (a warm cache builds nothing:
the content tags already exist in podman's storage), then runs the role a second time, which
must report no change. Both durations are printed in the summary of the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import RoleRun, cache_root, podman, python_base, run_images_role

_FIGURES: list[str] = []


@dataclass
class BuiltImages:
    base: str
    first: RoleRun
    second: RoleRun

    @property
    def published(self) -> dict[str, dict[str, str]]:
        return self.first.published

    def ref(self, name: str) -> str:
        return self.published[name]["ref"]


def build_vars(base: str) -> dict[str, object]:
    return {
        "container_images_base_image": base,
        "container_images_delivery": "none",
        "container_images_work_dir": str(cache_root() / "container-images"),
    }


@pytest.fixture(scope="session")
def built_images(tmp_path_factory: pytest.TempPathFactory) -> BuiltImages:
    started = time.monotonic()
    base = python_base()
    base_seconds = time.monotonic() - started
    workdir = tmp_path_factory.mktemp("images")
    first = run_images_role(workdir / "first", build_vars(base))
    assert first.rc == 0, "\n".join(first.failures) or first.output[-4000:]
    second = run_images_role(workdir / "second", build_vars(base))
    built = [task for task in first.changed_tasks() if task.endswith("Build each missing image")]
    sizes = {
        name: podman("image", "inspect", "--format", "{{.Size}}", image["ref"]).stdout.strip()
        for name, image in first.published.items()
    }
    _FIGURES.append(
        f"images: python base {base_seconds:.0f} s; role run {first.seconds:.0f} s "
        f"({'built' if built else 'all cached'}), second run {second.seconds:.0f} s; sizes "
        + ", ".join(f"{name} {int(size) / 1e6:.0f} MB" for name, size in sizes.items())
    )
    return BuiltImages(base=base, first=first, second=second)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _FIGURES:
        terminalreporter.write_line(line)


@pytest.fixture
def container_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A container name unique to the test; the container is removed afterwards."""
    name = f"mlopslab-test-{request.node.name[:40]}-{time.monotonic_ns() % 10**8}".replace("[", "-").replace("]", "")
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    yield name
    podman("rm", "-f", "-t", "0", name, check=False)


@pytest.fixture
def dags_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "dags"
