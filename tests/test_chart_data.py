"""The one way tests get the pinned charts' files (tests/support/chart_data.py).

The chart repository is played by a real HTTP server on loopback serving an index.yaml and a
chart package built from the pinned files; the cache is a fresh directory per test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import chart_data


@pytest.fixture(scope="module")
def pinned_files() -> dict[str, dict[str, bytes]]:
    """The real pinned files, from wherever this machine has them (the same helper)."""
    return {
        name: {f: (chart_data.chart_dir(name) / f).read_bytes() for f in chart.files}
        for name, chart in chart_data.CHARTS.items()
    }


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLOPSLAB_CHART_SCHEMAS", raising=False)
    return tmp_path / "cache"


def _package(name: str, version: str, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for file, data in files.items():
            info = tarfile.TarInfo(f"{name}/{file}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def repository() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A chart repository on 127.0.0.1: tests put index.yaml and packages into the dict."""
    content: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = content.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", content
    finally:
        server.shutdown()
        server.server_close()


def _serve(monkeypatch: pytest.MonkeyPatch, url: str, content: dict[str, bytes], name: str, package: bytes) -> None:
    chart = chart_data.CHARTS[name]
    monkeypatch.setitem(chart_data.CHARTS, name, dataclasses.replace(chart, repo_url=url))
    file = f"{name}-{chart.version}.tgz"
    content[file] = package
    index = {
        "entries": {name: [{"version": chart.version, "urls": [file], "digest": hashlib.sha256(package).hexdigest()}]}
    }
    content["index.yaml"] = yaml.safe_dump(index).encode()


def test_nothing_available_fails_naming_every_source_and_the_fix(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chart = chart_data.CHARTS["mlflow"]
    # a repository that refuses connections (nothing listens on port 9 of loopback)
    monkeypatch.setitem(chart_data.CHARTS, "mlflow", dataclasses.replace(chart, repo_url="http://127.0.0.1:9"))
    with pytest.raises(chart_data.ChartDataMissing) as failure:
        chart_data.chart_dir("mlflow")
    message = str(failure.value)
    assert "mlflow chart 1.11.5" in message
    assert "cache" in message
    assert "chart repository" in message
    assert "MLOPSLAB_CHART_SCHEMAS is not set" in message
    assert "Fix:" in message


def test_a_package_from_the_repository_is_checked_and_cached(
    empty_cache: Path,
    repository: tuple[str, dict[str, bytes]],
    pinned_files: dict[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, content = repository
    _serve(monkeypatch, url, content, "mlflow", _package("mlflow", "1.11.5", pinned_files["mlflow"]))
    found = chart_data.chart_dir("mlflow")
    assert found == empty_cache / "charts" / "mlflow-1.11.5"
    assert (found / "values.yaml").read_bytes() == pinned_files["mlflow"]["values.yaml"]
    # the next call is served by the cache: the repository is gone
    content.clear()
    assert chart_data.chart_dir("mlflow") == found


def test_a_package_with_other_files_than_the_pinned_ones_is_refused(
    empty_cache: Path,
    repository: tuple[str, dict[str, bytes]],
    pinned_files: dict[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, content = repository
    tampered = {**pinned_files["mlflow"], "values.yaml": pinned_files["mlflow"]["values.yaml"] + b"\nextra: 1\n"}
    _serve(monkeypatch, url, content, "mlflow", _package("mlflow", "1.11.5", tampered))
    with pytest.raises(chart_data.ChartDataMissing, match=r"values\.yaml has sha256"):
        chart_data.chart_dir("mlflow")
    assert not (empty_cache / "charts" / "mlflow-1.11.5").exists()


def test_the_recorded_package_digest_is_checked(
    empty_cache: Path,
    repository: tuple[str, dict[str, bytes]],
    pinned_files: dict[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a repackaged chart with the right files is still not the published airflow-1.22.0.tgz
    url, content = repository
    _serve(monkeypatch, url, content, "airflow", _package("airflow", "1.22.0", pinned_files["airflow"]))
    with pytest.raises(chart_data.ChartDataMissing, match="expected 1f7d1dfe"):
        chart_data.chart_dir("airflow")


def test_a_directory_named_by_the_variable_is_checked_and_cached(
    empty_cache: Path, tmp_path: Path, pinned_files: dict[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    chart = chart_data.CHARTS["ingress-nginx"]
    monkeypatch.setitem(chart_data.CHARTS, "ingress-nginx", dataclasses.replace(chart, repo_url="http://127.0.0.1:9"))
    copies = tmp_path / "chart-schemas" / "ingress-nginx"
    copies.mkdir(parents=True)
    for file, data in pinned_files["ingress-nginx"].items():
        (copies / file).write_bytes(data)
    monkeypatch.setenv("MLOPSLAB_CHART_SCHEMAS", str(tmp_path / "chart-schemas"))
    assert chart_data.chart_dir("ingress-nginx") == empty_cache / "charts" / "ingress-nginx-4.15.1"
    # an edited copy is refused, not used
    (copies / "values.yaml").write_bytes(b"controller: {}\n")
    for cached in (empty_cache / "charts" / "ingress-nginx-4.15.1").iterdir():
        cached.unlink()
    with pytest.raises(chart_data.ChartDataMissing, match=r"values\.yaml has sha256"):
        chart_data.chart_dir("ingress-nginx")
