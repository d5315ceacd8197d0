"""One ``version_<project>`` DAG per project YAML. Imported at DAG parse time: keep it light.

Scheduled runs use CronDataIntervalTimetable, so each run covers ``[previous tick, this tick)``:
consecutive, non-overlapping windows (Airflow 3's default cron timetable gives start == end).
A YAML that fails validation still shows up, as a ``config_error_<name>`` DAG: its description says
how many problems, its docs and its only task's failure carry all of them, so one bad file never
hides the others or fails silently. Building is guarded per project too: whatever one YAML does,
these DAG files still import and every other project keeps its DAGs.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param

from dataset_registry.names import VERSION_PARAM_PATTERN
from dataset_registry.project_config import ProjectConfig, ProjectConfigError, load_projects, parse_start_date

log = logging.getLogger(__name__)

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


EXAMPLE_WINDOW = ("2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00")


def _example_version(template: str) -> str:
    """What the project's version template gives for ``EXAMPLE_WINDOW`` (fixed, so parsing is stable)."""
    from dataset_registry.window import SqlDateTime, TemplateError, render_window_template

    start, end = (SqlDateTime.of(datetime.fromisoformat(t)) for t in EXAMPLE_WINDOW)
    try:
        return render_window_template(template, start, end, {}, what="version_template").strip()
    except TemplateError:
        return "(the template needs params: see the project YAML)"


