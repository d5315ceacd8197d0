"""Stream a query result from MySQL/MariaDB into the contract's CSV, in bounded memory.

Why this shape:
- An unbuffered server-side cursor (``mysql_use_result``) plus ``fetchmany`` keeps memory flat.
- An empty converter map makes MySQLdb hand back values exactly as the text protocol prints them
  (``12.50`` for DECIMAL(10,2), ``2024-01-02 03:04:05.123456`` for DATETIME(6)), decoded in C.
- Session ``time_zone='+00:00'`` prints TIMESTAMP in UTC whatever the server default.
- ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`` gives one snapshot for the whole read.
- The MD5 of the bytes is computed while writing, so nothing re-reads the file to hash it; likewise
  the column profile (``column_profile``: nulls, empty strings, min/max, approximate distinct per
  column) and, for the ``unique`` check, the key's sortedness, batch by batch.
- Completeness comes from the protocol: an unbuffered result ends with an EOF packet, and a stream
  that is cut (KILL, network loss, server restart) raises an error from ``fetchmany`` (or the C
  engine's ``mysql_fetch_row``), never a short clean end. No separate row count is compared (the client's count would only be compared with itself).

Two engines produce the same bytes, profile and key facts (tests/test_export_engine.py compares them):
- ``c`` (the default when ``dataset_registry._fastexport`` is built): the query runs with MySQLdb's own
  ``conn.query()`` on the prepared connection, then the C extension streams the unbuffered result from
  the connection's ``MYSQL*`` (rows fetched, CSV-formatted and profiled in C with the GIL released,
  handed back in ~1 MB blocks that Python writes and hashes); see ``_fastexport.c``.
- ``python`` (the reference; always used with a preprocess, and when the extension is missing):
  MySQLdb decodes every field to ``str``, ``csv_format`` quotes, ``column_profile`` profiles per batch.
``DATASET_EXPORT_ENGINE=python|c|auto`` (default ``auto``) or ``export_query(engine=...)`` chooses;
the export logs which engine ran.

Read-only, in three independent layers (any one of them stops a write):
1. ``sql_guard.check_query`` refuses, before the query runs, anything but one SELECT-like statement
   (no second statement, no INTO OUTFILE/DUMPFILE/@var, no locking read, no /*! */ comment), using
   the session's own sql_mode to read quotes and backslashes as the server will.
2. Multi-statements are switched off on the connection (mysqlclient turns them on by default), so
   the server itself refuses ``SELECT ...; DROP ...`` with a syntax error; and a second result set
   (e.g. from a procedure) fails the export.
3. The whole session is READ ONLY (``SET SESSION TRANSACTION READ ONLY``) before the read-only
   snapshot starts, so even after a COMMIT no statement can open a writable transaction.
Use a SELECT-only account as well: that is the layer that also covers functions and the FILE privilege.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dataset_registry import csv_format, mysql_types, sql_guard
from dataset_registry.disk import disk_problem

log = logging.getLogger(__name__)

FETCH_ROWS = 20_000
PROGRESS_SECONDS = 10.0
FAST_BUFFER_BYTES = 1 << 20  # the C engine hands the CSV to Python in blocks of about this size
ENGINE_ENV = "DATASET_EXPORT_ENGINE"  # auto (default): C when built; python: the reference engine

# Field types whose text never needs CSV quoting and is never the empty string.
_PLAIN_TYPES = {0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 246}  # numbers, dates, times, years


# mysql_set_server_option() value from enum_mysql_set_option (mysql.h / mariadb_com.h):
# MYSQL_OPTION_MULTI_STATEMENTS_ON = 0, MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1. MySQLdb exports no name.
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1

# Only faults a retry can fix are retried; every other server error (syntax, unknown or ambiguous
# column, wrong UNION arity, access denied, a write refused by the read-only session: 1792, TLS
# refused, ...) is deterministic and fails at once. The list: connection refused/lost/gone
# (2002 2003 2005 2006 2013 2055), too many connections (1040, 1203), server shutting down (1053, 1077-1080),
# network read/write errors (1152-1161), lock wait timeout / deadlock (1205 1213), query interrupted or
# connection killed (1317 1927), statement timeouts (MariaDB 1969, MySQL 3024), out of memory/resources
# (1037 1038 1041 1135), and the idle-session timeout (4031).
TRANSIENT_ERRORS = {1037, 1038, 1040, 1041, 1053, 1077, 1078, 1079, 1080, 1135, 1152, 1153, 1154, 1155, 1156,
                    1157, 1158, 1159, 1160, 1161, 1203, 1205, 1213, 1317, 1927, 1969, 2002, 2003, 2005, 2006,
                    2013, 2055, 3024, 4031}


class ExportError(RuntimeError):
    """The export failed; the message carries the server's own words."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


