"""Stream a query result from MySQL/MariaDB into the contract's CSV, in bounded memory.

Why this shape:
- An unbuffered server-side cursor (``mysql_use_result``) plus ``fetchmany`` keeps memory flat.
- An empty converter map makes MySQLdb hand back values exactly as the text protocol prints them
  (``12.50`` for DECIMAL(10,2), ``2024-01-02 03:04:05.123456`` for DATETIME(6)), decoded in C.
- Session ``time_zone='+00:00'`` prints TIMESTAMP in UTC whatever the server default.
- ``START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`` gives one snapshot for the whole read.
- The MD5 of the bytes is computed while writing, so nothing re-reads the file to hash it.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dataset_registry import csv_format

log = logging.getLogger(__name__)

FETCH_ROWS = 20_000
PROGRESS_SECONDS = 10.0

# Field types whose text never needs CSV quoting and is never the empty string.
_PLAIN_TYPES = {0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 246}  # numbers, dates, times, years


# Server errors that a retry cannot fix (syntax, unknown table/column/database, access denied).
PERMANENT_ERRORS = {1044, 1045, 1049, 1054, 1064, 1142, 1146, 1149, 1242, 1267, 1305}


class ExportError(RuntimeError):
    """The export failed; the message carries the server's own words."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


def _retryable(exc: BaseException) -> bool:
    args = getattr(exc, "args", ())
    return not (args and isinstance(args[0], int) and args[0] in PERMANENT_ERRORS)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    bytes: int
    md5: str
    columns: list[str]
    seconds: float


def load_callable(spec: str, search_path: Path | None = None) -> Callable:
    """Import ``module:function``; ``search_path`` (the include/ folder) is tried first."""
    module_name, _, func_name = spec.partition(":")
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
        return getattr(module, func_name)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"cannot load callable {spec!r}: {exc}", retryable=False) from exc


def _text_converters() -> dict:
    """Every non-binary type decoded to str in C; strings are decoded by use_unicode."""
    from MySQLdb.constants import FIELD_TYPE

    keep_raw = {"BLOB", "TINY_BLOB", "MEDIUM_BLOB", "LONG_BLOB", "STRING", "VAR_STRING", "VARCHAR", "BIT", "GEOMETRY", "JSON"}
    return {getattr(FIELD_TYPE, n): str for n in dir(FIELD_TYPE) if n.isupper() and n not in keep_raw}


def connect(params: dict[str, Any]):
    """A MySQLdb connection for exporting: utf8mb4, raw text values, unbuffered cursor."""
    import MySQLdb
    import MySQLdb.cursors

    args = dict(params)
    args.update(charset="utf8mb4", use_unicode=True, conv=_text_converters(),
                cursorclass=MySQLdb.cursors.SSCursor)
    args.setdefault("connect_timeout", 20)
    try:
        return MySQLdb.connect(**args)
    except MySQLdb.Error as exc:
        where = params.get("unix_socket") or f"{params.get('host')}:{params.get('port', 3306)}"
        raise ExportError(f"cannot connect to MySQL at {where}: {_server_message(exc)}", _retryable(exc)) from None


