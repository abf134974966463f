"""mlopslab.platform.alembic_revision: "at head" only when it is sure, read without importing the package.

Through real ansible runs of the module, against MLflow's own installed migrations (the project's
.venv has MLflow): a SQLite store MLflow itself created is at the head MLflow names; one revision
back, a database without the table and a package whose script does not declare its revision are
each "not at head" with the reason, so that the roles hand the decision to the package's tool.
The PostgreSQL path runs in every local platform bootstrap (tests/e2e): a second bootstrap skips
MLflow's and Airflow's own checks only when this module found the schemas at their heads.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.collection import run_module

VERSIONS = "store/db_migrations/versions"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A SQLite store with MLflow's tables, made by MLflow; its head revision as MLflow reads it."""
    import sqlalchemy
    from mlflow.store.db import utils

    path = tmp_path_factory.mktemp("alembic") / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        utils._initialize_tables(engine)
        head = utils._get_latest_schema_revision()
    finally:
        engine.dispose()
    return path, str(head)


def judge(tmp: Path, url: str, package: str = "mlflow", versions: str = VERSIONS) -> dict[str, object]:
    return run_module("alembic_revision", {"url": url, "package": package, "versions": versions}, tmp)


def test_a_store_mlflow_migrated_is_at_the_head_mlflow_names(mlflow_store: tuple[Path, str], tmp_path: Path) -> None:
    path, head = mlflow_store
    result = judge(tmp_path, f"sqlite:///{path}")
    assert (result["at_head"], result["current"], result["heads"], result["reason"]) == (True, [head], [head], "")
    assert result["changed"] is False


def test_one_revision_back_is_not_at_head(mlflow_store: tuple[Path, str], tmp_path: Path) -> None:
    path, head = mlflow_store
    older = tmp_path / "older.db"
    older.write_bytes(path.read_bytes())
    with sqlite3.connect(older) as db:
        db.execute("UPDATE alembic_version SET version_num = 'a1b2c3d4e5f6'")
    result = judge(tmp_path, f"sqlite:///{older}")
    assert result["at_head"] is False
    assert result["reason"] == f"the database is at a1b2c3d4e5f6, the scripts' head is {head}"


def test_a_database_without_the_table_is_not_at_head(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = judge(tmp_path, f"sqlite:///{empty}")
    assert result["at_head"] is False
    assert "no alembic_version" in str(result["reason"])


def test_a_script_without_a_literal_revision_leaves_it_to_the_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store: tuple[Path, str]
) -> None:
    package = tmp_path / "site" / "fakepkg"
    versions = package / "migrations" / "versions"
    versions.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (versions / "0001_first.py").write_text('revision = "0001"\ndown_revision = None\n')
    (versions / "0002_second.py").write_text('revision = make_revision()\ndown_revision = "0001"\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    result = judge(tmp_path, f"sqlite:///{mlflow_store[0]}", package="fakepkg", versions="migrations/versions")
    assert (result["at_head"], result["reason"]) == (False, "0002_second.py does not declare its revision as a literal")


def test_a_package_this_interpreter_lacks_is_named(tmp_path: Path) -> None:
    result = judge(tmp_path, "sqlite:////nonexistent.db", package="no_such_package_here")
    assert (result["at_head"], result["reason"]) == (
        False,
        "the package no_such_package_here is not installed for this interpreter",
    )
