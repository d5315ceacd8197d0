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

Disk: the pulled data file lives in ``$DATASET_DATA_DIR/<dag>/<run>/<output>`` only while the task
runs; it is deleted when the task ends (success or failure). ``artifacts/`` next to it is kept.
Data files of runs that were killed (no ``finally`` ran) are reaped after a day by later runs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.connection_ids import MODEL_DB_CONN_ID, REGISTRY_CONN_ID
from dataset_registry.operators.lazy_hooks import MODEL_DB_HOOK, REGISTRY_HOOK, inject_hooks, lazy_hook
from dataset_registry.names import VERSION_RULE, InvalidNameError, validate_output
from dataset_registry.operators.pull_dataset import pull_version, run_scoped_dir
from dataset_registry.operators.record_version import version_record
from dataset_registry.paths import worker_path

if TYPE_CHECKING:
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
    :param train_callable: ``module:function`` under ``include_path``; None: the built-in profile.
    :param include_path: the include folder that ``train_callable`` must live in.
    :param model_name: model name in the model DB (default ``<project>_model``).
    :param registry_conn_id: the registry connection; default ``dvc_registry``.
    :param model_db_conn_id: the model DB connection; default ``model_db``.
    :param registry_hook: an already built DvcRegistryHook to use instead of ``registry_conn_id``.
    :param model_db_hook: an already built ModelDbHook to use instead of ``model_db_conn_id``.
    """

    template_fields: Sequence[str] = ("project", "output_file", "version")
    ui_color = "#fdebd0"

    def __init__(self, *, project: str, output_file: str, asset_uri: str, version: str = "",
                 train_callable: str | None = None, include_path: str | None = None, model_name: str | None = None,
                 registry_conn_id: str = REGISTRY_CONN_ID, model_db_conn_id: str = MODEL_DB_CONN_ID,
                 registry_hook: DvcRegistryHook | None = None, model_db_hook: ModelDbHook | None = None,
                 **kwargs: Any):
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
        inject_hooks(self, registry_hook=registry_hook, model_db_hook=model_db_hook)
        self._lineage: dict[str, Any] | None = None

    registry_hook = lazy_hook(REGISTRY_HOOK, "registry_conn_id")
    model_db_hook = lazy_hook(MODEL_DB_HOOK, "model_db_conn_id")

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
        try:
            return load_user_callable(self.user_train_callable, self.include_path)
        except UserCodeError as exc:
            raise AirflowFailException(f"cannot load the train callable: {exc}") from None

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
            return self._pull_and_train(context, train, version, source, work, dag_id, run_id)
        finally:
            data_file.unlink(missing_ok=True)  # a full copy per run would pile up; artifacts/ stays
            data_file.with_name(data_file.name + ".partial").unlink(missing_ok=True)

    def _pull_and_train(self, context, train, version, source, work: Path, dag_id: str, run_id: str) -> dict:
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
        model_id = db.get_or_create_model(project_id, self.model_name or f"{self.project}_model")
        experiment_id = db.upsert_experiment(
            model_id=model_id, model_version_id=run_id, training_dataset=pulled["tag"], dataset_md5=pulled["md5"],
            parameters={"train_callable": self.train_callable}, airflow_dag_id=dag_id, airflow_run_id=run_id,
            status="running",
        )
        artifacts = work / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        try:
            result = train(pulled["path"], project=self.project, version=pulled["version"], tag=pulled["tag"],
                           md5=pulled["md5"], artifacts_dir=str(artifacts)) or {}
            if not isinstance(result, dict):
                raise TypeError(f"{self.train_callable} returned {type(result).__name__}, expected a dict")
        except Exception as exc:  # noqa: BLE001 - user code: record it, then fail without retry
            error = f"{type(exc).__name__}: {exc}"
            db.update_experiment(experiment_id, status="failed", evaluations={"error": error})
            self.log.exception("train callable %s failed on %s", self.train_callable, pulled["tag"])
            raise AirflowFailException(
                f"train callable {self.train_callable} failed on {pulled['tag']}: {error} "
                f"(experiment {experiment_id} marked failed)"
            ) from None
        row = db.update_experiment(
            experiment_id, status="succeeded",
            parameters=result.get("parameters") or {}, evaluations=result.get("evaluations") or {},
            artifact_file_paths=result.get("artifact_file_paths") or {},
        )
        summary = {"experiment_id": experiment_id, "training_dataset": pulled["tag"], "md5": pulled["md5"],
                   "evaluations": row["evaluations"], "version_source": source}
        self.log.info("experiment %s: %s", experiment_id, summary)
        return summary

    def get_openlineage_facets_on_complete(self, task_instance):
        """Input: the dataset version trained on (see ``lineage``)."""
        from dataset_registry.lineage import train_lineage

        if self._lineage is None:  # failed before anything was pulled
            from airflow.providers.openlineage.extractors import OperatorLineage

            return OperatorLineage()
        return train_lineage(**self._lineage)
