"""TrainModelOperator: resolve a version, pull it, train, and write one experiment row.

Version: the ``version`` param, else the triggering Asset event's version, else the newest tag.
Pull and training share the task so the data never crosses workers. The experiment row is keyed on
(dag_id, run_id): a rerun of the same Airflow run updates it. A training callable that raises leaves
the row with ``status='failed'`` and the error in ``evaluations.error`` (never half-written as
succeeded); the task then fails.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.operators.pull_dataset import pull_version, run_scoped_dir
from dataset_registry.paths import worker_path

DEFAULT_TRAIN = "dataset_registry.profile:profile"


def data_root() -> Path:
    return worker_path("DATASET_DATA_DIR", "dataset-runs")


class TrainModelOperator(BaseOperator):
    template_fields: Sequence[str] = ("project", "output_file", "version")
    ui_color = "#fdebd0"

    def __init__(self, *, project: str, output_file: str, asset_uri: str, version: str = "",
                 train_callable: str | None = None, include_path: str | None = None, model_name: str | None = None,
                 registry_conn_id: str = "dvc_registry", model_db_conn_id: str = "model_db", **kwargs: Any):
        super().__init__(**kwargs)
        self.project = project
        self.output_file = output_file
        self.asset_uri = asset_uri
        self.version = version
        self.train_callable = train_callable or DEFAULT_TRAIN
        self.include_path = include_path
        self.model_name = model_name
        self.registry_conn_id = registry_conn_id
        self.model_db_conn_id = model_db_conn_id

    def _version_from_events(self, context) -> str | None:
        events = []
        for evs in (context.get("triggering_asset_events") or {}).values():
            events.extend(evs)
        if not events:
            return None
        newest = max(events, key=lambda e: e.timestamp)
        extra = newest.extra or {}
        if newest.asset.uri != self.asset_uri or extra.get("project") != self.project:
            raise AirflowFailException(
                f"the triggering asset event is for {extra.get('project')!r} ({newest.asset.uri}), "
                f"but this DAG trains project {self.project!r}"
            )
        if not extra.get("version"):
            raise AirflowFailException(f"the triggering asset event carries no version: {extra}")
        return str(extra["version"])

    def execute(self, context) -> dict:
        from dataset_registry.hooks.model_db_hook import ModelDbHook
        from dataset_registry.mysql_export import load_callable

        version = (self.version or "").strip() or None
        source = "param"
        if version is None:
            version = self._version_from_events(context)
            source = "asset event" if version else "newest tag"
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        work = run_scoped_dir(data_root(), dag_id, run_id)
        pulled = pull_version(self.registry_conn_id, self.project, self.output_file, version, work)
        self.log.info("training on %s (from %s), md5 %s, %s", pulled["tag"], source, pulled["md5"],
                      "downloaded" if pulled["downloaded"] else "from the local DVC cache")

        db = ModelDbHook(self.model_db_conn_id).get_conn()
        db.record_dataset_version(project=pulled["project"], version=pulled["version"], tag=pulled["tag"],
                                  md5=pulled["md5"], rows=pulled["rows"], bytes=pulled["bytes"], commit=pulled["commit"])
        project_id = db.get_or_create_project(self.project)
        model_id = db.get_or_create_model(project_id, self.model_name or f"{self.project}_model")
        experiment_id = db.upsert_experiment(
            model_id=model_id, model_version_id=run_id, training_dataset=pulled["tag"], dataset_md5=pulled["md5"],
            parameters={"train_callable": self.train_callable}, airflow_dag_id=dag_id, airflow_run_id=run_id,
            status="running",
        )
        train = load_callable(self.train_callable, Path(self.include_path) if self.include_path else None)
        artifacts = work / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        try:
            result = train(pulled["path"], project=self.project, version=pulled["version"], tag=pulled["tag"],
                           md5=pulled["md5"], artifacts_dir=str(artifacts)) or {}
            if not isinstance(result, dict):
                raise TypeError(f"{self.train_callable} returned {type(result).__name__}, expected a dict")
        except Exception as exc:
            db.update_experiment(experiment_id, status="failed", evaluations={"error": f"{type(exc).__name__}: {exc}"})
            raise
        row = db.update_experiment(
            experiment_id, status="succeeded",
            parameters=result.get("parameters") or {}, evaluations=result.get("evaluations") or {},
            artifact_file_paths=result.get("artifact_file_paths") or {},
        )
        summary = {"experiment_id": experiment_id, "training_dataset": pulled["tag"], "md5": pulled["md5"],
                   "evaluations": row["evaluations"], "version_source": source}
        self.log.info("experiment %s: %s", experiment_id, summary)
        return summary
