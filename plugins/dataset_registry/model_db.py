"""The model DB: projects, models, experiments, dataset_versions (SQLAlchemy Core, no Airflow).

Follows the original model-management design (experiments carry ``parameters``,
``training_dataset``, ``validation_dataset``, ``test_dataset``, ``evaluations``,
``artifact_file_paths``, ``created_datetime``) plus what traceability needs: the dataset md5, the
Airflow dag/run ids (unique together, so re-running a run updates its row instead of adding one)
and a status. ``ensure_schema`` creates missing tables and adds missing columns, never drops.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
metadata = sa.MetaData()


def _now() -> datetime:
    return datetime.now(timezone.utc)


projects = sa.Table(
    "projects", metadata,
    sa.Column("project_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_name", sa.String(64), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("created_datetime", sa.DateTime(timezone=True), nullable=False, default=_now),
)

models = sa.Table(
    "models", metadata,
    sa.Column("model_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.project_id"), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("created_datetime", sa.DateTime(timezone=True), nullable=False, default=_now),
    sa.UniqueConstraint("project_id", "model_name", name="uq_models_project_name"),
)

experiments = sa.Table(
    "experiments", metadata,
    sa.Column("experiment_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_id", sa.Integer, sa.ForeignKey("models.model_id"), nullable=False),
    sa.Column("model_version_id", sa.String(128), nullable=False),
    sa.Column("parameters", JSONType, nullable=True),
    sa.Column("training_dataset", sa.Text, nullable=True),
    sa.Column("validation_dataset", sa.Text, nullable=True),
    sa.Column("test_dataset", sa.Text, nullable=True),
    sa.Column("evaluations", JSONType, nullable=True),
    sa.Column("artifact_file_paths", JSONType, nullable=True),
    sa.Column("created_datetime", sa.DateTime(timezone=True), nullable=False, default=_now),
    sa.Column("updated_datetime", sa.DateTime(timezone=True), nullable=True),
    sa.Column("dataset_md5", sa.String(32), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, default="running"),
    sa.Column("airflow_dag_id", sa.String(250), nullable=True),
    sa.Column("airflow_run_id", sa.String(250), nullable=True),
    # Added later (ensure_schema adds it in place): the MLflow run of this Airflow run, when tracked.
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.UniqueConstraint("airflow_dag_id", "airflow_run_id", name="uq_experiments_airflow_run"),
)

dataset_versions = sa.Table(
    "dataset_versions", metadata,
    sa.Column("dataset_version_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("tag", sa.String(128), nullable=False, unique=True),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=True),
    sa.Column("bytes", sa.BigInteger, nullable=True),
    sa.Column("commit", sa.String(40), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False, default=_now),
    # Added later (ensure_schema adds them in place to older databases; old rows keep NULL):
    sa.Column("window_start", sa.String(40), nullable=True),  # ISO, as in the Asset event
    sa.Column("window_end", sa.String(40), nullable=True),
    sa.Column("columns", JSONType, nullable=True),  # the CSV's column names, in order
    sa.Column("profile", JSONType, nullable=True),  # column -> {type, nulls, empty, min, max, distinct}
    sa.UniqueConstraint("project", "version", name="uq_dataset_versions_project_version"),
)


class ModelDbError(RuntimeError):
    """The model DB refused an operation or is unreachable."""


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str)) if value is not None else None


class ModelDB:
    """Methods a training script needs; every write is idempotent or keyed."""

    def __init__(self, url: str | sa.engine.URL, **engine_kwargs):
        self.engine = sa.create_engine(url, pool_pre_ping=True, **engine_kwargs)
        self._schema_ready = False

    # ---------------------------------------------------------------- schema
    def ensure_schema(self) -> None:
        """Create missing tables; add missing (nullable) columns to existing ones. Never drops."""
        if self._schema_ready:
            return
        metadata.create_all(self.engine, checkfirst=True)
        inspector = sa.inspect(self.engine)
        postgres = self.engine.dialect.name == "postgresql"
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                ddl = column.type.compile(dialect=self.engine.dialect)
                # Several workers may upgrade at once: PostgreSQL skips a column another one just
                # added; SQLite (one machine) reports it as a duplicate, which is the same outcome.
                exists = "IF NOT EXISTS " if postgres else ""
                try:
                    with self.engine.begin() as conn:
                        conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN {exists}"{column.name}" {ddl}'))
                except sa.exc.OperationalError as exc:
                    if "duplicate column" not in str(exc).lower():
                        raise
        self._schema_ready = True

    # ---------------------------------------------------------------- projects and models
    def get_or_create_project(self, name: str, description: str | None = None) -> int:
        self.ensure_schema()
        return self._get_or_create(projects, "project_id", {"project_name": name},
                                   {"description": description, "created_datetime": _now()})

    def get_or_create_model(self, project_id: int, name: str, description: str | None = None) -> int:
        self.ensure_schema()
        return self._get_or_create(models, "model_id", {"project_id": project_id, "model_name": name},
                                   {"description": description, "created_datetime": _now()})

    def _get_or_create(self, table: sa.Table, id_col: str, key: dict, extra: dict) -> int:
        where = sa.and_(*(table.c[k] == v for k, v in key.items()))
        for _ in range(3):
            with self.engine.begin() as conn:
                found = conn.execute(sa.select(table.c[id_col]).where(where)).scalar()
                if found is not None:
                    return int(found)
            try:
                with self.engine.begin() as conn:
                    return int(conn.execute(table.insert().values(**key, **extra)).inserted_primary_key[0])
            except IntegrityError:
                continue  # someone else created it meanwhile: read theirs
        raise ModelDbError(f"could not get or create {table.name} {key}")

    # ---------------------------------------------------------------- dataset versions
    def record_dataset_version(self, *, project: str, version: str, tag: str, md5: str, rows: int | None,
                               bytes: int | None, commit: str, window_start: str | None = None,
                               window_end: str | None = None, columns: list | None = None,
                               profile: dict | None = None) -> int:
        """Idempotent: the same tag again returns the existing row; a different md5 is an error.

        ``window_start``/``window_end``/``columns``/``profile`` are stored when known; a row recorded
        without them (by an older version, or from a tag without them) gets them filled in later."""
        self.ensure_schema()
        optional = {k: v for k, v in (("window_start", window_start), ("window_end", window_end),
                                      ("columns", _jsonable(columns)), ("profile", _jsonable(profile)))
                    if v is not None}
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.tag == tag)).mappings().first()
            if row is None:
                try:
                    return int(conn.execute(dataset_versions.insert().values(
                        project=project, version=version, tag=tag, md5=md5, rows=rows, bytes=bytes,
                        commit=commit, created=_now(), **optional)).inserted_primary_key[0])
                except IntegrityError:
                    pass
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.tag == tag)).mappings().one()
            if row["md5"] != md5:
                raise ModelDbError(f"dataset_versions already records {tag} with md5 {row['md5']}, not {md5}")
            missing = {k: v for k, v in optional.items() if row[k] is None}
            if missing:
                conn.execute(dataset_versions.update().where(dataset_versions.c.tag == tag).values(**missing))
        return int(row["dataset_version_id"])

    def get_dataset_version(self, tag: str) -> dict | None:
        self.ensure_schema()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(dataset_versions).where(dataset_versions.c.tag == tag)).mappings().first()
        return dict(row) if row else None

    # ---------------------------------------------------------------- experiments
    def upsert_experiment(self, *, model_id: int, model_version_id: str, training_dataset: str,
                          dataset_md5: str | None = None, parameters: dict | None = None,
                          validation_dataset: str | None = None, test_dataset: str | None = None,
                          airflow_dag_id: str | None = None, airflow_run_id: str | None = None,
                          status: str = "running") -> int:
        """Add an experiment; with Airflow ids, the same run updates its existing row instead.

        Updating starts a new attempt: evaluations and artifact paths of the previous attempt (an error,
        stale numbers) are cleared; ``mlflow_run_id`` is kept, so the attempt finds its MLflow run again."""
        self.ensure_schema()
        values = dict(model_id=model_id, model_version_id=model_version_id, training_dataset=training_dataset,
                      dataset_md5=dataset_md5, parameters=_jsonable(parameters), validation_dataset=validation_dataset,
                      test_dataset=test_dataset, status=status)
        if airflow_dag_id and airflow_run_id:
            key = sa.and_(experiments.c.airflow_dag_id == airflow_dag_id, experiments.c.airflow_run_id == airflow_run_id)
            for _ in range(3):
                with self.engine.begin() as conn:
                    existing = conn.execute(sa.select(experiments.c.experiment_id).where(key)).scalar()
                    if existing is not None:
                        conn.execute(experiments.update().where(experiments.c.experiment_id == existing)
                                     .values(**values, evaluations={}, artifact_file_paths={},
                                             updated_datetime=_now()))
                        return int(existing)
                try:
                    with self.engine.begin() as conn:
                        return int(conn.execute(experiments.insert().values(
                            **values, airflow_dag_id=airflow_dag_id, airflow_run_id=airflow_run_id,
                            created_datetime=_now(), evaluations={}, artifact_file_paths={})).inserted_primary_key[0])
                except IntegrityError:
                    continue
            raise ModelDbError(f"could not upsert the experiment of run {airflow_dag_id}/{airflow_run_id}")
        with self.engine.begin() as conn:
            return int(conn.execute(experiments.insert().values(
                **values, created_datetime=_now(), evaluations={}, artifact_file_paths={})).inserted_primary_key[0])

    def update_experiment(self, experiment_id: int, *, evaluations: dict | None = None,
                          artifact_file_paths: dict | None = None, status: str | None = None,
                          parameters: dict | None = None, mlflow_run_id: str | None = None) -> dict:
        """Merge (not overwrite) evaluations, artifact paths and parameters; set status and the MLflow run id."""
        self.ensure_schema()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(experiments).where(experiments.c.experiment_id == experiment_id)
                               .with_for_update()).mappings().first()
            if row is None:
                raise ModelDbError(f"no experiment {experiment_id}")
            values: dict[str, Any] = {"updated_datetime": _now()}
            for name, new in (("evaluations", evaluations), ("artifact_file_paths", artifact_file_paths),
                              ("parameters", parameters)):
                if new is not None:
                    values[name] = {**(row[name] or {}), **_jsonable(new)}
            if status is not None:
                values["status"] = status
            if mlflow_run_id is not None:
                values["mlflow_run_id"] = mlflow_run_id
            conn.execute(experiments.update().where(experiments.c.experiment_id == experiment_id).values(**values))
        return self.get_experiment(experiment_id)

    def get_experiment(self, experiment_id: int) -> dict:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(experiments).where(experiments.c.experiment_id == experiment_id)).mappings().one()
        return dict(row)

    def list_experiments(self, *, project: str | None = None, model: str | None = None,
                         model_version_id: str | None = None, training_dataset: str | None = None) -> list[dict]:
        """Experiments joined with their model and project, newest first, filtered as given."""
        self.ensure_schema()
        query = (
            sa.select(experiments, models.c.model_name, projects.c.project_name)
            .join(models, experiments.c.model_id == models.c.model_id)
            .join(projects, models.c.project_id == projects.c.project_id)
            .order_by(experiments.c.experiment_id.desc())
        )
        if project is not None:
            query = query.where(projects.c.project_name == project)
        if model is not None:
            query = query.where(models.c.model_name == model)
        if model_version_id is not None:
            query = query.where(experiments.c.model_version_id == model_version_id)
        if training_dataset is not None:
            query = query.where(experiments.c.training_dataset == training_dataset)
        with self.engine.begin() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
