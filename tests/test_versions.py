"""One MLflow version for every client and server, one Airflow version matching the chart.

The seed's client/server mismatch gave a 404 on logged-models: these pins must move together.
The pinned charts' Chart.yaml comes from tests/support/chart_data.py, whose pins must be the
ones the release roles install.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tests.support.chart_data import CHARTS, chart_dir

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "collections" / "ansible_collections" / "mlopslab" / "platform" / "roles"
LAB_K8S = REPO / "inventories" / "lab" / "group_vars" / "k8s_control" / "main.yml"


def _pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def _pins(lines: list[str], package: str) -> set[str]:
    pattern = re.compile(rf"^{re.escape(package)}==([0-9][^\s;]*)")
    return {match.group(1) for line in lines if (match := pattern.match(line.strip()))}


def _requirement_lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def _yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    return data


def _defaults(role: str) -> dict[str, Any]:
    return _yaml(ROLES / role / "defaults" / "main.yml")


def _pinned_chart(role: str) -> dict[str, str]:
    """The chart a release role installs (its vars/main.yml `__<role>_chart`)."""
    chart = _yaml(ROLES / role / "vars" / "main.yml")[f"__{role}_chart"]
    assert isinstance(chart, dict)
    return {key: str(value) for key, value in chart.items()}


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
    # the lab's MLflow release runs the image built from that definition
    assert _yaml(LAB_K8S)["mlflow_release_image"] == "{{ container_images_refs.mlflow }}"


def test_the_chart_data_pins_are_the_charts_the_roles_install() -> None:
    for role, chart in (
        ("airflow_release", "airflow"),
        ("mlflow_release", "mlflow"),
        ("ingress_nginx_release", "ingress-nginx"),
    ):
        pinned = _pinned_chart(role)
        assert (pinned["ref"], pinned["version"], pinned["repo_url"]) == (
            CHARTS[chart].name,
            CHARTS[chart].version,
            CHARTS[chart].repo_url,
        ), role
        assert str(_yaml(chart_dir(chart) / "Chart.yaml")["version"]) == pinned["version"]


def test_mlflow_matches_the_pinned_chart_app_version() -> None:
    chart = _yaml(chart_dir("mlflow") / "Chart.yaml")
    assert chart["appVersion"] == mlflow_version()


def test_airflow_matches_the_pinned_chart_app_version() -> None:
    chart = _yaml(chart_dir("airflow") / "Chart.yaml")
    pinned = _pins(_requirement_lines(REPO / "dags" / "requirements.txt"), "apache-airflow")
    assert pinned == {chart["appVersion"]}
    images = {d["name"]: d for d in _defaults("container_images")["container_images_definitions"]}
    assert images["airflow"]["version"] == chart["appVersion"]
    assert f"'{chart['appVersion']}'" in (REPO / "images" / "airflow" / "Dockerfile").read_text()


def test_dags_extra_mirrors_dags_requirements() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    assert sorted(extras["dags"]) == sorted(_requirement_lines(REPO / "dags" / "requirements.txt"))
