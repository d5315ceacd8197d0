"""Scheduled dataset versioning: MySQL window -> CSV -> DVC registry, one immutable git tag per version.

Layers (imports only run downward):
  operators/  Airflow operators (know the task context)
  hooks/      Airflow hooks: read Connections, build the clients below
  registry.py, mysql_export.py   the work itself, no Airflow
  names.py, project_config.py, csv_format.py, gitcmd.py, dvc_cli.py   small building blocks
"""
