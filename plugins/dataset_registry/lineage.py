"""OpenLineage metadata for the two operators: which MySQL tables a version was cut from, and which
dataset version a model was trained on.

``VersionDatasetOperator`` and ``TrainModelOperator`` call ``version_lineage`` / ``train_lineage`` from
``get_openlineage_facets_on_complete``. This module imports nothing from OpenLineage at import time:
the openlineage provider is optional, and without it (or without a transport) these functions are
simply never called. Nothing here touches a connection or the network: the inputs come from parsing
the SQL that ran, the output from the published version's metadata.

Naming (stable across runs and workers; no credential ever appears in a name):

* **MySQL inputs** follow the OpenLineage naming spec for MySQL: namespace ``mysql://<host>:<port>``
  (host lowercased, IPv6 in brackets, port 3306 when unknown), name ``<database>.<table>``. Tables
  are found by the openlineage provider's SQL parser (``SQLParser``, dialect ``mysql``): joins,
  subqueries, CTEs (a CTE name is not a table), backticks removed. A table written without a
  database takes the source connection's database (``source["database"]``); names keep the case
  they are written with (MySQL table names are case-sensitive on Linux). SQL that cannot be parsed
  gives no inputs, a warning in the task log and an ``extractionError`` run facet; the output is
  still emitted. The SQL itself is sent as the standard ``sql`` job facet.
* **The dataset version** (output of ``version_<project>``, input of ``train_<project>``): namespace
  ``dvc://<registry>``, name ``<project>``. ``<registry>`` identifies the registry repository, not
  the way it is reached:

  - a URL (``ssh://``, ``https://``, ``http://``, ``git://``) -> ``host[:port]/path``: scheme,
    user, password/token, query and fragment dropped; host lowercased; the scheme's default port
    (ssh 22, https 443, http 80, git 9418) dropped; path percent-decoded, normalized (``//``,
    ``..``, trailing ``/``) and re-encoded. So ``ssh://git@host:22/srv/registry.git``,
    ``ssh://host/srv/registry.git`` and ``git@host:srv/registry.git`` are all
    ``dvc://host/srv/registry.git``;
  - scp-like ``[user@]host:path`` -> ``host/path`` (a relative path gets a leading ``/``: on git
    hosting services ``git@host:org/repo.git`` is ``https://host/org/repo.git``);
  - ``file:///abs/path`` or a local path -> ``localhost/abs/path`` (made absolute, normalized,
    symlinks not resolved).

  The ``.git`` suffix is kept as written.

Facets of the dataset version:

* ``schema`` (standard): the CSV's columns in order, typed with their MySQL type names;
* ``version`` (standard ``DatasetVersionDatasetFacet``): ``datasetVersion`` is the **version**
  (``v20240502T000000``), not the tag: the dataset (namespace + name) already names the project,
  and the version is what users pass as the ``version`` param. The tag is in the custom facet;
* ``dvcDatasetVersion`` (custom, ``DvcDatasetVersionDatasetFacet``): version, tag, md5, rows,
  bytes, commit, window_start, window_end, output: the same keys and values as the Asset event
  extra (snake_case on purpose, so they can be joined with it, the model DB and the registry API);
  its JSON Schema is ``DVC_FACET_JSON_SCHEMA`` below;
* ``outputStatistics`` / ``inputStatistics`` (standard): rowCount, size (bytes), fileCount 1.
"""
from __future__ import annotations

import functools
import logging
import os
import posixpath
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

log = logging.getLogger(__name__)

MYSQL_DEFAULT_PORT = 3306
DVC_FACET_KEY = "dvcDatasetVersion"
# Where the custom facet's JSON Schema (DVC_FACET_JSON_SCHEMA) is to be published; OpenLineage only
# requires a URI here. The ".invalid" host says plainly that nothing is served there yet.
DVC_FACET_SCHEMA_URL = (
    "https://dataset-registry.invalid/spec/facets/1-0-0/DvcDatasetVersionDatasetFacet.json"
    "#/$defs/DvcDatasetVersionDatasetFacet"
)
DVC_FACET_FIELDS = ("version", "tag", "md5", "rows", "bytes", "commit", "window_start", "window_end", "output")
DVC_FACET_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": DVC_FACET_SCHEMA_URL.split("#")[0],
    "$defs": {
        "DvcDatasetVersionDatasetFacet": {
            "allOf": [
                {"$ref": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/DatasetFacet"},
                {
                    "type": "object",
                    "description": "One immutable version of a dataset in the DVC registry (git tag <project>/<version>).",
                    "properties": {
                        "version": {"type": "string", "description": "version name"},
                        "tag": {"type": "string", "description": "git tag <project>/<version> in the registry"},
                        "md5": {"type": "string", "description": "md5 of the CSV (DVC's hash)"},
                        "rows": {"type": "integer", "description": "data rows (header excluded)"},
                        "bytes": {"type": "integer", "description": "size of the CSV in bytes"},
                        "commit": {"type": "string", "description": "registry commit the tag points at"},
                        "window_start": {"type": "string", "description": "query window start (inclusive), ISO 8601"},
                        "window_end": {"type": "string", "description": "query window end (exclusive), ISO 8601"},
                        "output": {"type": "string", "description": "CSV file name in the project's folder"},
                    },
                    "required": ["version", "tag", "md5"],
                },
            ],
            "type": "object",
        }
    },
    "type": "object",
    "properties": {DVC_FACET_KEY: {"$ref": "#/$defs/DvcDatasetVersionDatasetFacet"}},
}

