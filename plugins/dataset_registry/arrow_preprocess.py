"""The vectorized preprocess (``preprocess_api: arrow``): Arrow record batches in, Arrow out.

Why this shape: the pandas API builds a DataFrame of Python strings per chunk and formats its output
row by row in Python, which costs several times the export itself. Here the export engine hands the
rows over as Arrow ``string`` columns (the C engine builds them from the server's stream, see
``mysql_export._export_fast_arrow``; without it, the Python engine's rows are converted per batch);
the user's function returns a ``pyarrow.RecordBatch`` or ``Table`` per batch; ``ArrowOutput`` prints,
quotes, profiles and key-checks the output per column (``arrow_csv``, ``arrow_profile``). No per-row
Python runs on the C engine's path unless the user's function does it.

The same guarantees as every export: one read-only snapshot, the output written to ``dest.partial``
and renamed only when complete (by ``mysql_export``, which removes it on any failure), user-code
failures reported with the batch's rows and never retried, progress in the log.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from dataset_registry import arrow_csv, csv_format
from dataset_registry.mysql_export import ExportError, ExportResult, callable_name

log = logging.getLogger(__name__)


def require_pyarrow() -> None:
    """pyarrow is an optional dependency (the provider's ``arrow`` extra): say so in words."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.compute  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"preprocess_api 'arrow' needs pyarrow on the worker ({exc}): install "
                          "'airflow-provider-dataset-registry[arrow]' (or pyarrow)", retryable=False) from None


def _as_batches(result: Any, name: str, where: str) -> list:
    import pyarrow as pa

    if isinstance(result, pa.RecordBatch):
        return [result]
    if isinstance(result, pa.Table):
        return result.combine_chunks().to_batches() or [pa.RecordBatch.from_pylist([], schema=result.schema)]
    raise ExportError(f"preprocess {name} returned {type(result).__name__} on {where}, expected a "
                      "pyarrow.RecordBatch or pyarrow.Table", retryable=False)


class _BackgroundWriter:
    """Writes and hashes each block on one thread while the next batch is computed (file writes and
    MD5 of large blocks release the GIL): at most one block in flight, its error raised on the next
    call, so nothing is lost or reordered."""

    def __init__(self, out, md5):
        from concurrent.futures import ThreadPoolExecutor

        self._out, self._md5 = out, md5
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="csv-writer")
        self._pending = None

    def _write(self, data) -> None:
        self._out.write(data)
        self._md5.update(data)

    def write(self, data) -> None:
        self.drain()
        self._pending = self._pool.submit(self._write, data)

    def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            if self._pending is not None:
                self._pending.exception()  # wait: the file must not be closed under a write
        finally:
            self._pool.shutdown(wait=True)


