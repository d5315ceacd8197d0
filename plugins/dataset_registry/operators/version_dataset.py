"""VersionDatasetOperator: one time window of raw MySQL rows -> CSV -> DVC -> immutable tag.

Export and publish run in one task on purpose: the CSV never has to cross workers, so the DAG runs
unchanged on Celery/Kubernetes. Heavy modules (MySQLdb, pandas, dvc) are imported in ``execute``.

The query is a template field (a ``.sql`` path is loaded from the DAG's ``template_searchpath``; the
UI shows it as SQL), but Airflow's renderer never sees it: a project YAML is untrusted input and
the task context holds ``conn`` and ``var``. It is kept as a ``SandboxedQuery`` and rendered by
``execute`` in a sandbox that sees only the effective window (``data_interval_start`` /
``data_interval_end``: the trigger params ``start``/``end`` when given, else the run's data
interval), ``params`` and the filters ``ds``/``ts``/...; the SQL that ran is written back to the
Rendered Template tab after the run. ``template_ext`` stays empty on purpose: Airflow would load
(and render with the full context) ANY field ending in ``.sql``, e.g. an output named ``x.sql``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dataset_registry.connection_ids import MYSQL_CONN_ID, REGISTRY_CONN_ID
from dataset_registry.names import VERSION_RULE, InvalidNameError, validate_output, validate_project, validate_version
from dataset_registry.operators.lazy_hooks import MYSQL_HOOK, REGISTRY_HOOK, inject_hooks, lazy_hook
from dataset_registry.operators.sandboxed_query import SandboxedQuery
from dataset_registry.project_config import DEFAULT_VERSION_TEMPLATE
from dataset_registry.window import TemplateError, WindowError, effective_window, render_window_template

if TYPE_CHECKING:
    from dataset_registry.hooks.mysql_source_hook import MySqlSourceHook
    from dataset_registry.hooks.registry_hook import DvcRegistryHook

SQL_EXTENSIONS = (".sql",)


def is_sql_path(text: str) -> bool:
    """``sql/shop.sql``: one line naming a .sql file (else the text is the SQL itself)."""
    text = text.strip()
    return text.endswith(SQL_EXTENSIONS) and "\n" not in text


def csv_header(path) -> list[str]:
    """The column names of a published CSV (its first record)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


