"""ModelDbHook: the ``model_db`` connection (postgres or sqlite) -> a ModelDB.

Embedded default: when the default connection ``model_db`` is not defined, a SQLite file
``$MODEL_DB_PATH`` (default ``$AIRFLOW_HOME/model_db.sqlite``) is used, and the log says so, but only
on an executor that runs every task on this machine (LocalExecutor, SequentialExecutor). On any
other (Celery, Kubernetes, ...) each worker would write its own private file, so a missing
``model_db`` is an error there (ModelDbNotConfigured), naming the executor and the fix.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from dataset_registry.connection_ids import MODEL_DB_CONN_ID
from dataset_registry.model_db import ModelDB, ModelDbError
from dataset_registry.paths import worker_path


# Executors that run every task on the one machine, where an embedded SQLite file is one shared DB.
SINGLE_MACHINE_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor"})


class ModelDbNotConfigured(ModelDbError, AirflowFailException):
    """No ``model_db`` connection on a distributed executor: fails the task without retries."""


def default_sqlite_path() -> Path:
    return worker_path("MODEL_DB_PATH", "model_db.sqlite")


def configured_executors() -> list[str]:
    """``[core] executor`` as a list of entries (it may be a comma list, entries may be
    ``alias:module.Class`` or a module path)."""
    from airflow.configuration import conf

    raw = conf.get("core", "executor", fallback="") or ""
    return [item.strip() for item in raw.split(",") if item.strip()]


def distributed_executors(executors: list[str]) -> list[str]:
    """The entries that are not a single-machine executor (judged by the class name)."""
    return [e for e in executors if e.rsplit(":", 1)[-1].rsplit(".", 1)[-1] not in SINGLE_MACHINE_EXECUTORS]


class ModelDbHook(BaseHook):
    """The model DB (projects, models, experiments, dataset_versions).

    :param model_db_conn_id: a ``postgres`` or ``sqlite`` connection; default ``model_db`` (missing:
        the embedded SQLite file on single-machine executors, see the module docstring).
    """

    conn_name_attr = "model_db_conn_id"
    default_conn_name = MODEL_DB_CONN_ID
    conn_type = "postgres"
    hook_name = "Model DB"

    def __init__(self, model_db_conn_id: str = default_conn_name, **kwargs):
        super().__init__(**kwargs)
        self.model_db_conn_id = model_db_conn_id

    def sqlalchemy_url(self):
        import sqlalchemy as sa

        try:
            conn = self.get_connection(self.model_db_conn_id)
        except AirflowNotFoundException:
            if self.model_db_conn_id != self.default_conn_name:
                raise
            if distributed := distributed_executors(configured_executors()):
                raise ModelDbNotConfigured(
                    f"connection {self.model_db_conn_id!r} is not defined and the executor is "
                    f"{', '.join(distributed)}: tasks run on several workers, so the embedded SQLite "
                    "fallback would give each worker its own private model DB. Define a postgres "
                    f"connection {self.model_db_conn_id!r} (e.g. AIRFLOW_CONN_{self.model_db_conn_id.upper()}) "
                    "that all workers share (the README's deployment section lists what must be shared)."
                ) from None
            path = default_sqlite_path()
            self.log.info("connection %r is not defined: using the embedded SQLite model DB %s", self.model_db_conn_id, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        if conn.conn_type == "sqlite":
            path = conn.host or conn.schema
            if not path:
                raise ModelDbError(f"connection {self.model_db_conn_id!r}: sqlite needs the database file path in 'host'")
            return f"sqlite:///{path}"
        if conn.conn_type in ("postgres", "postgresql"):
            return sa.engine.URL.create(
                "postgresql+psycopg2", username=conn.login or None, password=conn.password or None,
                host=conn.host or "localhost", port=conn.port or 5432, database=conn.schema or "postgres",
                query={"connect_timeout": str((conn.extra_dejson or {}).get("connect_timeout", 10))},
            )
        raise ModelDbError(f"connection {self.model_db_conn_id!r}: type {conn.conn_type!r} is not supported (postgres or sqlite)")

    @cached_property
    def db(self) -> ModelDB:
        return ModelDB(self.sqlalchemy_url())

    def get_conn(self) -> ModelDB:
        """The ModelDB for this connection (built once per hook)."""
        return self.db
