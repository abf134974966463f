#!/usr/bin/env python3
"""Bring the MLflow backend store named by MLFLOW_BACKEND_STORE_URI to the head schema.

Prints "schema: created", "schema: upgraded" or "schema: current", so Ansible reports a
change only when the database changed. The URI comes from the environment so that it never
shows in a process list.
"""

import os
import sys

import sqlalchemy
from mlflow.store.db import utils


def main() -> int:
    uri = os.environ.get("MLFLOW_BACKEND_STORE_URI", "")
    if not uri:
        print("MLFLOW_BACKEND_STORE_URI is not set", file=sys.stderr)
        return 2
    engine = sqlalchemy.create_engine(uri, pool_pre_ping=True)
    try:
        if utils._is_empty_database(engine):
            utils._initialize_tables(engine)
            print("schema: upgraded (created)")
            return 0
        head = utils._get_latest_schema_revision()
        current = utils._get_schema_version(engine)
        if current == head:
            print(f"schema: current ({current})")
            return 0
        utils._upgrade_db(engine)
        print(f"schema: upgraded ({current} -> {head})")
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
