"""The default Airflow connection ids, defined once (contract: ``mysql_raw``, ``dvc_registry``, ``model_db``).

Hooks use them as ``default_conn_name``; operators and the project YAML defaults take them from here.
A plain module so that ``project_config`` (below the hooks) can use them without importing Airflow.
"""
MYSQL_CONN_ID = "mysql_raw"
REGISTRY_CONN_ID = "dvc_registry"
MODEL_DB_CONN_ID = "model_db"
# Optional (a project's ``mlflow_conn_id``; tracking is off when a project names none): the default of
# the MLflow hook, used only when an operator is given no id at all.
MLFLOW_CONN_ID = "mlflow_default"