class VersionDatasetOperator(BaseOperator):
    """Export the project's query for the effective window and publish it as ``<project>/<version>``.

    Failure model: a refused query, a SQL error, a read-only violation, a broken preprocess, a bad
    connection or a version conflict fail without retry (AirflowFailException); connection loss and
    other transient server errors raise and are retried by Airflow. No rows: skipped, nothing published.

    :param project: project name, the registry folder and the tag prefix. (templated)
    :param output_file: CSV file name inside the project's folder, e.g. ``train.csv``. (templated)
    :param query: the SQL, inline or a ``.sql`` path relative to the DAG's ``template_searchpath``;
        rendered with the effective window only (see the module docstring). (templated, SQL)
    :param version: explicit version, used exactly as given (never stripped: "v1\\n" and "None" are
        refused with the version rule); empty -> ``version_template``. (templated)
    :param start: ISO datetime overriding the data interval start. (templated)
    :param end: ISO datetime overriding the data interval end. (templated)
    :param version_template: Jinja template of the version name, rendered like the query.
    :param preprocess: ``module:function`` under ``preprocess_path`` (DataFrame chunk -> DataFrame
        chunk), loaded before anything runs: a load error, or an exception inside it, fails at once.
    :param preprocess_path: the include folder that ``preprocess`` must live in.
    :param preprocess_api: ``pandas`` (default: a DataFrame per chunk) or ``arrow`` (a
        ``pyarrow.RecordBatch`` per batch, returning a RecordBatch or Table; needs pyarrow).
    :param query_timeout: server-side statement timeout in seconds (None: the server's).
    :param publish_timeout: seconds the push may keep losing races to other publishers (None: the
        registry connection's ``publish_timeout``, 900).
    :param key: columns that identify a row (the ``unique`` check's default).
    :param checks: quality checks as in the project YAML's ``checks:`` (see ``dataset_registry.checks``),
        evaluated on what the export measured, before anything is published. A failed check in
        ``fail`` mode publishes nothing and fails without retry; in ``warn`` mode it is logged.
    :param profile: compute the column profile while exporting (default True); it goes into the
        Asset event (``columns``, ``profile``), the tag message and the model DB row.
    :param mysql_conn_id: the raw-data source connection (``mysql``); default ``mysql_raw``.
    :param registry_conn_id: the registry connection (``dvc_registry``); default ``dvc_registry``.
    :param mysql_hook: an already built MySqlSourceHook to use instead of ``mysql_conn_id``.
    :param registry_hook: an already built DvcRegistryHook to use instead of ``registry_conn_id``.
    """

    template_fields: Sequence[str] = ("project", "output_file", "version", "start", "end", "query")
    template_fields_renderers = {"query": "sql"}
    overwrite_rtif_after_execution = True  # the Rendered Template tab shows the SQL that ran
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        project: str,
        output_file: str,
        query: str,
        version: str = "",
        start: str = "",
        end: str = "",
        version_template: str = DEFAULT_VERSION_TEMPLATE,
        preprocess: str | None = None,
        preprocess_path: str | None = None,
        preprocess_api: str = "pandas",
        query_timeout: int | None = None,
        publish_timeout: int | None = None,
        key: list[str] | None = None,
        checks: dict | None = None,
        profile: bool = True,
        mysql_conn_id: str = MYSQL_CONN_ID,
        registry_conn_id: str = REGISTRY_CONN_ID,
        mysql_hook: MySqlSourceHook | None = None,
        registry_hook: DvcRegistryHook | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.project = project
        self.output_file = output_file
        self.query = query
        self.version = version
        self.start = start
        self.end = end
        self.version_template = version_template
        self.preprocess = preprocess
        self.preprocess_path = preprocess_path
        self.preprocess_api = preprocess_api
        self.query_timeout = query_timeout
        self.publish_timeout = publish_timeout
        self.key = list(key) if key else None
        self.checks = checks
        self.profile = profile
        self.mysql_conn_id = mysql_conn_id
        self.registry_conn_id = registry_conn_id
        inject_hooks(self, mysql_hook=mysql_hook, registry_hook=registry_hook)
        self._lineage: dict[str, Any] | None = None

    mysql_hook = lazy_hook(MYSQL_HOOK, "mysql_conn_id")
    registry_hook = lazy_hook(REGISTRY_HOOK, "registry_conn_id")

    def _convert_query(self, value):
        """Every assignment of ``query`` (also by Airflow when it unmaps a mapped task) is sandboxed."""
        return SandboxedQuery(value) if isinstance(value, str) else value

    def _load_sql_file(self, name: str) -> str:
        """A ``.sql`` query from the DAG's ``template_searchpath`` only (not the DAG folder, which
        Airflow's loader would search first), never leaving it (jinja refuses ``..``)."""
        from jinja2 import Environment, FileSystemLoader, TemplateNotFound

        searchpath = list(self.dag.template_searchpath or []) if self.has_dag() else []
        try:
            return FileSystemLoader(searchpath).get_source(Environment(), name.strip())[0]
        except TemplateNotFound:
            raise AirflowFailException(f"query file {name.strip()!r} was not found in the DAG's template_searchpath "
                                       f"{searchpath}: give a path relative to it") from None

    def resolve_template_files(self) -> None:
        """Load a ``.sql`` query when the DAG is parsed, so the UI shows the SQL; only the query."""
        text = str(self.query or "")
        if is_sql_path(text):
            try:
                self.query = self._load_sql_file(text)
            except AirflowFailException as exc:
                self.log.warning("%s", exc)  # execute() fails the task with it
        self.prepare_template()

    def _render_with_window(self, text: str, context, start, end, what: str) -> str:
        """Only the window and the trigger params: see ``window.render_window_template``."""
        params = context.get("params") or {}
        return render_window_template(text, start, end, dict(params), what=what).strip()

    def _load_preprocess(self):
        """The preprocess callable, or None; any load problem fails the task now (no retry)."""
        from dataset_registry.user_code import UserCodeError, load_user_callable

        if not self.preprocess:
            return None
        if not self.preprocess_path:
            raise AirflowFailException(f"preprocess {self.preprocess!r}: no include folder (preprocess_path) to load it from")
        try:
            return load_user_callable(self.preprocess, self.preprocess_path)
        except UserCodeError as exc:
            raise AirflowFailException(f"cannot load preprocess: {exc}") from None

    def _version(self, context, start, end) -> str:
        version = "" if self.version is None else self.version  # never stripped: "v1\n" is not "v1"
        if version == "":
            version = self._render_with_window(self.version_template, context, start, end, "version_template")
        elif version == "None":
            raise InvalidNameError(
                f"invalid version 'None': it must match {VERSION_RULE}, and 'None' is what an unset value "
                "prints as; leave the version empty to use the project's version template"
            )
        return validate_version(version)

    def _sql(self, context, start, end) -> str:
        text = str(self.query or "")
        if is_sql_path(text):
            text = self._load_sql_file(text)
        try:
            return self._render_with_window(text, context, start, end, "query")
        except TemplateError as exc:
            raise AirflowFailException(str(exc)) from None

    def _normalized_checks(self) -> dict | None:
        """The checks as ``checks.validate_checks`` normalizes them; a bad value fails the task now."""
        from dataset_registry.checks import validate_checks, validate_key

        key, key_problems = validate_key(self.key)
        checks, problems = validate_checks(self.checks, key)
        texts = [f"key: {p}" for p in key_problems] + [f"checks.{k}: {p}" if k else f"checks: {p}" for k, p in problems]
        if texts:
            raise AirflowFailException("invalid checks: " + "; ".join(texts))
        return checks

    def _run_checks(self, checks: dict, result, client, project: str, output: str, version: str) -> dict:
        """Evaluate the checks on the export; fail (nothing published) or warn. Returns the summary
        that goes into the Asset event."""
        from dataset_registry.checks import evaluate, summary

        previous = None
        if checks.get("max_rows_change") is not None:
            previous = client.previous_version(project, output, exclude=version)
        report = evaluate(checks, rows=result.rows, columns=result.csv_columns, profile=result.profile,
                          key_facts=result.key_facts, previous_rows=previous.rows if previous else None,
                          previous_version=previous.tag if previous else None)
        what = f"{project}/{version}"
        if report.errors or (report.failures and checks["mode"] == "fail"):
            raise AirflowFailException(summary(report, what) + "\nNothing was published (checks run before any "
                                       "upload, commit or tag)." + (" Checks with errors fail even in warn mode."
                                                              if report.errors and checks["mode"] == "warn" else ""))
        if report.failures:
            self.log.warning("%s\nmode: warn, so the version is published anyway", summary(report, what))
        else:
            self.log.info("checks passed for %s: %s", what, ", ".join(report.passed))
        return {"mode": checks["mode"], "passed": report.passed, "failed": report.failures}

    def execute(self, context) -> dict[str, Any]:
        from dataset_registry.mysql_export import ExportError, export_query
        from dataset_registry.registry import PublishDeadlineError, VersionConflictError, split_url_credentials

        try:
            project = validate_project(self.project)
            output = validate_output(self.output_file)
            start, end = effective_window(
                self.start, self.end, context.get("data_interval_start"), context.get("data_interval_end")
            )
            version = self._version(context, start, end)
        except (InvalidNameError, WindowError, TemplateError) as exc:
            raise AirflowFailException(f"{exc} (trigger params: version, start, end)"
                                       if isinstance(exc, WindowError) else str(exc)) from None
        preprocess = self._load_preprocess()
        checks = self._normalized_checks()
        sql = self._sql(context, start, end)
        self.query = sql  # what ran, for the Rendered Template tab
        self.log.info("project %s, version %s, window [%s, %s)", project, version, start, end)

        try:
            conn_params = self.mysql_hook.connect_params()
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        client = self.registry_hook.get_conn()
        staging = client.staging_file(project, output)
        client.sync_ahead()  # the registry's fetch overlaps the export (publish then does not fetch first)
        try:
            try:
                result = export_query(conn_params, sql, staging, preprocess=preprocess, query_timeout=self.query_timeout,
                                      preprocess_api=self.preprocess_api,
                                      profile=self.profile, unique_key=(checks or {}).get("unique"))
            except ExportError as exc:
                if exc.retryable:
                    raise
                raise AirflowFailException(str(exc)) from None
            if result.rows == 0:
                raise AirflowSkipException(
                    f"no rows in window [{start}, {end}) for project {project}: no version published"
                )
            columns = result.csv_columns or csv_header(staging)
            check_summary = self._run_checks(checks, result, client, project, output, version) if checks else None
            try:
                published = client.publish(project, output, version, staging, result.md5, result.rows,
                                           timeout=self.publish_timeout, window_start=start.isoformat(),
                                           window_end=end.isoformat(), columns=columns, profile=result.profile)
            except VersionConflictError as exc:
                raise AirflowFailException(f"{exc} (the trigger param 'version' publishes under another name)") from None
            except PublishDeadlineError as exc:  # retried: the proposal may land meanwhile
                raise PublishDeadlineError(f"{exc} (publish_timeout: the project YAML key, else the "
                                           f"{self.registry_conn_id!r} connection's extra)") from None
        finally:
            staging.unlink(missing_ok=True)
            client.wait_ahead()  # no git child outlives the task (the fetch never waits for the lock)

        query_types = dict(zip(result.columns, result.column_types))
        event = {**published.as_dict(), "window_start": start.isoformat(), "window_end": end.isoformat(),
                 "output": output, "columns": columns, "profile": result.profile}
        if check_summary is not None:
            event["checks"] = check_summary
        for outlet in self.outlets or []:
            context["outlet_events"][outlet].extra = event
        self._lineage = {
            "sql": sql,
            "source": {"host": conn_params.get("host") or "localhost", "port": int(conn_params.get("port") or 3306),
                       "database": conn_params.get("db")},
            "registry_url": split_url_credentials(self.registry_hook.settings.repo_url)[0],
            "event": {**event, "columns": columns, "column_types": [query_types.get(c) for c in columns]},
        }
        self.log.info(
            "%s %s: %d rows, %d bytes, md5 %s, commit %s",
            "published" if published.created else "already published", published.tag,
            published.rows, published.bytes, published.md5, published.commit[:12],
        )
        return event

    def get_openlineage_facets_on_complete(self, task_instance):
        """Inputs: the MySQL tables the SQL read; output: the dataset version (see ``lineage``)."""
        from dataset_registry.lineage import version_lineage

        if self._lineage is None:  # skipped (no rows) or failed before publishing: nothing was versioned
            from airflow.providers.openlineage.extractors import OperatorLineage

            return OperatorLineage()
        return version_lineage(**self._lineage)