def _retryable(exc: BaseException) -> bool:
    """A server error is retried only when it is a known transient fault; errors without a MySQL
    error code (the network, the OS) are retried."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in TRANSIENT_ERRORS
    return True


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    bytes: int
    md5: str
    columns: list[str]
    seconds: float
    column_types: list[str] = field(default_factory=list)  # MySQL type per query column
    # The CSV's columns (the query's, or a preprocess's output) and their profile (``column_profile``),
    # computed while the CSV streamed; None when the export ran with profile=False.
    csv_columns: list[str] = field(default_factory=list)
    profile: dict[str, dict] | None = None
    # Unique-key facts of the stream (``column_profile.KeyTracker.facts``) when a key was given.
    key_facts: dict | None = None


# Types without a converter: MySQLdb returns them as bytes when the column's charset is binary (63),
# else decoded by use_unicode. Every other type is decoded to str by the converter map.
_KEEP_RAW = {"BLOB", "TINY_BLOB", "MEDIUM_BLOB", "LONG_BLOB", "STRING", "VAR_STRING", "VARCHAR", "BIT", "GEOMETRY", "JSON"}
_KEEP_RAW_CODES = {252, 249, 250, 251, 254, 253, 15, 16, 255, 245}  # the type codes of _KEEP_RAW
BINARY_CHARSET = 63


def _text_converters() -> dict:
    """Every non-binary type decoded to str in C; strings are decoded by use_unicode."""
    from MySQLdb.constants import FIELD_TYPE

    return {getattr(FIELD_TYPE, n): str for n in dir(FIELD_TYPE) if n.isupper() and n not in _KEEP_RAW}


def is_bytes_field(type_code: int, charsetnr: int) -> bool:
    """Whether MySQLdb (with ``_text_converters``) returns this column's values as bytes: the CSV
    prints those as 0x hex."""
    return type_code in _KEEP_RAW_CODES and charsetnr == BINARY_CHARSET


def _fast_engine(engine: str | None):
    """(module or None, why): the C engine when asked for (or ``auto``) and importable."""
    choice = (engine or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if choice not in ("auto", "c", "python"):
        raise ExportError(f"unknown export engine {choice!r} ({ENGINE_ENV}): use auto, c or python", retryable=False)
    if choice == "python":
        return None, "python (asked for)"
    try:
        from dataset_registry import _fastexport
    except ImportError as exc:
        if choice == "c":
            raise ExportError(f"the C export engine was asked for but cannot be imported: {exc}", retryable=False) from None
        return None, f"python (the C engine is not built: {exc})"
    # The engine works on MySQLdb's own MYSQL*: both must use one client library (same ABI).
    from MySQLdb import _mysql

    ours, theirs = _fastexport.client_info(), _mysql.get_client_info()
    if not hasattr(_mysql.connection, "_get_native_connection") or ours != theirs:
        why = (f"the C engine is linked with client library {ours}, mysqlclient with {theirs} "
               "(or mysqlclient has no _get_native_connection)")
        if choice == "c":
            raise ExportError(f"the C export engine cannot be used: {why}", retryable=False)
        return None, f"python ({why})"
    return _fastexport, "c (dataset_registry._fastexport)"


def connect(params: dict[str, Any]):
    """A MySQLdb connection for exporting: utf8mb4, raw text values, unbuffered cursor, one statement per call.

    mysqlclient negotiates CLIENT_MULTI_STATEMENTS by default; it is switched off on the server for
    this session, so ``SELECT 1; DROP TABLE t`` is a syntax error (1064) there, whatever the guard saw.
    """
    import MySQLdb
    import MySQLdb.cursors

    args = dict(params)
    args.update(charset="utf8mb4", use_unicode=True, conv=_text_converters(),
                cursorclass=MySQLdb.cursors.SSCursor)
    args.pop("local_infile", None)  # never let the server read client files
    args.setdefault("connect_timeout", 20)
    where = params.get("unix_socket") or f"{params.get('host')}:{params.get('port', 3306)}"
    try:
        conn = MySQLdb.connect(**args)
    except MySQLdb.Error as exc:
        hint = ""
        if _error_code(exc) in (2026, 3159):
            hint = (" (TLS: the connection's extra sets ssl/ssl_mode, or the server requires secure transport; "
                    "check both sides agree)")
        elif _error_code(exc) == 1045 and not _tls_requested(params):
            hint = (" (wrong login/password, or the server requires TLS (require_secure_transport): then set "
                    "ssl or ssl_mode in the connection's extra)")
        raise ExportError(f"cannot connect to MySQL at {where}: {_server_message(exc)}{hint}", _retryable(exc)) from None
    try:
        conn.set_server_option(MYSQL_OPTION_MULTI_STATEMENTS_OFF)
        if _tls_requested(params):
            _require_tls(conn, params, where)
    except MySQLdb.Error as exc:
        conn.close()
        raise ExportError(f"cannot prepare the connection to {where}: {_server_message(exc)}") from None
    except BaseException:
        conn.close()
        raise
    return conn


_TLS_MODES = {"REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"}


def _tls_requested(params: dict[str, Any]) -> bool:
    return bool(params.get("ssl")) or str(params.get("ssl_mode") or "").upper() in _TLS_MODES


def _require_tls(conn, params: dict[str, Any], where: str) -> None:
    """MariaDB Connector/C silently falls back to plain text for ``ssl`` or ``ssl_mode=REQUIRED`` when
    the server offers no TLS (only VERIFY_* fail): check the session really is encrypted."""
    cursor = conn.cursor()
    cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    rows = cursor.fetchall()
    cursor.close()
    if not rows or not rows[0][1]:
        asked = f"ssl_mode={params['ssl_mode']}" if params.get("ssl_mode") else "ssl settings"
        raise ExportError(
            f"the connection asks for TLS ({asked}) but the session with {where} is not encrypted "
            "(the server offers no TLS): nothing was sent. Enable TLS on the server, or remove ssl/ssl_mode "
            "from the connection's extra.", retryable=False)


def _error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _server_message(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"MySQL error {args[0]}: {args[1]}"
    return str(exc)


def session_info(cursor) -> tuple[str, str]:
    """(server version, session sql_mode): the guard reads quotes the way this session will."""
    cursor.execute("SELECT VERSION(), @@SESSION.sql_mode")
    version, sql_mode = cursor.fetchall()[0]
    return str(version), str(sql_mode or "")


def begin_read_only_snapshot(cursor, *, version: str, query_timeout: int | None = None) -> None:
    """UTC, REPEATABLE READ, a READ ONLY session, the statement timeout, then the consistent snapshot.

    The session (not only the transaction) is read-only, so a COMMIT inside the query cannot open a
    writable transaction: every later write fails with error 1792.
    """
    cursor.execute("SET SESSION time_zone = '+00:00'")
    cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    cursor.execute("SET SESSION TRANSACTION READ ONLY")
    if query_timeout:
        if "MariaDB" in version:
            cursor.execute(f"SET SESSION max_statement_time = {int(query_timeout)}")
        else:
            cursor.execute(f"SET SESSION max_execution_time = {int(query_timeout) * 1000}")
    cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")


def export_query(
    conn_params: dict[str, Any],
    sql: str,
    dest: Path,
    *,
    preprocess: Callable | None = None,
    query_timeout: int | None = None,
    fetch_rows: int = FETCH_ROWS,
    progress_seconds: float = PROGRESS_SECONDS,
    profile: bool = True,
    unique_key: list[str] | None = None,
    engine: str | None = None,
    preprocess_api: str = "pandas",
) -> ExportResult:
    """Run ``sql`` and write the CSV to ``dest`` (written to ``dest.partial``, renamed when complete).

    ``sql`` must be one read-only query (see ``sql_guard``); anything else is refused before it runs.
    On any failure the partial file is removed and ExportError carries the server's message;
    ``retryable=False`` when a retry cannot help (refused query, SQL error, read-only violation,
    preprocess error).

    ``profile``: compute the CSV's column profile while it streams (``ExportResult.profile``).
    ``unique_key``: columns whose adjacent values are compared batch by batch (sortedness and
    duplicates, ``ExportResult.key_facts``) for the ``unique`` check.
    ``engine``: ``auto`` / ``c`` / ``python`` (default: ``$DATASET_EXPORT_ENGINE`` or ``auto``); a
    pandas preprocess always runs on the Python engine.
    ``preprocess_api``: ``pandas`` (a DataFrame per chunk) or ``arrow`` (a pyarrow RecordBatch per
    batch, over the engine's raw export: see ``arrow_preprocess``).
    """
    import MySQLdb

    if preprocess_api not in ("pandas", "arrow"):
        raise ExportError(f"unknown preprocess_api {preprocess_api!r}: use pandas or arrow", retryable=False)
    arrow = preprocess is not None and preprocess_api == "arrow"
    if arrow:
        from dataset_registry.arrow_preprocess import require_pyarrow

        require_pyarrow()
        fast, engine_name = _fast_engine(engine)
        engine_name += ", Arrow batches to the preprocess"
    else:
        fast, engine_name = (None, "python (preprocess)") if preprocess else _fast_engine(engine)

    dest = Path(dest)
    partial = dest.with_name(dest.name + ".partial")
    started = time.monotonic()
    conn = connect(conn_params)
    md5 = hashlib.md5()
    rows = read = size = 0  # rows written to the CSV; rows read from the server
    try:
        cursor = conn.cursor()
        try:
            version, sql_mode = session_info(cursor)
        except MySQLdb.Error as exc:
            raise ExportError(f"cannot prepare the export session: {_server_message(exc)}", _retryable(exc)) from None
        try:
            sql_guard.check_query(sql, **sql_guard.modes_from_sql_mode(sql_mode))
        except sql_guard.QueryRefused as exc:
            raise ExportError(str(exc), retryable=False) from None
        log.info("export engine: %s", engine_name)
        if fast is not None:
            try:
                begin_read_only_snapshot(cursor, version=version, query_timeout=query_timeout)
            except MySQLdb.Error as exc:
                raise ExportError(f"query failed: {_server_message(exc)}", _retryable(exc)) from None
            if arrow:
                return _export_fast_arrow(fast, conn, sql, partial, dest, started, preprocess, fetch_rows=fetch_rows,
                                          progress_seconds=progress_seconds, profile=profile, unique_key=unique_key)
            return _export_fast(fast, conn, sql, partial, dest, started, fetch_rows=fetch_rows,
                                progress_seconds=progress_seconds, profile=profile, unique_key=unique_key)
        try:
            begin_read_only_snapshot(cursor, version=version, query_timeout=query_timeout)
            cursor.execute(sql)
        except MySQLdb.Error as exc:
            raise ExportError(f"query failed: {_server_message(exc)}", _retryable(exc)) from None
        if cursor.description is None:
            raise ExportError("the query returned no result set (is it a SELECT?)", retryable=False)
        if arrow:
            return _export_python_arrow(cursor, conn, partial, dest, started, preprocess, fetch_rows=fetch_rows,
                                        progress_seconds=progress_seconds, profile=profile, unique_key=unique_key)
        columns = [d[0] for d in cursor.description]
        column_types = mysql_types.type_names(cursor.description, _field_flags(cursor))
        plain = [d[1] in _PLAIN_TYPES for d in cursor.description]
        formatter = csv_format.compile_row_formatter(plain)
        profiler = tracker = None
        if preprocess:
            from dataset_registry.column_profile import FrameProfiler

            profiler = FrameProfiler(dict(zip(columns, column_types))) if profile else None
            chunk_to_text = _preprocessing_writer(preprocess, columns, profiler, unique_key, column_types)
        else:
            chunk_to_text = None
            if profile:
                from dataset_registry.column_profile import StreamProfiler

                profiler = StreamProfiler(columns, column_types, _precisions(cursor.description))
            if unique_key:
                from dataset_registry.column_profile import KeyTracker

                tracker = KeyTracker(unique_key, columns, column_types)
        header = csv_format.header_line(columns)
        last_log = started
        with open(partial, "wb") as out:
            if chunk_to_text is None:
                data = header.encode("utf-8")
                out.write(data)
                md5.update(data)
                size += len(data)
            wrote_header = chunk_to_text is None
            while True:
                try:
                    batch = cursor.fetchmany(fetch_rows)
                except MySQLdb.Error as exc:
                    raise ExportError(f"reading the result failed after {read} rows: {_server_message(exc)}") from None
                except UnicodeDecodeError as exc:
                    raise _not_utf8(exc, read) from None
                if not batch:
                    break
                read += len(batch)
                if chunk_to_text is None:
                    text = "".join(map(formatter, batch))
                    rows += len(batch)
                    if profiler is not None:
                        profiler.add_batch(batch)
                    if tracker is not None:
                        tracker.add_rows(batch)
                else:  # the preprocess may drop or add rows: count what is written
                    text, written = chunk_to_text(batch, with_header=not wrote_header)
                    rows += written
                    wrote_header = True
                data = text.encode("utf-8")
                out.write(data)
                md5.update(data)
                size += len(data)
                now = time.monotonic()
                if now - last_log >= progress_seconds:
                    last_log = now
                    elapsed = now - started
                    log.info("exported %d rows (%d read), %.1f MB, %.0f rows/s", rows, read, size / 1e6, read / elapsed)
            if not wrote_header:  # preprocess on an empty result: header of the raw columns
                data = header.encode("utf-8")
                out.write(data)
                md5.update(data)
                size += len(data)
            out.flush()
            os.fsync(out.fileno())
        _finish_single_result(cursor.nextset, conn, partial, dest)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        message = disk_problem(exc, partial, "writing the export")
        if message is None:
            raise
        raise ExportError(message) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a dead connection cannot be closed twice
            pass
    elapsed = time.monotonic() - started
    log.info("export done: %d rows written (%d read), %.1f MB in %.1f s", rows, read, size / 1e6, elapsed)
    if preprocess:
        csv_columns = chunk_to_text.header or list(columns)
        key_facts = chunk_to_text.key_facts()
    else:
        csv_columns = list(columns)
        key_facts = tracker.facts() if tracker is not None else None
    col_profile = None
    if profiler is not None:
        col_profile = profiler.profile()
        if not col_profile:  # preprocess on an empty result: the raw columns' header was written
            col_profile = {c: {"type": t, "nulls": 0, "empty": 0, "min": None, "max": None, "distinct": 0}
                           for c, t in zip(columns, column_types)}
    return ExportResult(path=dest, rows=rows, bytes=size, md5=md5.hexdigest(), columns=columns, seconds=elapsed,
                        column_types=column_types, csv_columns=csv_columns, profile=col_profile,
                        key_facts=key_facts)


def _fast_result(fast, conn, sql: str):
    """Run ``sql`` on the prepared connection and start the C engine's unbuffered result."""
    import MySQLdb

    try:
        conn.query(sql.encode("utf-8"))  # as cursor.execute sends it (MySQLdb's errors, codes and all)
        result = fast.use_result(conn)
    except (MySQLdb.Error, fast.Error) as exc:
        raise ExportError(f"query failed: {_server_message(exc)}", _retryable(exc)) from None
    if result is None:
        raise ExportError("the query returned no result set (is it a SELECT?)", retryable=False)
    return result


def _abandon(conn, result) -> None:
    """A failed C-engine export: close the connection before the result, since freeing an unfinished
    unbuffered result would otherwise read (and discard) the rest of the stream first."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already closed
        pass
    result.close()


def _export_fast(fast, conn, sql: str, partial: Path, dest: Path, started: float, *, fetch_rows: int,
                 progress_seconds: float, profile: bool, unique_key: list[str] | None) -> ExportResult:
    """The C engine's export, on a connection already in its read-only snapshot (see export_query,
    whose handlers remove ``partial`` and close ``conn`` on any failure)."""
    from dataset_registry import column_profile

    result = _fast_result(fast, conn, sql)
    try:
        fields = result.fields  # (name, type, flags, charsetnr, length, decimals)
        columns = [f[0] for f in fields]
        column_types = mysql_types.type_names([(f[0], f[1]) for f in fields], [f[2] for f in fields])
        is_bytes = [is_bytes_field(f[1], f[3]) for f in fields]
        precisions = [int(f[4]) for f in fields]
        # Per column: (plain, bytes -> 0x hex, how min/max compare, count empty values). The reference
        # counts "" only when the value's Python type matches the type name's binary-ness (a text column
        # with a *_bin collation is named VARBINARY and its "" are not counted): the same here.
        spec = [(f[1] in _PLAIN_TYPES, b, column_profile.compare_kind(t, p),
                 t not in column_profile.NEVER_EMPTY_TYPES and (t in column_profile.BINARY_TYPES) == b)
                for f, b, t, p in zip(fields, is_bytes, column_types, precisions)]
        tracker = column_profile.KeyTracker(unique_key, columns, column_types) if unique_key else None
        key_pos = [] if tracker is None or tracker.missing else list(tracker.positions)
        key_kinds = [column_profile.compare_kind(column_types[p]) for p in key_pos]
        md5 = hashlib.md5()
        state = {"size": 0, "last_log": started}
        with open(partial, "wb") as out:

            def write(data: bytes, read: int) -> None:
                out.write(data)
                md5.update(data)
                state["size"] += len(data)
                now = time.monotonic()
                if now - state["last_log"] >= progress_seconds:
                    state["last_log"] = now
                    log.info("exported %d rows (%d read), %.1f MB, %.0f rows/s", read, read, state["size"] / 1e6,
                             read / (now - started))

            write(csv_format.header_line(columns).encode("utf-8"), 0)
            try:
                rows, raw_profile, raw_key = result.stream(write, spec, profile, key_pos, key_kinds, fetch_rows,
                                                           FAST_BUFFER_BYTES)
            except fast.Error as exc:
                raise ExportError(f"reading the result failed after {result.rows} rows: {_server_message(exc)}") from None
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc, result.rows) from None
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        _abandon(conn, result)
        raise
    result.close()
    # conn.next_result() is what cursor.nextset() calls: -1 when there is no other result set
    _finish_single_result(lambda: conn.next_result() != -1, conn, partial, dest)
    elapsed = time.monotonic() - started
    size = state["size"]
    log.info("export done: %d rows written (%d read), %.1f MB in %.1f s", rows, rows, size / 1e6, elapsed)
    col_profile = None
    if raw_profile is not None:
        col_profile = column_profile.profile_from_engine(columns, column_types, is_bytes, raw_profile)
    key_facts = None
    if tracker is not None:
        if raw_key is not None:
            tracker.set_from_engine(*raw_key, is_bytes=[is_bytes[p] for p in key_pos])
        key_facts = tracker.facts()
    return ExportResult(path=dest, rows=rows, bytes=size, md5=md5.hexdigest(), columns=columns, seconds=elapsed,
                        column_types=column_types, csv_columns=list(columns), profile=col_profile, key_facts=key_facts)


ARROW_BATCH_BYTES = 4 << 20  # the C engine hands the Arrow preprocess batches of about this many value bytes


def _export_fast_arrow(fast, conn, sql: str, partial: Path, dest: Path, started: float, preprocess: Callable, *,
                       fetch_rows: int, progress_seconds: float, profile: bool,
                       unique_key: list[str] | None) -> ExportResult:
    """The C engine's rows as Arrow batches to an Arrow preprocess (``arrow_preprocess.ArrowOutput``),
    on a connection already in its read-only snapshot (``export_query``'s handlers remove ``partial``
    and close ``conn`` on any failure)."""
    import pyarrow as pa

    from dataset_registry.arrow_preprocess import ArrowOutput, arrow_batch, arrow_failed

    result = _fast_result(fast, conn, sql)
    output = None
    try:
        fields = result.fields
        columns = [f[0] for f in fields]
        column_types = mysql_types.type_names([(f[0], f[1]) for f in fields], [f[2] for f in fields])
        spec = [(f[1] in _PLAIN_TYPES, is_bytes_field(f[1], f[3])) for f in fields]
        with open(partial, "wb") as out:
            output = ArrowOutput(preprocess, out, columns, column_types, profile=profile, unique_key=unique_key,
                                 progress_seconds=progress_seconds, started=started,
                                 precisions=[int(f[4]) for f in fields])
            try:
                result.batches(lambda raw, n, _read: output.add(arrow_batch(columns, raw, n)), spec,
                               fetch_rows, ARROW_BATCH_BYTES)
                output.finish()
            except fast.Error as exc:
                raise ExportError(f"reading the result failed after {result.rows} rows: {_server_message(exc)}") from None
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc, result.rows) from None
            except pa.ArrowException as exc:
                raise arrow_failed(preprocess, exc, output.read) from None
            finally:
                output.close()
    except BaseException:
        _abandon(conn, result)
        raise
    result.close()
    done = output.result(dest, time.monotonic() - started)  # before the rename: a failure leaves nothing
    _finish_single_result(lambda: conn.next_result() != -1, conn, partial, dest)
    return done


def _export_python_arrow(cursor, conn, partial: Path, dest: Path, started: float, preprocess: Callable, *,
                         fetch_rows: int, progress_seconds: float, profile: bool,
                         unique_key: list[str] | None) -> ExportResult:
    """Without the C engine: the Python engine's rows (text as MySQLdb decoded it, binary as 0x hex)
    as Arrow batches to an Arrow preprocess; ``export_query``'s handlers clean up on failure."""
    import MySQLdb
    import pyarrow as pa

    from dataset_registry.arrow_preprocess import ArrowOutput, arrow_failed

    columns = [d[0] for d in cursor.description]
    column_types = mysql_types.type_names(cursor.description, _field_flags(cursor))
    with open(partial, "wb") as out:
        output = ArrowOutput(preprocess, out, columns, column_types, profile=profile, unique_key=unique_key,
                             progress_seconds=progress_seconds, started=started,
                             precisions=_precisions(cursor.description))
        try:
            while True:
                try:
                    rows = cursor.fetchmany(fetch_rows)
                except MySQLdb.Error as exc:
                    raise ExportError(f"reading the result failed after {output.read} rows: "
                                      f"{_server_message(exc)}") from None
                except UnicodeDecodeError as exc:
                    raise _not_utf8(exc, output.read) from None
                if not rows:
                    break
                arrays = [pa.array([csv_format.binary_text(v) if v.__class__ is bytes else v for v in values],
                                   pa.string()) for values in zip(*rows)]
                output.add(pa.RecordBatch.from_arrays(arrays, names=columns))
            output.finish()
        except pa.ArrowException as exc:
            raise arrow_failed(preprocess, exc, output.read) from None
        finally:
            output.close()
    result = output.result(dest, time.monotonic() - started)
    _finish_single_result(cursor.nextset, conn, partial, dest)
    return result


