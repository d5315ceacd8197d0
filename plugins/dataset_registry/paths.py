"""Per-worker local paths: an environment variable wins, else a folder under ``$AIRFLOW_HOME``."""
from __future__ import annotations

import os
from pathlib import Path


def worker_path(env_var: str, name: str) -> Path:
    """``$env_var`` if set, else ``$AIRFLOW_HOME/<name>`` (``~/airflow/<name>`` without AIRFLOW_HOME)."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    return Path(os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")) / name
