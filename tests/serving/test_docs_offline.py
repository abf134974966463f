"""The API docs work without internet: Swagger UI and ReDoc rendered by real headless Chromium in
a network namespace that has only a loopback interface (so no CDN can be reached).

The control, FastAPI's stock docs page (assets from a CDN) in the same namespace, renders no
operation: that is what an offline lab saw before, and it shows the check can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serving_app import REPO_ROOT

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("needs root for a network namespace (unshare --net)")
    assert shutil.which("chromium"), "chromium is missing: scripts/setup-host.sh installs it (apt-packages.txt)"
    out = tmp_path_factory.mktemp("offline-docs")
    result = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-m", "tests.serving.offline_browser", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    artifacts = os.environ.get("MLOPSLAB_SCREENSHOTS")
    if artifacts:  # keep the screenshots for a person to look at
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy(png, Path(artifacts) / png.name)
    return out


def test_the_namespace_has_no_way_out(rendered: Path) -> None:
    interfaces = [line.split(":")[1].strip() for line in (rendered / "links.txt").read_text().splitlines()]
    assert interfaces == ["lo"]


def test_swagger_ui_renders_every_operation_offline(rendered: Path) -> None:
    dom = (rendered / "docs.html").read_text()
    assert 'class="swagger-ui"' in dom
    assert "mlops-lab model server" in dom  # the title comes from /openapi.json, fetched by the page
    for path in ("/predict", "/invocations", "/model", "/replicas", "/reload", "/webhooks/mlflow"):
        assert f'data-path="{path}"' in dom, f"operation {path} not rendered"
    assert (rendered / "docs.png").stat().st_size > 20_000


def test_redoc_renders_offline(rendered: Path) -> None:
    dom = (rendered / "redoc.html").read_text()
    assert "mlops-lab model server" in dom
    assert "/predict" in dom
    assert "/invocations" in dom
    assert (rendered / "redoc.png").stat().st_size > 20_000


def test_the_stock_cdn_page_renders_nothing_offline(rendered: Path) -> None:
    dom = (rendered / "cdn-docs.html").read_text()
    assert "cdn.jsdelivr.net" in dom  # it did ask for the CDN's assets
    assert 'data-path="/predict"' not in dom
    assert "mlops-lab model server" not in dom