_DEFAULT_PORTS = {"ssh": 22, "git+ssh": 22, "ssh+git": 22, "https": 443, "http": 80, "git": 9418}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# git's rule: "host:path" is scp-like when a colon comes before any slash.
_SCP_LIKE = re.compile(r"^(?:[^@/]*@)?(\[[^\]/]*\]|[^:/\[\]]+):(.*)$", re.S)
_PATH_SAFE = "/~+:@=,!$&'()*;"


# ------------------------------------------------------------------ naming
def _authority(host: str, port: int | None) -> str:
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}" if port else host


def _encode_path(path: str) -> str:
    path = posixpath.normpath("/" + path.lstrip("/")) if path else "/"
    if path.startswith("//"):  # normpath keeps a leading "//"
        path = "/" + path.lstrip("/")
    return quote(path, safe=_PATH_SAFE)


def registry_namespace(registry_url: str) -> str:
    """``dvc://<registry>`` for a registry repository URL or path (rules in the module docstring).

    Reduced to host[:port]/path so that the same repository gets the same namespace however a worker
    reaches it, and so that a token or password in the URL can never end up in lineage metadata."""
    url = (registry_url or "").strip()
    if not url:
        raise ValueError("registry_url is empty: cannot name the dataset's OpenLineage namespace")
    match = _URL.match(url)
    if match:
        scheme = match.group(1).lower()
        parts = urlsplit(url)
        if scheme == "file":
            host = parts.hostname or "localhost"
            return f"dvc://{_authority(host, None)}{_encode_path(unquote(parts.path))}"
        try:
            port = parts.port
        except ValueError:  # not a number: not part of a stable identity
            port = None
        if port == _DEFAULT_PORTS.get(scheme):
            port = None
        host = parts.hostname or "localhost"
        return f"dvc://{_authority(host, port)}{_encode_path(unquote(parts.path))}"
    scp = _SCP_LIKE.match(url)
    if scp and not url.startswith("/"):
        host, path = scp.group(1).strip("[]"), scp.group(2)
        return f"dvc://{_authority(host, None)}{_encode_path(path)}"
    return f"dvc://localhost{_encode_path(os.path.abspath(url))}"


def mysql_namespace(host: str | None, port: int | None) -> str:
    """``mysql://host:port``: the OpenLineage naming spec for MySQL (same as the provider's MySqlHook)."""
    return f"mysql://{_authority(host or 'localhost', int(port or MYSQL_DEFAULT_PORT))}"


def sql_tables(sql: str, default_database: str | None = None) -> tuple[list[str], list[str]]:
    """(``database.table`` names the SQL reads, parse error messages), via the provider's SQL parser.

    Read tables only: the query is read-only by contract, anything the parser thinks it writes is not
    an input. Sorted and de-duplicated so that the same SQL always gives the same list."""
    from airflow.providers.openlineage.sqlparser import SQLParser

    parser = SQLParser(dialect="mysql", default_schema=None)
    statements = parser.split_sql_string(sql or "")
    if not statements:
        return [], ["empty SQL"]
    result = parser.parse(statements)
    if result is None:  # the parser itself crashed (it logs the exception)
        return [], ["the SQL parser failed"]
    names = set()
    for table in result.in_tables:
        if table.database:  # a three-part name: not MySQL, keep what was written
            names.add(".".join(p for p in (table.database, table.schema, table.name) if p))
        else:
            database = table.schema or default_database
            names.add(f"{database}.{table.name}" if database else table.name)
    return sorted(names), [error.message for error in result.errors]


# ------------------------------------------------------------------ facets
@functools.cache
def _facet_class():
    """The custom facet class, built on first use so that importing this module needs no OpenLineage."""
    import attr
    from openlineage.client.facet_v2 import DatasetFacet

    @attr.define
    class DvcDatasetVersionDatasetFacet(DatasetFacet):
        """One immutable version in the DVC registry: the same keys as the Asset event extra."""

        version: str
        tag: str
        md5: str
        rows: int | None = attr.field(default=None)
        bytes: int | None = attr.field(default=None)
        commit: str | None = attr.field(default=None)
        window_start: str | None = attr.field(default=None)
        window_end: str | None = attr.field(default=None)
        output: str | None = attr.field(default=None)

        # Hashes, counts and timestamps: never secrets, keep them out of Airflow's secret masking.
        _additional_skip_redact = ["md5", "rows", "bytes", "commit", "window_start", "window_end"]

        @staticmethod
        def _get_schema() -> str:
            return DVC_FACET_SCHEMA_URL

    # Importable (and picklable) as dataset_registry.lineage.DvcDatasetVersionDatasetFacet.
    DvcDatasetVersionDatasetFacet.__module__ = __name__
    DvcDatasetVersionDatasetFacet.__qualname__ = "DvcDatasetVersionDatasetFacet"
    return DvcDatasetVersionDatasetFacet