class ArrowOutput:
    """Runs the preprocess on each input batch and writes, profiles and key-checks what it returns.

    Fed by either reader (the C engine's Arrow batches, or the raw CSV read back); ``finish`` ends the
    file (header of the query's columns for an empty result, flush, fsync) and returns what was learned.

    :param out: the open ``.partial`` file; ``columns``/``column_types``/``precisions``: the query's
    """

    def __init__(self, preprocess: Callable, out, columns: list[str], column_types: list[str], *,
                 profile: bool, unique_key: list[str] | None, progress_seconds: float, started: float,
                 precisions: list[int | None] | None = None):
        require_pyarrow()
        from dataset_registry.arrow_profile import ArrowProfiler

        self.preprocess, self.name = preprocess, callable_name(preprocess)
        self.columns, self.column_types = list(columns), list(column_types)
        self.query_types = dict(zip(columns, column_types))
        self.profiler = ArrowProfiler(self.query_types, dict(zip(columns, precisions or []))) if profile else None
        self.unique_key = unique_key
        self.tracker = None
        self.header: list[str] | None = None
        self.md5 = hashlib.md5()
        self.rows = self.read = self.size = self.batch = 0
        self._out = out
        self._writer = _BackgroundWriter(out, self.md5)
        self._progress, self._started, self._last_log = progress_seconds, started, time.monotonic()

    def _write(self, data) -> None:
        self._writer.write(data)
        self.size += len(data)

    def add(self, batch) -> None:
        """One input batch (every column ``string``, named as the query's columns)."""
        self.batch += 1
        where = f"batch {self.batch} (rows {self.read + 1}-{self.read + batch.num_rows})"
        self.read += batch.num_rows
        try:
            result = self.preprocess(batch)
        except Exception as exc:  # noqa: BLE001 - user code: report it, never retry it
            raise ExportError(f"preprocess {self.name} raised {type(exc).__name__} on {where}: {exc}",
                              retryable=False) from exc
        for part in _as_batches(result, self.name, where):
            self._add_output(part, where)
        now = time.monotonic()
        if now - self._last_log >= self._progress:
            self._last_log = now
            log.info("preprocessed %d rows, wrote %d rows, %.1f MB, %.0f rows/s", self.read, self.rows,
                     self.size / 1e6, self.read / max(now - self._started, 1e-9))

    def _add_output(self, part, where: str) -> None:
        from dataset_registry.arrow_profile import ArrowKeyTracker, arrow_type_name

        names = [str(c) for c in part.schema.names]
        if self.header is None:
            if not names:
                raise ExportError(f"preprocess {self.name} returned no columns on {where}", retryable=False)
            self.header = names
            self._write(csv_format.header_line(names).encode("utf-8"))
            if self.unique_key:
                types = [arrow_type_name(part.column(i).type, self.query_types.get(n)) for i, n in enumerate(names)]
                self.tracker = ArrowKeyTracker(self.unique_key, names, types)
        elif names != self.header:
            raise ExportError(
                f"preprocess {self.name} returned different columns on {where}: expected {self.header} (the "
                f"header, from batch 1), got {names}. A preprocess must return the same columns in the same "
                "order for every batch.", retryable=False)
        arrays = [arrow_csv.normalized(a) for a in part.columns]
        try:
            texts = [arrow_csv.column_text(a, n) for a, n in zip(arrays, names)]
            self._write(arrow_csv.batch_bytes(texts))
        except arrow_csv.ArrowFormatError as exc:
            raise ExportError(f"preprocess {self.name} on {where}: {exc}", retryable=False) from None
        self.rows += part.num_rows
        if self.profiler is not None:
            self.profiler.add_batch(names, arrays, [t for t, _ in texts])
        if self.tracker is not None:
            self.tracker.add_batch(arrays, [t for t, _ in texts])

    def finish(self) -> None:
        """Everything written and on disk (header of the query's columns when nothing came out)."""
        if self.header is None:
            self.header = list(self.columns)
            self._write(csv_format.header_line(self.header).encode("utf-8"))
        self._writer.drain()
        self._out.flush()
        os.fsync(self._out.fileno())

    def close(self) -> None:
        self._writer.close()

    def result(self, dest: Path, seconds: float) -> ExportResult:
        col_profile = None
        if self.profiler is not None:
            col_profile = self.profiler.profile() or {
                c: {"type": t, "nulls": 0, "empty": 0, "min": None, "max": None, "distinct": 0}
                for c, t in zip(self.columns, self.column_types)}
        key_facts = None
        if self.unique_key:
            key_facts = self.tracker.facts() if self.tracker is not None else {
                "columns": list(self.unique_key), "missing": [], "nulls": 0, "duplicates": 0, "unsorted": 0,
                "example": None}
        log.info("export done: %d rows written (%d read), %.1f MB in %.1f s", self.rows, self.read, self.size / 1e6,
                 seconds)
        return ExportResult(path=dest, rows=self.rows, bytes=self.size, md5=self.md5.hexdigest(), columns=self.columns,
                            seconds=seconds, column_types=self.column_types, csv_columns=list(self.header or []),
                            profile=col_profile, key_facts=key_facts)


def arrow_batch(columns: list[str], raw_columns: list[tuple], rows: int):
    """A RecordBatch over the C engine's buffers (``Result.batches``), without copying them."""
    import pyarrow as pa

    arrays = [pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(values),
                                          None if valid is None else pa.py_buffer(valid), nulls)
              for offsets, values, valid, nulls in raw_columns]
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def arrow_failed(preprocess: Callable, exc: BaseException, rows: int) -> ExportError:
    return ExportError(f"preprocess {callable_name(preprocess)}: Arrow failed on the output after {rows} rows: "
                       f"{type(exc).__name__}: {exc}", retryable=False)