def _finish_single_result(has_more: Callable[[], Any], conn, partial: Path, dest: Path) -> None:
    """Both engines end the same way: a second result set refuses the export (one statement only),
    the read-only snapshot is ended, and the complete file takes its real name."""
    import MySQLdb

    try:
        more = has_more()
    except MySQLdb.Error as exc:
        raise ExportError(f"query refused (one statement): a second result failed: {_server_message(exc)}",
                          retryable=False) from None
    if more:
        raise ExportError(
            "query refused (one statement): the query returned more than one result set (a CALL or "
            "several statements?); only one SELECT may run. Nothing was published.", retryable=False)
    try:
        conn.rollback()  # read-only snapshot: nothing to commit
    except MySQLdb.Error:
        pass
    os.replace(partial, dest)


def _not_utf8(exc: UnicodeDecodeError, rows_before: int) -> ExportError:
    """The server sent a text value that is not valid UTF-8 (e.g. ``_utf8mb4 X'EDA080'``, a surrogate):
    the CSV must be UTF-8, so the export stops (both engines, the same rule); a retry cannot help."""
    bad = exc.object[max(0, exc.start - 8):exc.end + 8]
    return ExportError(
        f"a text value after row {rows_before} is not valid UTF-8 ({exc.reason} at byte {exc.start}, near {bad!r}); "
        "the CSV must be UTF-8: fix the data, or convert the column in the query (e.g. HEX(col), or "
        "CAST(col AS BINARY) to export it as 0x hex)", retryable=False)


