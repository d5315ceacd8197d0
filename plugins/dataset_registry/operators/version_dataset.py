"""VersionDatasetOperator: one time window of raw MySQL rows -> CSV -> DVC -> immutable tag.

Export and publish run in one task on purpose: the CSV never has to cross workers, so the DAG runs
unchanged on Celery/Kubernetes. Heavy modules (MySQLdb, pandas, dvc) are imported in ``execute``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dataset_registry.names import VERSION_RULE, InvalidNameError, validate_output, validate_project, validate_version
from dataset_registry.project_config import DEFAULT_VERSION_TEMPLATE
from dataset_registry.window import TemplateError, WindowError, effective_window, render_window_template


class VersionDatasetOperator(BaseOperator):
    """Export the project's query for the effective window and publish it as ``<project>/<version>``.

    :param version: explicit version (trigger param), used exactly as given (never stripped: "v1\n"
        and "None" are refused with the version rule); empty -> ``version_template`` rendered with the
        effective window as ``data_interval_start``/``data_interval_end``.
    :param preprocess: ``module:function`` under the include folder (``preprocess_path``), loaded
        before anything runs: a load error, or an exception raised inside it, fails the task at once.

    Failure model: a refused query, a SQL error, a read-only violation, a broken preprocess or a
    version conflict fail without retry (AirflowFailException); connection loss and other transient
    server errors raise and are retried by Airflow.
    :param start, end: ISO datetimes overriding the data interval (trigger params).
    :param query: SQL template (Jinja, rendered with the effective window); or ``query_file``.
    :param publish_timeout: seconds the push may keep losing races to other publishers (default:
        the registry connection's ``publish_timeout``, 900).
    """

    template_fields: Sequence[str] = ("project", "output_file", "version", "start", "end")
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        project: str,
        output_file: str,
        query: str = "",
        query_file: str | None = None,
        version: str = "",
        start: str = "",
        end: str = "",
        version_template: str = DEFAULT_VERSION_TEMPLATE,
        preprocess: str | None = None,
        preprocess_path: str | None = None,
        query_timeout: int | None = None,
        publish_timeout: int | None = None,
        mysql_conn_id: str = "mysql_raw",
        registry_conn_id: str = "dvc_registry",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.project = project
        self.output_file = output_file
        self.query = query
        self.query_file = query_file
        self.version = version
        self.start = start
        self.end = end
        self.version_template = version_template
        self.preprocess = preprocess
        self.preprocess_path = preprocess_path
        self.query_timeout = query_timeout
        self.publish_timeout = publish_timeout
        self.mysql_conn_id = mysql_conn_id
        self.registry_conn_id = registry_conn_id

    @staticmethod
    def _render_with_window(text: str, context, start, end, what: str) -> str:
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

    def execute(self, context) -> dict[str, Any]:
        from dataset_registry.hooks.mysql_source_hook import MySqlSourceHook
        from dataset_registry.hooks.registry_hook import RegistryHook
        from dataset_registry.mysql_export import ExportError, export_query
        from dataset_registry.registry import VersionConflictError

        try:
            project = validate_project(self.project)
            output = validate_output(self.output_file)
            start, end = effective_window(
                self.start, self.end, context.get("data_interval_start"), context.get("data_interval_end")
            )
            version = "" if self.version is None else self.version  # never stripped: "v1\n" is not "v1"
            if version == "":
                version = self._render_with_window(self.version_template, context, start, end, "version_template")
            elif version == "None":
                raise InvalidNameError(
                    f"invalid version 'None': it must match {VERSION_RULE}, and 'None' is what an unset value "
                    "prints as; leave the version empty to use the project's version template"
                )
            validate_version(version)
        except (InvalidNameError, WindowError, TemplateError) as exc:
            raise AirflowFailException(str(exc)) from None
        preprocess = self._load_preprocess()

        if self.query_file:
            sql_template = Path(self.query_file).read_text(encoding="utf-8")
        else:
            sql_template = self.query
        try:
            sql = self._render_with_window(sql_template, context, start, end, "query")
        except TemplateError as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info("project %s, version %s, window [%s, %s)", project, version, start, end)

        try:
            conn_params = MySqlSourceHook(self.mysql_conn_id).connect_params()
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        client = RegistryHook(self.registry_conn_id).get_conn()
        staging = client.staging_file(project, output)
        try:
            try:
                result = export_query(conn_params, sql, staging, preprocess=preprocess, query_timeout=self.query_timeout)
            except ExportError as exc:
                if exc.retryable:
                    raise
                raise AirflowFailException(str(exc)) from None
            if result.rows == 0:
                raise AirflowSkipException(
                    f"no rows in window [{start}, {end}) for project {project}: no version published"
                )
            try:
                published = client.publish(project, output, version, staging, result.md5, result.rows,
                                           timeout=self.publish_timeout)
            except VersionConflictError as exc:
                raise AirflowFailException(str(exc)) from None
        finally:
            staging.unlink(missing_ok=True)

        event = {**published.as_dict(), "window_start": start.isoformat(), "window_end": end.isoformat(),
                 "output": output}
        for outlet in self.outlets or []:
            context["outlet_events"][outlet].extra = event
        self.log.info(
            "%s %s: %d rows, %d bytes, md5 %s, commit %s",
            "published" if published.created else "already published", published.tag,
            published.rows, published.bytes, published.md5, published.commit[:12],
        )
        return event
