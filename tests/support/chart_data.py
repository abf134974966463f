"""The pinned upstream charts' own files (values.yaml, values.schema.json, Chart.yaml), for the tests.

Every test and script gets them through :func:`chart_dir`, from the first of:

1. the cache, ``${MLOPSLAB_CACHE:-~/.cache/mlops-lab}/charts/<chart>-<version>/``;
2. the chart's own repository: its ``index.yaml`` names the pinned version's package, which is
   downloaded and checked against the package digest recorded here (where the project records
   one), and whose files are checked against the file digests recorded here, then cached;
3. a directory named by ``MLOPSLAB_CHART_SCHEMAS`` holding ``<chart>/<file>`` (``.ci/run`` points
   it at ``../shared/chart-schemas`` when that folder exists, since CI cannot reach chart
   repositories); its files are checked against the same digests, then cached.

Every file is checked against its recorded SHA-256 wherever it comes from, so a test never runs
against other data than the pinned chart's. When no source has it, :class:`ChartDataMissing` says
which sources were tried and how to fix it: the tests fail, they are never skipped.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

DOWNLOAD_TIMEOUT = 15.0


@dataclass(frozen=True)
class PinnedChart:
    name: str
    version: str
    repo_url: str
    # file name -> sha256 of the upstream file, byte for byte
    files: dict[str, str]
    # sha256 of the chart package as the repository's index publishes it ("" where not recorded)
    package_sha256: str = ""


CHARTS: dict[str, PinnedChart] = {
    chart.name: chart
    for chart in (
        PinnedChart(
            "airflow",
            "1.22.0",
            "https://airflow.apache.org",
            {
                "Chart.yaml": "7caafda165e0642e5595e1378c165b41307a868c9f8a2e97e635e592d36d89b2",
                "values.yaml": "bde995c5a44634ff3448935f806da61e06a6ec7bdcba9e0d34e92d1ba02d32fa",
                "values.schema.json": "12eb9c2e90674b0f6a180eef5b87817ae3af83b38e2a1e60e9a1ed6b167de36a",
            },
            package_sha256="1f7d1dfe3d58e2c54899950aba907a43625a18c8b6fb3c54760c21592129a5b6",
        ),
        PinnedChart(
            "mlflow",
            "1.11.5",
            "https://community-charts.github.io/helm-charts",
            {
                "Chart.yaml": "36046cf345ba79a00ad2d20f455cc8d61911801d9c19ab6df571fd135f3124f1",
                "values.yaml": "fdf4291811bc4e5a793d0a750eedfb394626797dadeb9cb23fc34c029488fbcb",
                "values.schema.json": "71c6a883fac3e537c4ec4a77b9b18b967e1f922e3776eecb17a703bc0d9c181c",
            },
        ),
        PinnedChart(
            "ingress-nginx",
            "4.15.1",
            "https://kubernetes.github.io/ingress-nginx",
            {
                # the chart has no values.schema.json
                "Chart.yaml": "3d514d4f70886e936288f51afbd7aaa7baf3b4d6a1c67ee23d46f89e4e287843",
                "values.yaml": "0d8eac2d4e5cc2ffa225debea7b1feb1fb372520c5b046e21f6177919d54e622",
            },
        ),
    )
}


class ChartDataMissing(RuntimeError):
    """No source had the pinned chart's files (or they did not match the recorded digests)."""


def cache_root() -> Path:
    return Path(os.environ.get("MLOPSLAB_CACHE") or Path.home() / ".cache" / "mlops-lab")


def cache_dir(chart: PinnedChart) -> Path:
    return cache_root() / "charts" / f"{chart.name}-{chart.version}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check(chart: PinnedChart, files: dict[str, bytes], origin: str) -> None:
    for name, digest in chart.files.items():
        if name not in files:
            raise ValueError(f"{origin} has no {name}")
        if _sha256(files[name]) != digest:
            raise ValueError(f"{origin}: {name} has sha256 {_sha256(files[name])}, the pinned chart's is {digest}")


def _store(chart: PinnedChart, files: dict[str, bytes]) -> Path:
    target = cache_dir(chart)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{chart.name}-", dir=target.parent))
    for name in chart.files:
        (staging / name).write_bytes(files[name])
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _from_cache(chart: PinnedChart) -> dict[str, bytes]:
    base = cache_dir(chart)
    files = {name: (base / name).read_bytes() for name in chart.files if (base / name).is_file()}
    _check(chart, files, str(base))
    return files


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:  # noqa: S310 (https URLs of the pins)
        data: bytes = response.read()
    return data


def _from_repository(chart: PinnedChart) -> dict[str, bytes]:
    index_url = chart.repo_url.rstrip("/") + "/index.yaml"
    index = yaml.safe_load(_get(index_url)) or {}
    entries = [e for e in (index.get("entries") or {}).get(chart.name, []) if str(e.get("version")) == chart.version]
    if not entries:
        raise ValueError(f"{index_url} lists no {chart.name} {chart.version}")
    entry = entries[0]
    url = urllib.parse.urljoin(index_url, entry["urls"][0])
    package = _get(url)
    expected = chart.package_sha256 or str(entry.get("digest") or "")
    if expected and _sha256(package) != expected:
        raise ValueError(f"{url} has sha256 {_sha256(package)}, expected {expected}")
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as archive:
        for name in chart.files:
            member = archive.extractfile(f"{chart.name}/{name}")
            if member is not None:
                files[name] = member.read()
    _check(chart, files, url)
    return files


def _from_directory(chart: PinnedChart) -> dict[str, bytes]:
    root = os.environ.get("MLOPSLAB_CHART_SCHEMAS")
    if not root:
        raise ValueError("MLOPSLAB_CHART_SCHEMAS is not set")
    base = Path(root) / chart.name
    files = {name: (base / name).read_bytes() for name in chart.files if (base / name).is_file()}
    _check(chart, files, str(base))
    return files


def chart_dir(name: str) -> Path:
    """The directory holding the pinned chart's files (filled from the first source that has them)."""
    chart = CHARTS[name]
    tried: list[str] = []
    try:
        _from_cache(chart)
        return cache_dir(chart)
    except (OSError, ValueError) as exc:
        tried.append(f"cache {cache_dir(chart)}: {exc}")
    for label, source in (("chart repository", _from_repository), ("MLOPSLAB_CHART_SCHEMAS", _from_directory)):
        try:
            return _store(chart, source(chart))
        except (OSError, ValueError, urllib.error.URLError, tarfile.TarError, yaml.YAMLError, KeyError) as exc:
            tried.append(f"{label}: {exc}")
    raise ChartDataMissing(
        f"the pinned {chart.name} chart {chart.version} ({', '.join(chart.files)}) is not available:\n  "
        + "\n  ".join(tried)
        + "\nFix: give this machine access to "
        + chart.repo_url
        + ", or set MLOPSLAB_CHART_SCHEMAS to a directory holding "
        + f"{chart.name}/<file> copies of the upstream files (e.g. the chart-schemas folder CI has), "
        + f"or put the files in {cache_dir(chart)}."
    )


def chart_file(name: str, file: str) -> Path:
    return chart_dir(name) / file