def _precisions(description) -> list[int | None]:
    """The declared precision per column (DECIMAL digits), from a DB-API description."""
    out = []
    for d in description:
        try:
            out.append(int(d[4]) if d[4] is not None else None)
        except (TypeError, ValueError, IndexError):
            out.append(None)
    return out


def _field_flags(cursor) -> list[int] | None:
    """The result's column flags (BINARY tells BLOB from TEXT); None where the driver hides them."""
    result = getattr(cursor, "_result", None)
    try:
        return list(result.field_flags()) if result is not None else None
    except Exception:  # noqa: BLE001 - only the type names get coarser
        return None


def callable_name(fn: Callable) -> str:
    """``module:qualname`` of a callable, for messages."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


class _ChunkWriter:
    """The preprocess writer's callable, plus what it learned: the header and the key facts."""

    def __init__(self, fn, state, trackers):
        self._fn, self._state, self._trackers = fn, state, trackers

    def __call__(self, batch, with_header: bool):
        return self._fn(batch, with_header)

    @property
    def header(self) -> list[str] | None:
        return self._state["header"]

    def key_facts(self) -> dict | None:
        tracker = self._trackers.get("key")
        if tracker is None:
            return None if self._trackers.get("columns") is None else {
                "columns": list(self._trackers["columns"]), "missing": [], "nulls": 0, "duplicates": 0,
                "unsorted": 0, "example": None}
        return tracker.facts()