def _server_message(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"MySQL error {args[0]}: {args[1]}"
    return str(exc)


def _set_statement_timeout(cursor, seconds: int | None) -> None:
    if not seconds:
        return
    cursor.execute("SELECT VERSION()")
    version = cursor.fetchall()[0][0]
    if "MariaDB" in version:
        cursor.execute(f"SET SESSION max_statement_time = {int(seconds)}")
    else:
        cursor.execute(f"SET SESSION max_execution_time = {int(seconds) * 1000}")


def export_query(
    conn_params: dict[str, Any],
    sql: str,
    dest: Path,
    *,
    preprocess: Callable | None = None,
    query_timeout: int | None = None,
    fetch_rows: int = FETCH_ROWS,
    progress_seconds: float = PROGRESS_SECONDS,
) -> ExportResult:
    """Run ``sql`` and write the CSV to ``dest`` (written to ``dest.partial``, renamed when complete).

    On any failure the partial file is removed and ExportError carries the server's message.
    """
    import MySQLdb

    dest = Path(dest)
    partial = dest.with_name(dest.name + ".partial")
    started = time.monotonic()
    conn = connect(conn_params)
    md5 = hashlib.md5()
    rows = size = 0
    try:
        cursor = conn.cursor()
        try:
            cursor.execute("SET SESSION time_zone = '+00:00'")
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _set_statement_timeout(cursor, query_timeout)
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cursor.execute(sql)
        except MySQLdb.Error as exc:
            raise ExportError(f"query failed: {_server_message(exc)}", _retryable(exc)) from None
        if cursor.description is None:
            raise ExportError("the query returned no result set (is it a SELECT?)", retryable=False)
        columns = [d[0] for d in cursor.description]
        plain = [d[1] in _PLAIN_TYPES for d in cursor.description]
        formatter = csv_format.compile_row_formatter(plain)
        chunk_to_text = _preprocessing_writer(preprocess, columns) if preprocess else None
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
                    raise ExportError(f"reading the result failed after {rows} rows: {_server_message(exc)}") from None
                if not batch:
                    break
                rows += len(batch)
                if chunk_to_text is None:
                    text = "".join(map(formatter, batch))
                else:
                    text = chunk_to_text(batch, with_header=not wrote_header)
                    wrote_header = True
                data = text.encode("utf-8")
                out.write(data)
                md5.update(data)
                size += len(data)
                now = time.monotonic()
                if now - last_log >= progress_seconds:
                    last_log = now
                    elapsed = now - started
                    log.info("exported %d rows, %.1f MB, %.0f rows/s", rows, size / 1e6, rows / elapsed)
            if not wrote_header:  # preprocess on an empty result: header of the raw columns
                data = header.encode("utf-8")
                out.write(data)
                md5.update(data)
                size += len(data)
            out.flush()
            os.fsync(out.fileno())
        server_rows = _server_row_count(cursor)
        if server_rows is not None and server_rows != rows:
            raise ExportError(f"row count mismatch: the server returned {server_rows} rows, {rows} were written")
        try:
            conn.rollback()  # read-only snapshot: nothing to commit
        except MySQLdb.Error:
            pass
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a dead connection cannot be closed twice
            pass
    elapsed = time.monotonic() - started
    log.info("export done: %d rows, %.1f MB in %.1f s", rows, size / 1e6, elapsed)
    return ExportResult(path=dest, rows=rows, bytes=size, md5=md5.hexdigest(), columns=columns, seconds=elapsed)


def _server_row_count(cursor) -> int | None:
    """Rows the server sent for an unbuffered result (known once the result is exhausted)."""
    result = getattr(cursor, "_result", None)
    if result is None:
        return None
    try:
        return int(result.num_rows())
    except Exception:  # noqa: BLE001 - not all client versions expose it
        return None


def _preprocessing_writer(preprocess: Callable, columns: list[str]):
    """Wrap a DataFrame -> DataFrame callable; its output columns become the CSV header."""
    import pandas as pd

    formatters: dict[tuple, Callable] = {}

    def chunk_to_text(batch, with_header: bool) -> str:
        frame = pd.DataFrame.from_records(batch, columns=columns)
        result = preprocess(frame)
        if not isinstance(result, pd.DataFrame):
            raise ExportError(f"preprocess returned {type(result).__name__}, expected a pandas DataFrame", retryable=False)
        names = tuple(str(c) for c in result.columns)
        formatter = formatters.get(names)
        if formatter is None:  # compiled once per output shape; every column checked for quoting
            formatter = formatters[names] = csv_format.compile_row_formatter([False] * len(names))
        body = "".join(map(formatter, result.itertuples(index=False, name=None)))
        return (csv_format.header_line(list(names)) + body) if with_header else body

    return chunk_to_text
