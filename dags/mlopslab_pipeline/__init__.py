"""The logic behind the train_and_promote and rollback_champion DAGs.

Kept out of the DAG files so that it imports and unit-tests without Airflow, and so that DAG
parsing stays cheap: `config` uses the standard library only; `training`, `registry` and
`serving_client` import MLflow, scikit-learn or httpx and are imported inside tasks.
"""