def __getattr__(name: str):
    if name == "DvcDatasetVersionDatasetFacet":
        return _facet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _int_or_none(value) -> int | None:
    return None if value is None or value == "" else int(value)


def _str_or_none(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _version_facets(meta: dict, *, with_schema: bool) -> dict:
    """The dataset facets shared by the version (output) and train (input) events."""
    from openlineage.client.facet_v2 import dataset_version_dataset, schema_dataset

    facets: dict = {}
    columns = list(meta.get("columns") or [])
    if with_schema and columns:
        types = list(meta.get("column_types") or [])
        facets["schema"] = schema_dataset.SchemaDatasetFacet(fields=[
            schema_dataset.SchemaDatasetFacetFields(name=str(name), type=(types[i] if i < len(types) else None))
            for i, name in enumerate(columns)
        ])
    facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(meta["version"]))
    facets[DVC_FACET_KEY] = _facet_class()(
        version=str(meta["version"]),
        tag=str(meta["tag"]),
        md5=str(meta["md5"]),
        rows=_int_or_none(meta.get("rows")),
        bytes=_int_or_none(meta.get("bytes")),
        commit=_str_or_none(meta.get("commit")),
        window_start=_str_or_none(meta.get("window_start")),
        window_end=_str_or_none(meta.get("window_end")),
        output=_str_or_none(meta.get("output")),
    )
    return facets


# ------------------------------------------------------------------ the two operators
def version_lineage(*, sql: str, source: dict, registry_url: str, event: dict) -> OperatorLineage:
    """Lineage of one ``version_<project>`` run: the MySQL tables the SQL read -> the dataset version.

    :param sql: the rendered SQL that ran.
    :param source: ``{"host", "port", "database"}`` of the MySQL source.
    :param registry_url: the registry repository URL or path, credentials already removed (they
        would be dropped here anyway).
    :param event: the Asset event extra plus ``columns`` and ``column_types`` (MySQL type names).
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset, OutputDataset
    from openlineage.client.facet_v2 import extraction_error_run, output_statistics_output_dataset, sql_job

    run_facets: dict = {}
    try:
        tables, errors = sql_tables(sql, source.get("database"))
    except Exception as exc:  # noqa: BLE001 - lineage must never cost the published version
        tables, errors = [], [f"{type(exc).__name__}: {exc}"]
    if errors:
        log.warning("OpenLineage: could not parse the SQL of %s (%s); lineage has no input tables",
                    event.get("tag"), "; ".join(errors))
        run_facets["extractionError"] = extraction_error_run.ExtractionErrorRunFacet(
            totalTasks=1, failedTasks=1,
            errors=[extraction_error_run.Error(errorMessage=message, stackTrace=None, task=sql, taskNumber=0)
                    for message in errors],
        )
    namespace = mysql_namespace(source.get("host"), source.get("port"))
    inputs = [Dataset(namespace=namespace, name=name) for name in tables]

    output = OutputDataset(
        namespace=registry_namespace(registry_url),
        name=str(event["project"]),
        facets=_version_facets(event, with_schema=True),
        outputFacets={"outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=_int_or_none(event.get("rows")), size=_int_or_none(event.get("bytes")), fileCount=1)},
    )
    return OperatorLineage(
        inputs=inputs,
        outputs=[output],
        run_facets=run_facets,
        job_facets={"sql": sql_job.SQLJobFacet(query=sql, dialect="mysql")},
    )


def train_lineage(*, registry_url: str, pulled: dict) -> OperatorLineage:
    """Lineage of one ``train_<project>`` run: its input is the dataset version it pulled (the same
    namespace, name and version facets as the ``version_<project>`` output), and it has no outputs.

    :param registry_url: the registry repository URL or path (credentials removed or not: dropped here).
    :param pulled: ``{"project", "version", "tag", "md5", "rows", "bytes", "commit", "output"}``;
        ``columns``/``column_types`` add the schema facet when present.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.facet_v2 import input_statistics_input_dataset

    dataset = InputDataset(
        namespace=registry_namespace(registry_url),
        name=str(pulled["project"]),
        facets=_version_facets(pulled, with_schema=True),
        inputFacets={"inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
            rowCount=_int_or_none(pulled.get("rows")), size=_int_or_none(pulled.get("bytes")), fileCount=1)},
    )
    return OperatorLineage(inputs=[dataset], outputs=[])
