"""One ``version_<project>`` DAG per project YAML. Imported at DAG parse time: keep it light.

Scheduled runs use CronDataIntervalTimetable, so each run covers ``[previous tick, this tick)``:
consecutive, non-overlapping windows (Airflow 3's default cron timetable gives start == end).
A YAML that fails validation still shows up, as a ``config_error_<name>`` DAG whose description
and only task carry the error, so one bad file never hides the others or fails silently.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param

from dataset_registry.names import VERSION_RULE
from dataset_registry.project_config import ProjectConfig, ProjectConfigError, load_projects

_PRESET_CRON = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *", "@quarterly": "0 0 1 */3 *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
}


def asset_for(project: str) -> Asset:
    return Asset(uri=f"dvc://registry/{project}")


def _timetable(schedule: str | None):
    if schedule is None:
        return None
    return CronDataIntervalTimetable(_PRESET_CRON.get(schedule, schedule), timezone="UTC")


def _start_date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _params() -> dict[str, Param]:
    return {
        "version": Param(
            None, type=["null", "string"], pattern=VERSION_RULE, title="Version",
            description="Version name for this publish (tag <project>/<version>). Empty: the project's "
                        "version template, by default v<window end as YYYYMMDDTHHMMSS>.",
        ),
        "start": Param(
            None, type=["null", "string"], format="date-time", title="Window start (inclusive)",
            description="ISO datetime, UTC if no offset. Overrides the data interval start.",
        ),
        "end": Param(
            None, type=["null", "string"], format="date-time", title="Window end (exclusive)",
            description="ISO datetime, UTC if no offset. Overrides the data interval end.",
        ),
    }


def _doc(cfg: ProjectConfig) -> str:
    return (
        f"### Version dataset `{cfg.project}`\n\n{cfg.description}\n\n"
        f"Queries MySQL (`{cfg.mysql_conn_id}`) for the window `[start, end)`, writes `{cfg.output}`, "
        f"versions it with DVC in the registry (`{cfg.registry_conn_id}`) under the immutable tag "
        f"`{cfg.project}/<version>` and emits the asset `dvc://registry/{cfg.project}`.\n\n"
        f"* schedule: `{cfg.schedule}` (each run covers the previous interval)\n"
        f"* version template: `{cfg.version_template}`\n"
        f"* config: `{cfg.source_file.name}`\n\n"
        "Trigger params `version`, `start`, `end` are optional; a manual run of an unscheduled project "
        "needs `start` and `end`. Re-running a run republishes nothing (same bytes, same tag)."
    )


def build_version_dag(cfg: ProjectConfig) -> DAG:
    from dataset_registry.operators.record_version import RecordDatasetVersionOperator
    from dataset_registry.operators.version_dataset import VersionDatasetOperator

    with DAG(
        dag_id=f"version_{cfg.project}",
        description=(cfg.description or f"Version the {cfg.project} dataset")[:200],
        schedule=_timetable(cfg.schedule),
        start_date=_start_date(cfg.start_date),
        catchup=cfg.catchup,
        max_active_runs=1,
        params=_params(),
        tags=["dataset-versioning", cfg.project, *cfg.tags],
        doc_md=_doc(cfg),
        default_args={
            "owner": cfg.owner,
            "retries": cfg.retries,
            "retry_delay": timedelta(seconds=cfg.retry_delay_seconds),
            "retry_exponential_backoff": True,
        },
    ) as dag:
        publish = VersionDatasetOperator(
            task_id="publish_version",
            project=cfg.project,
            output_file=cfg.output,
            query=cfg.query,
            query_file=str(cfg.query_path) if cfg.query_path else None,
            version="{{ params.version or '' }}",
            start="{{ params.start or '' }}",
            end="{{ params.end or '' }}",
            version_template=cfg.version_template,
            preprocess=cfg.preprocess,
            preprocess_path=str(cfg.source_file.parent.parent),
            query_timeout=cfg.query_timeout,
            mysql_conn_id=cfg.mysql_conn_id,
            registry_conn_id=cfg.registry_conn_id,
            outlets=[asset_for(cfg.project)],
        )
        record = RecordDatasetVersionOperator(
            task_id="record_version", publish_task_id="publish_version", model_db_conn_id=cfg.model_db_conn_id,
        )
        publish >> record
    return dag


def build_train_dag(cfg: ProjectConfig) -> DAG:
    from dataset_registry.operators.train_model import TrainModelOperator

    asset = asset_for(cfg.project)
    with DAG(
        dag_id=f"train_{cfg.project}",
        description=f"Train on a {cfg.project} dataset version and record the experiment"[:200],
        schedule=[asset],
        start_date=_start_date(cfg.start_date),
        catchup=False,
        max_active_runs=1,
        params={"version": Param(
            None, type=["null", "string"], pattern=VERSION_RULE, title="Version",
            description="Dataset version to train on. Empty: the version in the triggering asset event, "
                        "else the newest published version.",
        )},
        tags=["dataset-versioning", "training", cfg.project, *cfg.tags],
        doc_md=(
            f"### Train on `{cfg.project}` datasets\n\nScheduled on `{asset.uri}`: every published version "
            "triggers it. Pulls the version (param > triggering event > newest), verifies its md5, runs "
            f"`{cfg.train or 'dataset_registry.profile:profile'}` and writes one experiment to the model DB "
            f"(`{cfg.model_db_conn_id}`) with `training_dataset` = the tag. Re-running a run updates its row."
        ),
        default_args={"owner": cfg.owner, "retries": cfg.retries, "retry_delay": timedelta(seconds=cfg.retry_delay_seconds),
                      "retry_exponential_backoff": True},
    ) as dag:
        TrainModelOperator(
            task_id="train_model",
            project=cfg.project,
            output_file=cfg.output,
            asset_uri=asset.uri,
            version="{{ params.version or '' }}",
            train_callable=cfg.train,
            include_path=str(cfg.source_file.parent.parent),
            model_name=cfg.model_name,
            registry_conn_id=cfg.registry_conn_id,
            model_db_conn_id=cfg.model_db_conn_id,
        )
    return dag


def _raise_config_error(message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def build_error_dag(error: ProjectConfigError) -> DAG:
    from airflow.providers.standard.operators.python import PythonOperator

    stem = Path(str(error).split(":", 1)[0]).stem
    dag_id = "config_error_" + (re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:60] or "unnamed")
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
             tags=["dataset-versioning", "invalid-config"], description=str(error)[:200],
             doc_md=f"### Invalid project config\n\n```\n{error}\n```\n\nFix the YAML; this DAG then disappears.") as dag:
        PythonOperator(task_id="config_error", python_callable=_raise_config_error, op_args=[str(error)])
    return dag


def register_version_dags(namespace: dict, directory: Path | None = None) -> None:
    configs, errors = load_projects(directory)
    for cfg in configs:
        dag = build_version_dag(cfg)
        namespace[dag.dag_id] = dag
    for error in errors:
        dag = build_error_dag(error)
        namespace[dag.dag_id] = dag


def register_train_dags(namespace: dict, directory: Path | None = None) -> None:
    configs, _ = load_projects(directory)  # errors are reported once, by version_dags.py
    for cfg in configs:
        dag = build_train_dag(cfg)
        namespace[dag.dag_id] = dag
