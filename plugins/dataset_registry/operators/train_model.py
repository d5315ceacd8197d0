"""TrainModelOperator: resolve a version, pull it, train, and write one experiment row.

Version: the ``version`` param (used exactly as given: "v1\n" and "None" are refused), else the
triggering Asset event's version, else the newest tag. Pull and training share the task so the data
never crosses workers. The experiment row is keyed on (dag_id, run_id): a rerun of the same Airflow
run updates it.

Failure model: the training callable is loaded first, before any data is pulled or any row is
written, so a callable that cannot be loaded fails the task at once and leaves no ``running`` row.
A training callable that raises (or returns something other than a dict) is the user's code failing
deterministically: the row becomes ``status='failed'`` with the error in ``evaluations.error`` and
the task fails without retry. Model DB and registry outages raise normally and are retried.

Notebooks: ``train_callable`` may be a ``.ipynb`` path under the include folder; it is executed with
papermill (``dataset_registry.notebook_runner``) and reports its metrics in ``metrics.json``. A
failing cell, a cell timeout, a dead kernel or bad metrics are the notebook failing: same as a
callable that raises (row failed, no retry); the executed notebook with the error is kept.

MLflow (``mlflow_conn_id``): the run is opened (found again, or created) before training, so an
unreachable server fails the task before any training time is spent; results, artifacts and the
final status are logged after. MLflow outages raise a normal exception (retried), and the retry
re-opens the same MLflow run; a refusal that a retry cannot fix (credentials, deleted experiment)
fails at once. Either way the row is ``failed`` with the MLflow error until an attempt succeeds.

Disk: the pulled data file lives in ``$DATASET_DATA_DIR/<dag>/<run>/<output>`` only while the task
runs; it is deleted when the task ends (success or failure). ``artifacts/`` next to it is kept.
Data files of runs that were killed (no ``finally`` ran) are reaped after a day by later runs.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.connection_ids import MODEL_DB_CONN_ID, REGISTRY_CONN_ID
from dataset_registry.mlflow_tracking import MlflowTrackingError, dataset_source
from dataset_registry.notebook_runner import DEFAULT_CELL_TIMEOUT
from dataset_registry.operators.lazy_hooks import (
    MLFLOW_HOOK, MODEL_DB_HOOK, REGISTRY_HOOK, inject_hooks, lazy_hook,
)
from dataset_registry.names import VERSION_RULE, InvalidNameError, validate_output
from dataset_registry.operators.pull_dataset import pull_version, run_scoped_dir
from dataset_registry.operators.record_version import version_record
from dataset_registry.paths import worker_path

if TYPE_CHECKING:
    from dataset_registry.hooks.mlflow_hook import MlflowHook
    from dataset_registry.hooks.model_db_hook import ModelDbHook
    from dataset_registry.hooks.registry_hook import DvcRegistryHook

DEFAULT_TRAIN = "dataset_registry.profile:profile"
STALE_RUN_DATA_SECONDS = 86400


def reap_stale_run_data(root: Path) -> int:
    """Delete data files (``<root>/<dag>/<run>/<file>``, not ``artifacts/``) older than a day: a
    killed task never reached its clean-up. Returns how many were removed."""
    cutoff = time.time() - STALE_RUN_DATA_SECONDS
    removed = 0
    for path in Path(root).glob("*/*/*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass  # another task reaped it first
    return removed


def data_root() -> Path:
    return worker_path("DATASET_DATA_DIR", "dataset-runs")


class TrainModelOperator(BaseOperator):
    """Pull a version of ``project`` (param > triggering Asset event > newest), train, record the experiment.

    :param project: project name. (templated)
    :param output_file: the CSV file name of the project. (templated)
    :param asset_uri: the project's Asset URI; the triggering event must be for it.
    :param version: version to train on; empty: the triggering event's, else the newest. (templated)
    :param train_callable: ``module:function`` under ``include_path``, or a notebook path relative to
        it (``training/x.ipynb``, run with papermill); None: the built-in profile.
    :param include_path: the include folder that ``train_callable`` must live in.
    :param model_name: model name in the model DB (default ``<project>_model``).
    :param registry_conn_id: the registry connection; default ``dvc_registry``.
    :param model_db_conn_id: the model DB connection; default ``model_db``.
    :param mlflow_conn_id: an MLflow tracking connection (host = tracking URI); None: no MLflow.
    :param mlflow_experiment: the MLflow experiment name; default the project name.
    :param notebook_cell_timeout: seconds each notebook cell may run (notebooks only).
    :param registry_hook: an already built DvcRegistryHook to use instead of ``registry_conn_id``.
    :param model_db_hook: an already built ModelDbHook to use instead of ``model_db_conn_id``.
    :param mlflow_hook: an already built MlflowHook to use instead of ``mlflow_conn_id`` (turns tracking on).
    """

    template_fields: Sequence[str] = ("project", "output_file", "version")
    ui_color = "#fdebd0"

    def __init__(self, *, project: str, output_file: str, asset_uri: str, version: str = "",
                 train_callable: str | None = None, include_path: str | None = None, model_name: str | None = None,
                 registry_conn_id: str = REGISTRY_CONN_ID, model_db_conn_id: str = MODEL_DB_CONN_ID,
                 mlflow_conn_id: str | None = None, mlflow_experiment: str | None = None,
                 notebook_cell_timeout: int = DEFAULT_CELL_TIMEOUT,
                 registry_hook: DvcRegistryHook | None = None, model_db_hook: ModelDbHook | None = None,
                 mlflow_hook: MlflowHook | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.project = project
        self.output_file = output_file
        self.asset_uri = asset_uri
        self.version = version
        self.user_train_callable = train_callable
        self.train_callable = train_callable or DEFAULT_TRAIN
        self.include_path = include_path
        self.model_name = model_name
        self.registry_conn_id = registry_conn_id
        self.model_db_conn_id = model_db_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.mlflow_experiment = mlflow_experiment
        self.notebook_cell_timeout = notebook_cell_timeout
        self.tracking = mlflow_conn_id is not None or mlflow_hook is not None
        inject_hooks(self, registry_hook=registry_hook, model_db_hook=model_db_hook, mlflow_hook=mlflow_hook)
        self._lineage: dict[str, Any] | None = None

    registry_hook = lazy_hook(REGISTRY_HOOK, "registry_conn_id")
    model_db_hook = lazy_hook(MODEL_DB_HOOK, "model_db_conn_id")
    mlflow_hook = lazy_hook(MLFLOW_HOOK, "mlflow_conn_id")

    @property
    def is_notebook(self) -> bool:
        from dataset_registry.user_code import looks_like_path

        return bool(self.user_train_callable) and looks_like_path(self.user_train_callable)

    @property
    def train_label(self) -> str:
        return f"train {'notebook' if self.is_notebook else 'callable'} {self.train_callable}"

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

    def _load_train(self):
        """The training callable; any problem fails the task now (no retry, nothing written yet)."""
        if not self.user_train_callable:  # the built-in default: package code, not project code
            from dataset_registry.profile import profile

            return profile
        from dataset_registry.user_code import UserCodeError, load_user_callable

        if not self.include_path:
            raise AirflowFailException(
                f"train callable {self.user_train_callable!r}: no include folder (include_path) to load it from")
        if self.is_notebook:
            return self._load_notebook()
        try:
            return load_user_callable(self.user_train_callable, self.include_path)
        except UserCodeError as exc:
            raise AirflowFailException(f"cannot load the train callable: {exc}") from None

    def _load_notebook(self):
        """The notebook as a train callable; a bad path or a worker without papermill fails now."""
        from dataset_registry.notebook_runner import NotebookSetupError, check_runtime, run_notebook
        from dataset_registry.user_code import UserCodeError, resolve_notebook_file

        try:
            path = resolve_notebook_file(self.user_train_callable, self.include_path)
            check_runtime()
        except (UserCodeError, NotebookSetupError) as exc:
            raise AirflowFailException(f"cannot load the train notebook: {exc}") from None
        return functools.partial(run_notebook, path, cell_timeout=self.notebook_cell_timeout)

    def _tracker(self):
        """The MLflow tracker (no network yet), or None; a connection that cannot work fails now."""
        if not self.tracking:
            return None
        try:
            return self.mlflow_hook.get_conn()
        except MlflowTrackingError as exc:
            raise AirflowFailException(str(exc)) from None

    def _mlflow(self, db, experiment_id: int, step):
        """Run an MLflow step; on failure the row says why, and the task is retried (an outage) or not."""
        try:
            return step()
        except MlflowTrackingError as exc:
            db.update_experiment(experiment_id, status="failed", evaluations={"error": f"MLflow: {exc}"})
            if exc.retryable:
                self.log.error("MLflow is unavailable (retryable: the task is retried while it has retries "
                               "left): %s", exc)
                raise exc from None
            raise AirflowFailException(str(exc)) from None

    def _open_mlflow_run(self, tracker, db, experiment_id: int, pulled: dict, dag_id: str, run_id: str,
                         context) -> str:
        known = db.get_experiment(experiment_id).get("mlflow_run_id")
        ti = context.get("ti")
        tags = {"dataset.tag": pulled["tag"], "dataset.md5": pulled["md5"], "dataset.project": self.project,
                "dataset.version": pulled["version"], "dataset.commit": pulled["commit"],
                "model_db.experiment_id": str(experiment_id), "model_name": self._model_name,
                "train": self.train_callable, "mlflow.source.type": "JOB", "mlflow.source.name": f"airflow:{dag_id}"}
        if ti is not None and getattr(ti, "try_number", None) is not None:
            tags["airflow.try_number"] = str(ti.try_number)
        mlflow_run = tracker.open_run(experiment=self.mlflow_experiment or self.project, dag_id=dag_id,
                                      run_id=run_id, run_name=run_id, tags=tags, known_run_id=known)
        db.update_experiment(experiment_id, mlflow_run_id=mlflow_run)
        tracker.log_dataset(mlflow_run, name=pulled["tag"], md5=pulled["md5"],
                            source=dataset_source(self._lineage["registry_url"], pulled["tag"],
                                                  f"{self.project}/{self.output_file}"),
                            profile={"rows": pulled["rows"], "bytes": pulled["bytes"], "commit": pulled["commit"]})
        self.log.info("MLflow run %s (%s, experiment %r)", mlflow_run, tracker.where,
                      self.mlflow_experiment or self.project)
        return mlflow_run

    @property
    def _model_name(self) -> str:
        return self.model_name or f"{self.project}_model"

    def _requested_version(self) -> str | None:
        version = "" if self.version is None else self.version  # never stripped: "v1\n" is not "v1"
        if version == "None":
            raise AirflowFailException(
                f"invalid version 'None': it must match {VERSION_RULE}, and 'None' is what an unset value "
                "prints as; leave the version empty to train on the event's or the newest version"
            )
        return version or None

    def execute(self, context) -> dict:
        try:
            output = validate_output(self.output_file)
        except InvalidNameError as exc:
            raise AirflowFailException(str(exc)) from None
        version = self._requested_version()
        train = self._load_train()
        tracker = self._tracker()
        source = "param"
        if version is None:
            version = self._version_from_events(context)
            source = "asset event" if version else "newest tag"
        dag_id, run_id = context["dag"].dag_id, context["run_id"]
        if reaped := reap_stale_run_data(data_root()):
            self.log.info("removed %d data file(s) left by killed train runs older than a day", reaped)
        work = run_scoped_dir(data_root(), dag_id, run_id)
        data_file = work / output
        try:
            return self._pull_and_train(context, train, tracker, version, source, work, dag_id, run_id)
        finally:
            data_file.unlink(missing_ok=True)  # a full copy per run would pile up; artifacts/ stays
            data_file.with_name(data_file.name + ".partial").unlink(missing_ok=True)

    def _pull_and_train(self, context, train, tracker, version, source, work: Path, dag_id: str, run_id: str) -> dict:
        from dataset_registry.registry import split_url_credentials

        pulled = pull_version(self.registry_hook, self.project, self.output_file, version, work)
        self._lineage = {"registry_url": split_url_credentials(self.registry_hook.settings.repo_url)[0],
                         "pulled": {k: v for k, v in pulled.items() if k not in ("path", "downloaded", "profile")}
                                   | {"output": self.output_file}}
        self.log.info("training on %s (from %s), md5 %s, %s", pulled["tag"], source, pulled["md5"],
                      "downloaded" if pulled["downloaded"] else "from the local DVC cache")

        db = self.model_db_hook.get_conn()
        db.record_dataset_version(**version_record(pulled))
        project_id = db.get_or_create_project(self.project)
        model_id = db.get_or_create_model(project_id, self._model_name)
        experiment_id = db.upsert_experiment(
            model_id=model_id, model_version_id=run_id, training_dataset=pulled["tag"], dataset_md5=pulled["md5"],
            parameters={"train_notebook" if self.is_notebook else "train_callable": self.train_callable},
            airflow_dag_id=dag_id, airflow_run_id=run_id, status="running",
        )
        mlflow_run = None
        if tracker is not None:
            mlflow_run = self._mlflow(db, experiment_id, lambda: self._open_mlflow_run(
                tracker, db, experiment_id, pulled, dag_id, run_id, context))
        artifacts = work / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        try:
            result = train(pulled["path"], project=self.project, version=pulled["version"], tag=pulled["tag"],
                           md5=pulled["md5"], artifacts_dir=str(artifacts)) or {}
            if not isinstance(result, dict):
                raise TypeError(f"{self.train_callable} returned {type(result).__name__}, expected a dict")
            for key in ("parameters", "evaluations", "artifact_file_paths"):
                if not isinstance(result.get(key) or {}, dict):
                    raise TypeError(f"{self.train_callable} returned {key!r} as {type(result[key]).__name__}, "
                                    "expected a dict")
        except Exception as exc:  # noqa: BLE001 - user code: record it, then fail without retry
            error = f"{type(exc).__name__}: {exc}"
            kept = getattr(exc, "artifact_file_paths", None) or {}
            row = db.update_experiment(experiment_id, status="failed", evaluations={"error": error},
                                       artifact_file_paths=kept if isinstance(kept, dict) else {})
            self.log.exception("%s failed on %s", self.train_label, pulled["tag"])
            if mlflow_run is not None:
                self._mlflow_failed(tracker, mlflow_run, row, artifacts, error)
            raise AirflowFailException(
                f"{self.train_label} failed on {pulled['tag']}: {error} (experiment {experiment_id} marked failed)"
            ) from None
        row = db.update_experiment(
            experiment_id, parameters=result.get("parameters") or {}, evaluations=result.get("evaluations") or {},
            artifact_file_paths=result.get("artifact_file_paths") or {},
        )
        if mlflow_run is not None:
            def log_results():
                logged = tracker.log_results(mlflow_run, parameters=row["parameters"] or {},
                                             evaluations=row["evaluations"] or {}, artifacts_dir=artifacts)
                if logged["param_conflicts"]:
                    self.log.warning("MLflow parameters are immutable: %s changed since an earlier attempt of this "
                                     "run; the new values are tags param_rerun.<key>", logged["param_conflicts"])
                tracker.close_run(mlflow_run, "FINISHED")

            self._mlflow(db, experiment_id, log_results)
        row = db.update_experiment(experiment_id, status="succeeded")
        summary = {"experiment_id": experiment_id, "training_dataset": pulled["tag"], "md5": pulled["md5"],
                   "evaluations": row["evaluations"], "version_source": source, "mlflow_run_id": mlflow_run}
        self.log.info("experiment %s: %s", experiment_id, summary)
        return summary

    def _mlflow_failed(self, tracker, mlflow_run: str, row: dict, artifacts: Path, error: str) -> None:
        """Best effort: the MLflow run shows the failure and keeps what the code left (an executed notebook)."""
        try:
            tracker.log_results(mlflow_run, parameters=row.get("parameters") or {}, evaluations={},
                                artifacts_dir=artifacts, tags={"error": error})
            tracker.close_run(mlflow_run, "FAILED")
        except Exception as exc:  # noqa: BLE001 - never hide the training failure behind an MLflow one
            self.log.warning("could not mark MLflow run %s FAILED: %s", mlflow_run, exc)

    def get_openlineage_facets_on_complete(self, task_instance):
        """Input: the dataset version trained on (see ``lineage``)."""
        from dataset_registry.lineage import train_lineage

        if self._lineage is None:  # failed before anything was pulled
            from airflow.providers.openlineage.extractors import OperatorLineage

            return OperatorLineage()
        return train_lineage(**self._lineage)
