"""One MLflow version for every client and server, one Airflow version matching the chart.

The seed's client/server mismatch gave a 404 on logged-models: these pins must move together.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "collections" / "ansible_collections" / "mlopslab" / "platform" / "roles"
CHART_SCHEMAS = REPO.parent / "shared" / "chart-schemas"


def _pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def _pins(lines: list[str], package: str) -> set[str]:
    pattern = re.compile(rf"^{re.escape(package)}==([0-9][^\s;]*)")
    return {match.group(1) for line in lines if (match := pattern.match(line.strip()))}


def _requirement_lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def _defaults(role: str) -> dict[str, Any]:
    data: dict[str, object] = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
    return data


def mlflow_version() -> str:
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    versions = _pins(extras["mlflow"], "mlflow")
    assert len(versions) == 1
    return versions.pop()


def test_every_mlflow_pin_is_the_same() -> None:
    version = mlflow_version()
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    for extra in ("serving", "dags"):
        assert _pins(extras[extra], "mlflow") == {version}, extra
    assert _pins(_requirement_lines(REPO / "dags" / "requirements.txt"), "mlflow") == {version}
    assert _pins(_requirement_lines(REPO / "serving" / "requirements.txt"), "mlflow-skinny") == {version}
    assert _pins(_requirement_lines(REPO / "images" / "mlflow" / "requirements.txt"), "mlflow") == {version}
    for dockerfile in ("images/mlflow/Dockerfile", "images/airflow/Dockerfile", "serving/Dockerfile"):
        assert f"'{version}'" in (REPO / dockerfile).read_text(), dockerfile
    images = {d["name"]: d for d in _defaults("container_images")["container_images_definitions"]}  # type: ignore[union-attr]
    assert images["mlflow"]["version"] == version
    assert str(_defaults("mlflow_local")["mlflow_local_version"]) == version
    assert str(_defaults("mlflow_release")["mlflow_release_image_tag"]) == version


def test_mlflow_matches_the_pinned_chart_app_version() -> None:
    chart = yaml.safe_load((CHART_SCHEMAS / "mlflow" / "Chart.yaml").read_text())
    assert chart["appVersion"] == mlflow_version()
    assert str(_defaults("mlflow_release")["mlflow_release_chart_version"]) == chart["version"]


def test_airflow_matches_the_pinned_chart_app_version() -> None:
    chart = yaml.safe_load((CHART_SCHEMAS / "airflow" / "Chart.yaml").read_text())
    pinned = _pins(_requirement_lines(REPO / "dags" / "requirements.txt"), "apache-airflow")
    assert pinned == {chart["appVersion"]}
    assert str(_defaults("airflow_release")["airflow_release_image_tag"]) == chart["appVersion"]
    images = {d["name"]: d for d in _defaults("container_images")["container_images_definitions"]}
    assert images["airflow"]["version"] == chart["appVersion"]
    assert f"'{chart['appVersion']}'" in (REPO / "images" / "airflow" / "Dockerfile").read_text()
    assert str(_defaults("airflow_release")["airflow_release_chart_version"]) == chart["version"]


def test_dags_extra_mirrors_dags_requirements() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    assert sorted(extras["dags"]) == sorted(_requirement_lines(REPO / "dags" / "requirements.txt"))
