"""Scheduled dataset versioning: MySQL window -> CSV -> DVC registry, one immutable git tag per version.

Layers (imports only run downward):
  operators/  Airflow operators (know the task context)
  hooks/      Airflow hooks: read Connections, build the clients below, add the connection context to errors
  registry.py, mysql_export.py, model_db.py   the work itself, no Airflow
  names.py, project_config.py, csv_format.py, gitcmd.py, dvc_cli.py, s3_remote.py, ...   small building blocks
Installed as a provider (``pip install .``): ``get_provider_info`` declares the ``dvc_registry``
connection type and its form; ``plugin`` is the Airflow plugin.
"""
__version__ = "0.5.0"