def _params(cfg: ProjectConfig) -> dict[str, Param]:
    example = _example_version(cfg.version_template)
    return {
        "version": Param(
            None, type=["null", "string"], pattern=VERSION_PARAM_PATTERN, title="Version",
            description=f"Version name for this publish (tag {cfg.project}/<version>). Empty: this project's "
                        f"version template {cfg.version_template} rendered with the window, e.g. {example} for the "
                        "window [2024-03-01, 2024-03-02).",
        ),
        "start": Param(
            None, type=["null", "string"], format="date-time", title="Window start (inclusive)",
            description="ISO datetime, UTC if no offset. Empty: the run's data interval start. These two "
                        "fields are the window the query reads; they win over the form's data interval "
                        "fields (use either, the query sees the effective window).",
        ),
        "end": Param(
            None, type=["null", "string"], format="date-time", title="Window end (exclusive)",
            description="ISO datetime, UTC if no offset. Empty: the run's data interval end (for a scheduled "
                        "run, the tick that started it).",
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
        description=cfg.description or f"Version the {cfg.project} dataset",
        schedule=_timetable(cfg.schedule),
        start_date=parse_start_date(cfg.start_date),
        catchup=cfg.catchup,
        max_active_runs=1,
        auto_register=False,  # registered by name below, only once fully built and validated
        template_searchpath=[str(cfg.include_root)],  # a .sql query is resolved from here
        params=_params(cfg),
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
            query=cfg.query_template_ref,
            version="{{ params.version or '' }}",
            start="{{ params.start or '' }}",
            end="{{ params.end or '' }}",
            version_template=cfg.version_template,
            preprocess=cfg.preprocess,
            preprocess_path=str(cfg.include_root),
            preprocess_api=cfg.preprocess_api,
            query_timeout=cfg.query_timeout,
            publish_timeout=cfg.publish_timeout,
            key=cfg.key,
            checks=cfg.checks,
            mysql_conn_id=cfg.mysql_conn_id,
            registry_conn_id=cfg.registry_conn_id,
            outlets=[asset_for(cfg.project)],
        )
        RecordDatasetVersionOperator(
            task_id="record_version", published=publish.output, model_db_conn_id=cfg.model_db_conn_id,
        )
    return dag


def build_train_dag(cfg: ProjectConfig) -> DAG:
    from dataset_registry.operators.train_model import TrainModelOperator

    asset = asset_for(cfg.project)
    with DAG(
        dag_id=f"train_{cfg.project}",
        description=f"Train on a {cfg.project} dataset version and record the experiment",
        schedule=[asset],
        start_date=parse_start_date(cfg.start_date),
        catchup=False,
        max_active_runs=1,
        auto_register=False,
        params={"version": Param(
            None, type=["null", "string"], pattern=VERSION_PARAM_PATTERN, title="Version",
            description="Dataset version to train on. Empty: the version in the triggering asset event, "
                        "else the newest published version.",
        )},
        tags=["dataset-versioning", "training", cfg.project, *cfg.tags],
        doc_md=(
            f"### Train on `{cfg.project}` datasets\n\nScheduled on `{asset.uri}`: every published version "
            "triggers it. Pulls the version (param > triggering event > newest), verifies its md5, runs "
            f"`{cfg.train or 'dataset_registry.profile:profile'}`"
            + (" (a notebook, run with papermill)" if cfg.train_is_notebook else "")
            + f" and writes one experiment to the model DB (`{cfg.model_db_conn_id}`) with `training_dataset` = "
            "the tag. Re-running a run updates its row."
            + (f" Also logs one MLflow run per Airflow run (connection `{cfg.mlflow_conn_id}`, experiment "
               f"`{cfg.mlflow_experiment or cfg.project}`)." if cfg.mlflow_conn_id else "")
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
            include_path=str(cfg.include_root),
            model_name=cfg.model_name,
            registry_conn_id=cfg.registry_conn_id,
            model_db_conn_id=cfg.model_db_conn_id,
            mlflow_conn_id=cfg.mlflow_conn_id,
            mlflow_experiment=cfg.mlflow_experiment,
            notebook_cell_timeout=cfg.notebook_cell_timeout,
        )
    return dag


def _raise_config_error(message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _error_dag(dag_id: str, error: ProjectConfigError, title: str) -> DAG:
    from airflow.providers.standard.operators.python import PythonOperator

    text = str(error)
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), auto_register=False,
             tags=["dataset-versioning", "invalid-config"], description=error.summary(),
             doc_md=f"### {title}\n\n{fence}\n{text}\n{fence}\n\nFix the YAML; this DAG then disappears.") as dag:
        PythonOperator(task_id="config_error", python_callable=_raise_config_error, op_args=[text])
    return dag


def _error_dag_ids(errors: list[ProjectConfigError]) -> list[str]:
    """``config_error_<file stem>``; where stems collide (a.yaml + a.yml) the suffix is added too."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60] or "unnamed"

    paths = [e.source_file or Path("projects") for e in errors]
    ids = [f"config_error_{clean(p.stem)}" for p in paths]
    ids = [f"{i}_{clean(p.suffix.lstrip('.'))}" if ids.count(i) > 1 else i for i, p in zip(ids, paths)]
    seen: dict[str, int] = {}
    unique = []
    for dag_id in ids:  # still equal after truncation: number them
        seen[dag_id] = seen.get(dag_id, 0) + 1
        unique.append(dag_id if seen[dag_id] == 1 else f"{dag_id}_{seen[dag_id]}")
    return unique


def build_error_dag(error: ProjectConfigError, dag_id: str | None = None) -> DAG:
    return _error_dag(dag_id or _error_dag_ids([error])[0], error, "Invalid project config")


def _build_failed(cfg: ProjectConfig, dag_id: str, exc: Exception) -> ProjectConfigError:
    log.exception("cannot build DAG %s from %s", dag_id, cfg.source_file)
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
    return ProjectConfigError(f"cannot build DAG {dag_id} from this file: {text}", cfg.source_file)


def register_version_dags(namespace: dict, directory: Path | None = None) -> None:
    """``version_<project>`` per valid YAML, ``config_error_<name>`` per invalid one. Never raises."""
    try:
        configs, errors = load_projects(directory)
    except Exception as exc:  # noqa: BLE001 - load_projects guards each file; this is the last line
        log.exception("cannot load the projects")
        configs, errors = [], [ProjectConfigError(f"cannot load the projects: {type(exc).__name__}: {exc}")]
    for cfg in configs:
        try:
            dag = build_version_dag(cfg)
            dag.validate()  # what the DagBag checks next; a failure there would break the whole file
        except Exception as exc:  # noqa: BLE001 - one project's DAG must not break the file
            errors.append(_build_failed(cfg, f"version_{cfg.project}", exc))
            continue
        namespace[dag.dag_id] = dag
    for error, dag_id in zip(errors, _error_dag_ids(errors)):
        try:
            namespace[dag_id] = build_error_dag(error, dag_id)
        except Exception:  # noqa: BLE001
            log.exception("cannot build the config error DAG %s: %s", dag_id, error)


def register_train_dags(namespace: dict, directory: Path | None = None) -> None:
    """``train_<project>`` per valid YAML (config errors are reported once, by version_dags.py). A
    project whose train DAG cannot be built gets a ``train_<project>`` DAG that fails with the reason.
    Never raises."""
    try:
        configs, _ = load_projects(directory)
    except Exception:  # noqa: BLE001
        log.exception("cannot load the projects")
        return
    for cfg in configs:
        dag_id = f"train_{cfg.project}"
        try:
            dag = build_train_dag(cfg)
            dag.validate()
            namespace[dag_id] = dag
        except Exception as exc:  # noqa: BLE001 - one project's DAG must not break the file
            try:
                namespace[dag_id] = _error_dag(dag_id, _build_failed(cfg, dag_id, exc), f"Cannot build {dag_id}")
            except Exception:  # noqa: BLE001
                log.exception("cannot build the error DAG %s", dag_id)