def _preprocessing_writer(preprocess: Callable, columns: list[str], profiler=None,
                          unique_key: list[str] | None = None,
                          column_types: list[str] | None = None) -> _ChunkWriter:
    """Wrap a DataFrame -> DataFrame callable; the first chunk's output columns become the CSV header.

    Every later chunk must return exactly those columns in that order (else the CSV would be ragged).
    Anything the callable raises is the user's code failing on this data: deterministic, not retried.

    Text columns are pandas' ``str`` dtype with Python storage, whatever pandas' default: with pyarrow
    installed pandas 3 would back them with Arrow, converting every value into Arrow and back out for
    the CSV (about 45% slower here). Projects that want Arrow use ``preprocess_api: arrow``.
    """
    import pandas as pd

    python_strings = _python_string_storage(pd)

    name = callable_name(preprocess)
    state: dict[str, Any] = {"header": None, "formatter": None, "chunk": 0, "rows": 0}
    trackers: dict[str, Any] = {"columns": unique_key}

    def chunk_to_text(batch, with_header: bool) -> tuple[str, int]:
        with python_strings():
            return _chunk_to_text(batch, with_header)

    def _chunk_to_text(batch, with_header: bool) -> tuple[str, int]:
        state["chunk"] += 1
        chunk, first_row = state["chunk"], state["rows"] + 1
        state["rows"] += len(batch)
        where = f"chunk {chunk} (rows {first_row}-{state['rows']})"
        frame = pd.DataFrame.from_records(batch, columns=columns)
        try:
            result = preprocess(frame)
        except Exception as exc:  # noqa: BLE001 - user code: report it, never retry it
            raise ExportError(f"preprocess {name} raised {type(exc).__name__} on {where}: {exc}",
                              retryable=False) from exc
        if not isinstance(result, pd.DataFrame):
            raise ExportError(f"preprocess {name} returned {type(result).__name__} on {where}, "
                              "expected a pandas DataFrame", retryable=False)
        names = [str(c) for c in result.columns]
        if state["header"] is None:
            state["header"] = names
            # compiled once; every column checked for quoting
            state["formatter"] = csv_format.compile_row_formatter([False] * len(names))
        elif names != state["header"]:
            raise ExportError(
                f"preprocess {name} returned different columns on {where}: expected {state['header']} "
                f"(the header, from chunk 1), got {names}. A preprocess must return the same columns in "
                "the same order for every chunk.", retryable=False)
        body = "".join(map(state["formatter"], result.itertuples(index=False, name=None)))
        if profiler is not None:
            profiler.add_frame(result)
        if unique_key:
            if "key" not in trackers:
                from dataset_registry.column_profile import KeyTracker, pandas_type_name

                query_types = dict(zip(columns, column_types or []))
                types = [pandas_type_name(result.dtypes.iloc[i], query_types.get(n)) for i, n in enumerate(names)]
                trackers["key"] = KeyTracker(unique_key, names, types)
            trackers["key"].add_frame(result)
        return ((csv_format.header_line(names) + body) if with_header else body), len(result)

    return _ChunkWriter(chunk_to_text, state, trackers)


def _python_string_storage(pd) -> Callable:
    """A context in which pandas builds ``str`` columns with Python storage (pandas 2 and 3), or no-op."""
    import contextlib

    try:
        pd.get_option("mode.string_storage")
    except (KeyError, pd.errors.OptionError):  # an older pandas without the option
        return contextlib.nullcontext
    return lambda: pd.option_context("mode.string_storage", "python")
