"""``dataset-registry`` (or ``python -m dataset_registry``): the registry for people without Airflow.

    dataset-registry projects
    dataset-registry versions <project>
    dataset-registry show <project> <version>
    dataset-registry diff <project> <base> <target> [--key col,... | --no-key]
    dataset-registry pull <project> [<version>] --to <path>
    dataset-registry experiments [--project P] [--model M] [--model-version-id V] [--training-dataset TAG]

Settings come from the same connections the DAGs use, in Airflow's environment-variable format:
``AIRFLOW_CONN_DVC_REGISTRY`` (JSON: ``{"conn_type": "generic", "extra": {"repo_url": ..., "remote_url":
..., "key_file": ...}}``, the keys of the ``dvc_registry`` connection form) and ``AIRFLOW_CONN_MODEL_DB``
(JSON ``{"conn_type": "postgres", "host": ..., "login": ..., "password": ..., "schema": ...}`` or
``{"conn_type": "sqlite", "host": "/path/model_db.sqlite"}``, or a ``postgres://user:pw@host:5432/db``
/ ``sqlite:////abs/path.sqlite`` URL), or from flags, which win. No Airflow import: the JSON is
read here, against the same key list as the hook (``get_provider_info.REGISTRY_CONN_FIELDS``). For an
``s3://`` remote, ``extra.remote_conn_id`` names an ``aws`` connection read from ``AIRFLOW_CONN_<ID>``
(JSON) as the hook reads it; without it, the AWS credentials botocore finds are used.

Tables for people by default, ``--json`` for machines. Exit codes: 0 done; 1 the registry, the
model DB or the data said no (unreachable, unknown project or version, files not sorted by the key);
2 the command line or a setting is wrong (the message names it, the rule, and what to do).
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

from dataset_registry.connection_ids import MODEL_DB_CONN_ID, REGISTRY_CONN_ID
from dataset_registry.get_provider_info import REGISTRY_CONN_FIELDS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
REGISTRY_TYPES = ("dvc_registry", "generic")


class UsageError(Exception):
    """The command line or a setting is wrong: exit 2."""


# ------------------------------------------------------------------ settings
def env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _load_conn_json(conn_id: str, text: str) -> dict:
    name = env_name(conn_id)
    try:
        conn = json.loads(text)
    except ValueError as exc:  # never echo the value: it may hold a password
        raise UsageError(f"{name} is not valid JSON ({exc.msg} at character {exc.pos}): write it as "
                         '\'{"conn_type": "generic", "extra": {"repo_url": "...", "remote_url": "..."}}\'') from None
    if not isinstance(conn, dict):
        raise UsageError(f"{name} must be a JSON object, got {type(conn).__name__}")
    return conn


def _registry_extra(conn_id: str, conn: dict) -> dict:
    """The extra with the form's keys only, checked as the hook checks them."""
    name = env_name(conn_id)
    conn_type = conn.get("conn_type", "generic")
    if conn_type not in REGISTRY_TYPES:
        raise UsageError(f"{name}: conn_type {conn_type!r} is not a registry connection: use "
                         f"{' or '.join(map(repr, REGISTRY_TYPES))}")
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            raise UsageError(f"{name}: extra is text that is not JSON: make it a JSON object") from None
    if not isinstance(extra, dict):
        raise UsageError(f"{name}: extra must be a JSON object")
    values: dict[str, Any] = {}
    for key, value in extra.items():
        field = str(key).removeprefix("extra__dvc_registry__")
        if field not in REGISTRY_CONN_FIELDS:
            close = difflib.get_close_matches(field, REGISTRY_CONN_FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"{name}: unknown extra key {str(key)[:80]!r}: {hint}the keys are "
                             f"{', '.join(REGISTRY_CONN_FIELDS)}")
        if field in values:
            raise UsageError(f"{name}: extra.{field} is given twice (with and without the form prefix): keep one")
        if value is None or value == "":
            continue
        expected = REGISTRY_CONN_FIELDS[field]["schema"]["type"][0]
        if expected == "string" and not isinstance(value, str):
            raise UsageError(f"{name}: extra.{field} must be text, got {type(value).__name__}")
        values[field] = value
    return values


def _flag(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise UsageError(f"{where} {str(value)[:40]!r} is not true or false")


def default_work_dir() -> Path:
    """$DATASET_WORK_DIR, else ``$XDG_CACHE_HOME/dataset-registry`` (``~/.cache/dataset-registry``)."""
    if os.environ.get("DATASET_WORK_DIR"):
        return Path(os.environ["DATASET_WORK_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "dataset-registry"


def registry_settings(args: argparse.Namespace, environ: dict | None = None):
    """RegistrySettings from ``AIRFLOW_CONN_<registry conn id>`` and the flags (flags win)."""
    from dataset_registry.registry_errors import RegistryError
    from dataset_registry.registry_settings import DEFAULT_PUBLISH_TIMEOUT, RegistrySettings

    environ = os.environ if environ is None else environ
    conn_id = args.registry_conn_id
    raw = environ.get(env_name(conn_id))
    conn, extra = {}, {}
    if raw:
        if not raw.lstrip().startswith("{"):
            raise UsageError(f"{env_name(conn_id)} is not a JSON connection: this command reads the JSON form "
                             '(\'{"conn_type": "generic", "extra": {...}}\', as in the README)')
        conn = _load_conn_json(conn_id, raw)
        extra = _registry_extra(conn_id, conn)
    for field in ("repo_url", "remote_url", "key_file", "known_hosts", "work_dir", "branch"):
        value = getattr(args, field, None)
        if value:
            extra[field] = value
    missing = [f for f in ("repo_url", "remote_url") if not str(extra.get(f, "")).strip()]
    if missing:
        source = f"{env_name(conn_id)} has no extra.{missing[0]}" if raw else f"{env_name(conn_id)} is not set"
        raise UsageError(f"no registry to read: {source}. Set {env_name(conn_id)} to the registry connection's JSON "
                         "(as for Airflow, see the README) or pass --repo-url and --remote-url")
    timeout = extra.get("publish_timeout", DEFAULT_PUBLISH_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, str)):
        raise UsageError(f"{env_name(conn_id)}: extra.publish_timeout is not a number of seconds")
    try:
        timeout = float(timeout)
    except ValueError:
        raise UsageError(f"{env_name(conn_id)}: extra.publish_timeout is not a number of seconds") from None
    s3 = _s3_access(conn_id, extra, environ) if extra.get("remote_conn_id") else None
    work_dir = extra.get("work_dir") or default_work_dir()
    work_dir = os.path.abspath(os.path.expanduser(str(work_dir)))
    for field in ("key_file", "known_hosts"):
        if extra.get(field):
            extra[field] = os.path.abspath(os.path.expanduser(extra[field]))
    try:
        return RegistrySettings(
            repo_url=str(extra["repo_url"]), remote_url=str(extra["remote_url"]), work_dir=Path(work_dir),
            branch=str(extra.get("branch") or "main"),
            ssh_user=conn.get("login") or None, ssh_password=conn.get("password") or None,
            key_file=extra.get("key_file"), known_hosts=extra.get("known_hosts"),
            check_host_keys=not _flag(f"{env_name(conn_id)}: extra.no_host_key_check",
                                      extra.get("no_host_key_check", False)),
            publish_timeout=timeout, s3=s3,
        )
    except RegistryError as exc:
        raise UsageError(f"{exc} (from {env_name(conn_id) if raw else 'the flags'} and the flags)") from None


def _s3_access(conn_id: str, extra: dict, environ):
    """An S3 remote's credentials from the ``aws`` connection named in extra.remote_conn_id, read
    from ``AIRFLOW_CONN_<ID>`` (JSON) as the hook reads it from Airflow."""
    from dataset_registry.registry_errors import RegistryError
    from dataset_registry.s3_remote import access_from_aws_connection

    where = f"{env_name(conn_id)}: extra.remote_conn_id names {str(extra['remote_conn_id'])[:80]!r}"
    remote_id = str(extra["remote_conn_id"])
    if not remote_id.replace("_", "").replace("-", "").replace(".", "").isalnum() or not remote_id.isascii():
        raise UsageError(f"{where}, which is not a connection id (letters, digits, '_', '-', '.')")
    if not str(extra.get("remote_url", "")).startswith("s3://"):
        raise UsageError(f"{where}, S3 credentials, but remote_url is not an s3:// URL: remove remote_conn_id")
    raw = environ.get(env_name(remote_id))
    if not raw or not raw.lstrip().startswith("{"):
        raise UsageError(f"{where}: set {env_name(remote_id)} to that aws connection's JSON "
                         '(\'{"conn_type": "aws", "login": "<access key id>", "password": "<secret>", "extra": '
                         '{"region_name": "..."}}\')')
    conn = _load_conn_json(remote_id, raw)
    if conn.get("conn_type") != "aws":
        raise UsageError(f"{where}, of conn_type {str(conn.get('conn_type'))[:40]!r}: it must be 'aws'")
    remote_extra = conn.get("extra") or {}
    if isinstance(remote_extra, str):
        try:
            remote_extra = json.loads(remote_extra)
        except ValueError:
            raise UsageError(f"{env_name(remote_id)}: extra is text that is not JSON: make it a JSON object") from None
    try:
        return access_from_aws_connection(conn.get("login"), conn.get("password"), remote_extra)
    except RegistryError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _sqlalchemy_url(text: str, where: str) -> str:
    """A postgres/sqlite URL in Airflow's or SQLAlchemy's spelling, as SQLAlchemy takes it."""
    scheme = text.split(":", 1)[0].lower()
    if scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg2:" + text.split(":", 1)[1]
    if scheme.startswith(("postgresql+", "sqlite")):
        return text
    raise UsageError(f"{where}: the URL scheme {scheme!r} is not supported: use postgres://user:password@host:5432/db "
                     "or sqlite:////absolute/path.sqlite")


def model_db_url(args: argparse.Namespace, environ: dict | None = None) -> str | None:
    """The model DB's SQLAlchemy URL: ``--model-db-url``, else ``AIRFLOW_CONN_<model db conn id>``, else
    an existing embedded SQLite file (``$MODEL_DB_PATH``, ``$AIRFLOW_HOME/model_db.sqlite``); None: no
    model DB (no experiments shown)."""
    environ = os.environ if environ is None else environ
    if getattr(args, "no_model_db", False):
        return None
    if args.model_db_url:
        return _sqlalchemy_url(args.model_db_url, "--model-db-url")
    name = env_name(args.model_db_conn_id)
    raw = environ.get(name)
    if raw:
        if not raw.lstrip().startswith("{"):
            return _sqlalchemy_url(raw.strip(), name)
        conn = _load_conn_json(args.model_db_conn_id, raw)
        conn_type = conn.get("conn_type")
        if conn_type == "sqlite":
            path = conn.get("host") or conn.get("schema")
            if not path:
                raise UsageError(f"{name}: a sqlite connection needs the database file path in 'host'")
            return f"sqlite:///{path}"
        if conn_type in ("postgres", "postgresql"):
            user = quote(str(conn.get("login") or ""), safe="")
            password = quote(str(conn.get("password") or ""), safe="")
            auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
            host = conn.get("host") or "localhost"
            port = conn.get("port") or 5432
            database = conn.get("schema") or "postgres"
            return f"postgresql+psycopg2://{auth}{host}:{port}/{quote(str(database), safe='')}"
        raise UsageError(f"{name}: conn_type {conn_type!r} is not supported for the model DB: use postgres or sqlite")
    for candidate in (environ.get("MODEL_DB_PATH"),
                      os.path.join(environ["AIRFLOW_HOME"], "model_db.sqlite") if environ.get("AIRFLOW_HOME") else None):
        if candidate and os.path.isfile(candidate):
            return f"sqlite:///{os.path.abspath(candidate)}"
    return None


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def build_catalog(args: argparse.Namespace):
    from dataset_registry.catalog import Catalog
    from dataset_registry.registry import RegistryClient

    settings = registry_settings(args)
    url = model_db_url(args)
    model_db = None
    if url:
        from dataset_registry.model_db import ModelDB

        try:
            model_db = ModelDB(url)
        except Exception as exc:  # a malformed URL or a missing driver
            raise UsageError(f"model DB {_redact_url(url)}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return Catalog(RegistryClient(settings), model_db, max_age=3600)  # one command: one fetch


# ------------------------------------------------------------------ output
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if value == "":
        return '""'
    if isinstance(value, str):
        return value.replace("\r", "\\r").replace("\n", "\\n")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _width(text: str) -> int:
    """Columns a terminal gives ``text`` (wide East Asian characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = 60) -> str:
    """A plain text table; cells longer than ``limit`` are cut with an ellipsis."""
    cells = [[_cell(v) if len(_cell(v)) <= limit else _cell(v)[:limit - 1] + "…" for v in row] for row in rows]
    widths = [max([_width(h), *(_width(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(_pad(h, w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(_pad(c, w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _size(n: Any) -> str:
    if not isinstance(n, int) or n < 0:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _window(record: dict) -> str:
    start, end = record.get("window_start"), record.get("window_end")
    return f"[{start}, {end})" if start or end else "-"


def show_projects(rows: list[dict]) -> str:
    if not rows:
        return "no projects: the registry has no version tags yet"
    return table(["PROJECT", "VERSIONS", "LATEST"], [[r["project"], r["versions"], r["latest"]] for r in rows])


def show_versions(project: str, rows: list[dict]) -> str:
    return table(["VERSION", "ROWS", "BYTES", "MD5", "CREATED", "WINDOW", "COMMIT"],
                 [[r["version"], r["rows"], r["bytes"], r["md5"], r["created"], _window(r), (r["commit"] or "")[:12]]
                  for r in rows], limit=80)


def _experiment_rows(rows: list[dict]) -> list[list]:
    return [[e.get("experiment_id"), e.get("project_name"), e.get("model_name"), e.get("model_version_id"),
             e.get("status"), e.get("training_dataset"), e.get("created_datetime"), e.get("evaluations")] for e in rows]


EXPERIMENT_HEADERS = ["ID", "PROJECT", "MODEL", "MODEL VERSION", "STATUS", "TRAINING DATASET", "CREATED", "EVALUATIONS"]


def show_version(record: dict) -> str:
    lines = [f"{record['tag']}  ({record['output']})"]
    for label, value in (("md5", record["md5"]), ("rows", record["rows"]),
                         ("bytes", f"{record['bytes']} ({_size(record['bytes'])})"), ("commit", record["commit"]),
                         ("created", record["created"]), ("window", _window(record))):
        lines.append(f"  {label + ':':9}{_cell(value)}")
    profile = record.get("profile") or {}
    columns = record.get("columns") or list(profile)
    lines.append("")
    if profile:
        lines.append("Profile")
        lines.append(table(["COLUMN", "TYPE", "NULLS", "EMPTY", "MIN", "MAX", "DISTINCT"],
                           [[c, *(profile.get(c, {}).get(k) for k in ("type", "nulls", "empty", "min", "max", "distinct"))]
                            for c in columns], limit=40))
    else:
        lines.append("Profile: none recorded for this version" + (f" (columns: {', '.join(columns)})" if columns else ""))
    lines.append("")
    experiments = record.get("experiments") or []
    if experiments:
        lines.append(f"Experiments trained on {record['tag']}")
        lines.append(table(EXPERIMENT_HEADERS, _experiment_rows(experiments)))
    else:
        lines.append(f"Experiments trained on {record['tag']}: none")
    return "\n".join(lines)


def show_diff(project: str, base: str, target: str, result: dict, key: Sequence[str]) -> str:
    rows = result["rows"]
    lines = [f"{project}: {base} -> {target}"]
    if isinstance(rows["base"], int) and isinstance(rows["target"], int):
        lines.append(f"rows:            {rows['base']} -> {rows['target']} ({rows['target'] - rows['base']:+d})")
    else:
        lines.append(f"rows:            {_cell(rows['base'])} -> {_cell(rows['target'])}")
    schema = result["schema"]
    lines.append(f"columns added:   {', '.join(schema['added']) or '-'}")
    lines.append(f"columns removed: {', '.join(schema['removed']) or '-'}")
    lines.append("columns retyped: " + (", ".join(f"{c} {t['base']} -> {t['target']}"
                                                 for c, t in schema["changed"].items()) or "-"))
    if "keys" in result:
        k = result["keys"]
        lines.append(f"rows by key:     {k['added']} added, {k['removed']} removed, {k['changed']} changed "
                     f"(key: {', '.join(key)})")
    else:
        lines.append("rows by key:     not compared (pass --key col,... to count added, removed and changed rows)")
    if result["columns"]:
        lines.append("")
        lines.append(table(["COLUMN", "STAT", "BASE", "TARGET"],
                           [[c, stat, v["base"], v["target"]] for c, stats in result["columns"].items()
                            for stat, v in stats.items()], limit=40))
    return "\n".join(lines)


# ------------------------------------------------------------------ commands
def _key_list(text: str | None) -> list[str]:
    if not text:
        return []
    key = [part.strip() for part in text.split(",")]
    if any(not part for part in key):
        raise UsageError(f"--key {text!r}: give column names separated by commas, e.g. --key id or --key day,id")
    return key


def project_key(project: str, environ: dict | None = None) -> list[str]:
    """The project's ``key:`` from its YAML in ``$DATASET_PROJECTS_DIR`` (``<project>.yaml``), when that
    folder is set and the file is there; [] otherwise. Said on stderr, so the diff is not a surprise."""
    from dataset_registry.names import validate_project

    environ = os.environ if environ is None else environ
    folder = environ.get("DATASET_PROJECTS_DIR")
    if not folder:
        return []
    validate_project(project)
    for path in (Path(folder) / f"{project}.yaml", Path(folder) / f"{project}.yml"):
        if not path.is_file():
            continue
        from dataset_registry.project_config import load_project

        try:
            key = list(getattr(load_project(path), "key", None) or [])
        except Exception as exc:  # noqa: BLE001 - the YAML only supplies a default; the diff still runs
            print(f"dataset-registry: note: no key taken from {path}: {str(exc).splitlines()[0][:300]}",
                  file=sys.stderr)
            return []
        if key:
            print(f"dataset-registry: note: key ({', '.join(key)}) from {path}; --key overrides, --no-key "
                  "compares schema and profile only", file=sys.stderr)
        return key
    return []


def run_command(args: argparse.Namespace, out) -> int:
    if args.command == "experiments":
        catalog = build_catalog(args)
        if catalog.model_db is None:
            raise UsageError(f"no model DB configured: set {env_name(args.model_db_conn_id)} or pass --model-db-url")
        rows = catalog.experiments(project=args.project, model=args.model, model_version_id=args.model_version_id,
                                   training_dataset=args.training_dataset)
        print(json.dumps(rows, indent=2) if args.json else
              (table(EXPERIMENT_HEADERS, _experiment_rows(rows)) if rows else "no experiments match"), file=out)
        return EXIT_OK
    catalog = build_catalog(args)
    if args.command == "projects":
        rows = catalog.projects()
        print(json.dumps(rows, indent=2) if args.json else show_projects(rows), file=out)
    elif args.command == "versions":
        rows = catalog.versions(args.project)
        print(json.dumps(rows, indent=2) if args.json else show_versions(args.project, rows), file=out)
    elif args.command == "show":
        record = catalog.version(args.project, args.version)
        print(json.dumps(record, indent=2) if args.json else show_version(record), file=out)
    elif args.command == "diff":
        key = [] if args.no_key else _key_list(args.key) or project_key(args.project)
        result = catalog.diff(args.project, args.base, args.target, key=key)
        print(json.dumps(result, indent=2) if args.json else show_diff(args.project, args.base, args.target, result, key),
              file=out)
    elif args.command == "pull":
        return _pull(catalog, args, out)
    return EXIT_OK


def _pull(catalog, args: argparse.Namespace, out) -> int:
    from dataset_registry.catalog import DestinationExists
    from dataset_registry.names import validate_project, validate_version

    validate_project(args.project)
    if args.version is not None:
        validate_version(args.version)
    to = Path(os.path.expanduser(args.to))
    if not to.is_dir() and not to.parent.is_dir():
        raise UsageError(f"--to {args.to}: the folder {to.parent} does not exist; create it or give another path")
    try:
        record, path, downloaded = catalog.pull(args.project, args.version, to, overwrite=args.force)
    except DestinationExists as exc:
        raise UsageError(f"--to: {exc}; pass --force to replace it, or choose another path") from None
    if args.json:
        print(json.dumps({**record, "path": str(path), "downloaded": downloaded}, indent=2), file=out)
    else:
        how = "downloaded from the DVC remote" if downloaded else "from the local DVC cache"
        print(f"{record['tag']}: {path} ({record['bytes']} bytes, md5 {record['md5']} verified, {how})", file=out)
    return EXIT_OK


# ------------------------------------------------------------------ argument parsing
def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the command (after it, they win)."""
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)
    group = parent.add_argument_group("settings (default: the AIRFLOW_CONN_* environment variables)")
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of tables")
    group.add_argument("--repo-url", default=default(None), help="registry git repository (URL or absolute path)")
    group.add_argument("--remote-url", default=default(None), help="DVC remote: ssh://[user@]host[:port]/path or a path")
    group.add_argument("--key-file", default=default(None), help="SSH private key file")
    group.add_argument("--known-hosts", default=default(None), help="known_hosts file for the SSH host keys")
    group.add_argument("--branch", default=default(None), help="registry branch (default main)")
    group.add_argument("--work-dir", default=default(None),
                       help="local folder for the working clone and the DVC cache "
                            "(default $DATASET_WORK_DIR or ~/.cache/dataset-registry)")
    group.add_argument("--model-db-url", default=default(None),
                       help="model DB: postgres://user:password@host:5432/db or sqlite:////abs/path.sqlite")
    group.add_argument("--no-model-db", action="store_true", default=default(False),
                       help="do not read the model DB (no experiments)")
    group.add_argument("--registry-conn-id", default=default(REGISTRY_CONN_ID),
                       help=f"read AIRFLOW_CONN_<ID> for the registry (default {REGISTRY_CONN_ID})")
    group.add_argument("--model-db-conn-id", default=default(MODEL_DB_CONN_ID),
                       help=f"read AIRFLOW_CONN_<ID> for the model DB (default {MODEL_DB_CONN_ID})")
    group.add_argument("-v", "--verbose", action="store_true", default=default(False), help="log what is done")
    return parent


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="dataset-registry", parents=[_common_options(True)], allow_abbrev=False,
        description="Read the dataset registry without Airflow: projects, versions, profiles, diffs, pulls.",
        epilog="Exit codes: 0 done, 1 the registry/model DB/data said no, 2 wrong command line or settings.")
    common = _common_options(False)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("projects", parents=[common], allow_abbrev=False, help="projects with their number of versions and the newest")
    sub = commands.add_parser("versions", parents=[common], allow_abbrev=False, help="versions of a project, newest first")
    sub.add_argument("project")
    sub = commands.add_parser("show", parents=[common], allow_abbrev=False, help="one version: profile, window, experiments")
    sub.add_argument("project")
    sub.add_argument("version")
    sub = commands.add_parser("diff", parents=[common], allow_abbrev=False, help="what changed between two versions")
    sub.add_argument("project")
    sub.add_argument("base", help="the older version")
    sub.add_argument("target", help="the newer version")
    sub.add_argument("--key", help="key columns, comma separated: count added, removed and changed rows; both "
                                   "files must be sorted by it (default: the project's `key:` when its YAML is in "
                                   "$DATASET_PROJECTS_DIR)")
    sub.add_argument("--no-key", action="store_true", help="compare schema and profile only")
    sub = commands.add_parser("pull", parents=[common], allow_abbrev=False, help="copy a version's file to a path (md5-verified)")
    sub.add_argument("project")
    sub.add_argument("version", nargs="?", help="default: the newest version")
    sub.add_argument("--to", required=True, help="destination file, or an existing folder (the file keeps its name)")
    sub.add_argument("--force", action="store_true", help="replace an existing destination file")
    sub = commands.add_parser("experiments", parents=[common], allow_abbrev=False, help="model-DB experiments, newest first")
    sub.add_argument("--project")
    sub.add_argument("--model")
    sub.add_argument("--model-version-id")
    sub.add_argument("--training-dataset", help="a tag, <project>/<version>")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # exits 2 with argparse's message on a bad command line
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    from dataset_registry.catalog import CatalogError, CatalogNotFound
    from dataset_registry.names import InvalidNameError
    from dataset_registry.version_diff import BadKeyError, DiffError

    prog = "dataset-registry"
    try:
        return run_command(args, sys.stdout)
    except (UsageError, InvalidNameError, BadKeyError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CatalogNotFound as exc:
        print(f"{prog}: not found: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (CatalogError, DiffError) as exc:
        hint = " (pass --no-model-db to leave the model DB out)" if "from the model DB" in str(exc) else ""
        print(f"{prog}: error: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
