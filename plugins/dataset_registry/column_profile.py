"""The profile of a version, computed while its CSV streams (no second pass over the file).

Per CSV column: ``{type, nulls, empty, min, max, distinct}``:
- ``type``: the MySQL type name (``mysql_types``); for a preprocess output see ``pandas_type_name``;
- ``nulls``: SQL NULLs (empty unquoted fields); ``empty``: empty strings (``""`` fields);
- ``min`` / ``max``: over the non-NULL values, as the CSV prints them: numbers compared numerically
  (integers as int, DECIMAL exactly as Decimal, FLOAT/DOUBLE as float), binary values by their bytes
  (printed ``0x...``), everything else as text: dates and datetimes sort right as ISO text, strings by
  code point, which is UTF-8 byte order. Values longer than ``MAX_VALUE_CHARS`` (200) characters are
  cut to that length (the printed min/max is then a prefix); ``null`` when the column has no value;
- ``distinct``: approximate number of distinct non-NULL values: exact up to ``SKETCH_K`` (4096)
  distinct values, beyond that a K-minimum-values sketch over 64-bit hashes (relative standard error
  about 1/sqrt(K-2) = 1.6%). Hashes are Python's ``hash()`` of the value within one export process
  (every batch of one export hashes the same way, which is all a KMV sketch needs to merge batches).

Two implementations with the same semantics: this module (the reference, used with a preprocess and
when the C engine is not built) and ``_fastexport.c`` (the C export engine: per row in C, its own 64-bit
hash for ``distinct``, the same sketch size and estimate via ``kmv_estimate``; ``compare_kind`` and
``profile_from_engine`` connect the two). tests/test_export_engine.py checks they agree.

In this module, all per-value work is done per batch by C-level builtins (``zip(*batch)``, ``list.count``, ``min``/
``max`` with a key, ``map(hash)``/``set``, ``heapq.nsmallest``) or, with a preprocess, by pandas on
the whole chunk. The unique-key facts (``KeyTracker``) compare adjacent keys per batch with ``map``.
Nothing here imports Airflow.
"""
from __future__ import annotations

import operator
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Callable, Sequence

MAX_VALUE_CHARS = 200  # min/max text longer than this is cut (a 500-column profile stays small)
SKETCH_K = 4096  # KMV sketch size: exact below it, ~1.6% relative standard error above
_HALF = 1 << 63
_SPAN = 1 << 64

INTEGER_TYPES = {"TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT", "YEAR"}
DECIMAL_TYPES = {"DECIMAL"}
FLOAT_TYPES = {"FLOAT", "DOUBLE"}
BINARY_TYPES = {"BINARY", "VARBINARY", "TINYBLOB", "BLOB", "MEDIUMBLOB", "LONGBLOB", "BIT", "GEOMETRY"}
# Types whose text is never the empty string: the empty count is known to be 0 without counting.
NEVER_EMPTY_TYPES = INTEGER_TYPES | DECIMAL_TYPES | FLOAT_TYPES | {"DATE", "DATETIME", "TIMESTAMP", "TIME", "NULL"}

_not_none = partial(operator.is_not, None)


def sort_key_for(mysql_type: str | None, precision: int | None = None) -> Callable | None:
    """How values of a column compare: int / Decimal / float for numbers, None (as they are) otherwise.

    ``precision`` is the column's declared display length (cursor.description[4]: digits plus sign
    and point, so never below the digit count): a DECIMAL of at most 15 of it compares as float
    (exact: distinct decimals of 15 significant digits are distinct, equally ordered doubles, and
    float() is 3x cheaper than Decimal()); a longer one as Decimal."""
    if mysql_type in INTEGER_TYPES:
        return int
    if mysql_type in DECIMAL_TYPES:
        return float if precision is not None and 0 < precision <= 15 else Decimal
    if mysql_type in FLOAT_TYPES:
        return float
    return None


def compare_kind(mysql_type: str | None, precision: int | None = None) -> int:
    """How the C engine (``_fastexport``) compares a column's values, matching ``sort_key_for``:
    1 = exact decimal text (int and Decimal; DECIMAL compared as float is exact for its precision),
    2 = double (FLOAT/DOUBLE), 0 = bytes (text by UTF-8 byte order = code point order; binary)."""
    if mysql_type in INTEGER_TYPES or mysql_type in DECIMAL_TYPES:
        return 1
    if mysql_type in FLOAT_TYPES:
        return 2
    return 0


def profile_from_engine(columns: Sequence[str], types: Sequence[str], is_bytes: Sequence[bool],
                        raw: Sequence[tuple]) -> dict[str, dict]:
    """The profile from the C engine's per-column facts (nulls, empty, min, max, saturated, kept
    hashes): min/max printed as ``_printed`` prints them, distinct by ``kmv_estimate`` (``DistinctSketch``'s formula)."""
    out = {}
    for name, mysql_type, binary, (nulls, empty, low, high, saturated, kept) in zip(columns, types, is_bytes, raw):

        def printed(value):
            if value is None:
                return None
            return _printed(value if binary else value.decode("utf-8"))

        distinct = kmv_estimate(SKETCH_K, len(kept), kept[-1] if kept else 0, bool(saturated))
        out[name] = {"type": mysql_type, "nulls": nulls, "empty": empty, "min": printed(low), "max": printed(high),
                     "distinct": distinct}
    return out


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS]


def _printed(value: Any) -> str:
    """A value as the CSV prints it (binary as 0x hex, floats with repr), cut to MAX_VALUE_CHARS."""
    from dataset_registry.csv_format import binary_text

    if isinstance(value, (bytes, bytearray, memoryview)):
        return _cut(binary_text(bytes(value)))
    if isinstance(value, float):
        return repr(value)
    return _cut(value if isinstance(value, str) else str(value))


class DistinctSketch:
    """Distinct count of hashed values: exact below ``k`` distinct hashes, K-minimum-values above.

    Hashes are signed 64-bit ints (Python ``hash`` or pandas' uint64 hashes viewed as int64), i.e.
    uniform on [-2**63, 2**63). Kept as a sorted numpy array of the k smallest distinct hashes seen;
    mergeable batch by batch (once saturated, only hashes below the k-th smallest are looked at).
    """

    __slots__ = ("k", "kept", "saturated")

    def __init__(self, k: int = SKETCH_K):
        import numpy as np

        self.k = k
        self.kept = np.empty(0, dtype=np.int64)
        self.saturated = False  # some hashes were dropped: the count is an estimate

    def add_hashes(self, hashes) -> None:
        import numpy as np

        hashes = np.asarray(hashes, dtype=np.int64)
        if self.saturated:  # only hashes below the k-th smallest matter: insert those, no re-sort of all k
            new = np.unique(hashes[hashes < self.kept[-1]])
            at = np.searchsorted(self.kept, new)  # < k, since every new hash is below kept[-1]
            fresh = self.kept[at] != new
            if fresh.any():
                self.kept = np.insert(self.kept, at[fresh], new[fresh])[:self.k]
            return
        kept = np.unique(np.concatenate([self.kept, hashes]))
        if len(kept) > self.k:
            kept = kept[:self.k]
            self.saturated = True
        self.kept = kept

    def add_values(self, values: Sequence) -> None:
        """Values of one batch: deduplicated in C while the count is exact, then hashed."""
        import numpy as np

        if not self.saturated:
            values = set(values)
        self.add_hashes(np.fromiter(map(hash, values), dtype=np.int64, count=len(values)))

    def merge(self, other: "DistinctSketch") -> None:
        self.saturated = self.saturated or other.saturated
        self.add_hashes(other.kept)

    def estimate(self) -> int:
        return kmv_estimate(self.k, len(self.kept), int(self.kept[-1]) if len(self.kept) else 0, self.saturated)


def kmv_estimate(k: int, kept: int, largest: int, saturated: bool) -> int:
    """The distinct count: exact (``kept`` distinct hashes) when not saturated, else (k-1) over the
    k-th smallest signed 64-bit hash ``largest`` as a share of the hash range."""
    if not saturated:
        return int(kept)
    fraction = (largest + _HALF + 1) / _SPAN
    return int(round((k - 1) / fraction))


class _Column:
    __slots__ = ("name", "type", "key", "binary", "nulls", "empty", "min", "max", "sketch", "count_empty")

    def __init__(self, name: str, mysql_type: str | None, precision: int | None = None):
        self.name = name
        self.type = mysql_type
        self.key = sort_key_for(mysql_type, precision)
        self.binary = mysql_type in BINARY_TYPES
        self.count_empty = mysql_type not in NEVER_EMPTY_TYPES
        self.nulls = 0
        self.empty = 0
        self.min: Any = None
        self.max: Any = None
        self.sketch = DistinctSketch()

    def _fold(self, low: Any, high: Any) -> None:
        key = self.key
        if self.min is None:
            self.min, self.max = low, high
        elif key is None:
            if low < self.min:
                self.min = low
            if high > self.max:
                self.max = high
        else:
            if key(low) < key(self.min):
                self.min = low
            if key(high) > key(self.max):
                self.max = high

    def add(self, values: Sequence) -> None:
        """One batch of this column's raw values (str, bytes or None)."""
        nulls = values.count(None)
        if nulls:
            self.nulls += nulls
            if nulls == len(values):
                return
            values = list(filter(_not_none, values))
        if self.count_empty:
            self.empty += values.count("") if not self.binary else values.count(b"")
        key = self.key
        try:
            if key is None:
                low, high = min(values), max(values)
            else:  # convert once; the printed value is the original text at the same position
                typed = list(map(key, values))
                low, high = values[typed.index(min(typed))], values[typed.index(max(typed))]
        except (ValueError, TypeError, InvalidOperation):  # text that is not a number: compare as text
            self.key = key = None
            low, high = min(map(str, values)), max(map(str, values))
            self.min = None if self.min is None else str(self.min)
            self.max = None if self.max is None else str(self.max)
        self._fold(low, high)
        self.sketch.add_values(values)

    def as_dict(self) -> dict:
        return {"type": self.type, "nulls": self.nulls, "empty": self.empty,
                "min": None if self.min is None else _printed(self.min),
                "max": None if self.max is None else _printed(self.max),
                "distinct": self.sketch.estimate()}


class StreamProfiler:
    """The profile of rows as the query returns them (tuples of str / bytes / None), batch by batch.

    :param columns: the CSV columns (the query's)
    :param types: the MySQL type name per column
    :param precisions: the declared precision per column (DECIMAL digits), when known
    """

    def __init__(self, columns: Sequence[str], types: Sequence[str | None],
                 precisions: Sequence[int | None] | None = None):
        self.columns = list(columns)
        types = list(types) + [None] * (len(columns) - len(types))
        precisions = list(precisions or []) + [None] * len(columns)
        self._cols = [_Column(c, t, p) for c, t, p in zip(columns, types, precisions)]

    def add_batch(self, batch: Sequence[Sequence]) -> None:
        if not batch:
            return
        for column, values in zip(self._cols, zip(*batch)):
            column.add(values)

    def profile(self) -> dict[str, dict]:
        return {c.name: c.as_dict() for c in self._cols}


# ---------------------------------------------------------------- preprocess output (pandas)
def pandas_type_name(dtype, query_type: str | None) -> str:
    """The type recorded for a preprocess output column: the query's MySQL type when the column has
    the query's name and still holds text (object dtype), else the pandas dtype mapped to a
    MySQL-ish name (int -> BIGINT, float -> DOUBLE, bool -> BOOLEAN, datetime64 -> DATETIME,
    anything else -> TEXT)."""
    kind = getattr(dtype, "kind", "O")
    if kind in "OSU" and query_type is not None:
        return query_type
    return {"i": "BIGINT", "u": "BIGINT UNSIGNED", "f": "DOUBLE", "b": "BOOLEAN", "M": "DATETIME",
            "m": "TIME"}.get(kind, "TEXT")


class FrameProfiler:
    """The profile of a preprocess's output DataFrame chunks, computed per chunk with pandas.

    :param query_types: the query's MySQL type per column name (kept for text columns of that name)
    """

    def __init__(self, query_types: dict[str, str]):
        self.query_types = dict(query_types)
        self.columns: list[str] | None = None
        self._cols: list[_Column] = []

    def add_frame(self, frame) -> None:
        import numpy as np
        import pandas as pd

        names = [str(c) for c in frame.columns]
        if self.columns is None:
            self.columns = names
            self._cols = [_Column(n, pandas_type_name(frame.dtypes.iloc[i], self.query_types.get(n)))
                          for i, n in enumerate(names)]
        if not len(frame):
            return
        for i, column in enumerate(self._cols):
            series = frame.iloc[:, i]
            missing = series.isna()
            nulls = int(missing.sum())
            column.nulls += nulls
            values = series[~missing] if nulls else series
            if not len(values):
                continue
            kind = series.dtype.kind
            if kind in "OSU":
                column.empty += int((values == "").sum()) if kind == "O" else 0
                raw = values.tolist()
                key = column.key
                try:
                    if key is None:
                        low, high = min(raw), max(raw)
                    else:
                        low, high = min(raw, key=key), max(raw, key=key)
                except (TypeError, ValueError, InvalidOperation):  # mixed objects: compare as printed
                    column.key = None
                    printed = [_printed(v) for v in raw]
                    low, high = min(printed), max(printed)
                    column.min = None if column.min is None else _printed(column.min)
                    column.max = None if column.max is None else _printed(column.max)
                column._fold(low, high)
            else:
                low, high = values.min(), values.max()
                if kind in "iu":
                    low, high, column.key = int(low), int(high), int
                elif kind == "f":
                    low, high, column.key = float(low), float(high), float
                elif kind == "b":
                    low, high, column.key = bool(low), bool(high), None
                else:  # datetime64 / timedelta: as str() prints them, which sorts right
                    low, high, column.key = str(low), str(high), None
                column._fold(low, high)
            hashes = pd.util.hash_pandas_object(values, index=False).to_numpy().view(np.int64)
            column.sketch.add_hashes(hashes.tolist())

    def profile(self) -> dict[str, dict]:
        return {c.name: c.as_dict() for c in self._cols}


# ---------------------------------------------------------------- unique key on a sorted stream
class KeyTracker:
    """Whether the stream is sorted by ``key`` (strictly: unique) and how many adjacent duplicates it
    has, batch by batch: the previous batch's last key is carried over, so the check is exact on a
    stream sorted by the key and costs one pass of C-level comparisons.

    Key values are compared typed (int / Decimal / float for numbers, text by code point = UTF-8 byte
    order otherwise). A NULL in a key column is counted, not ordered.
    """

    def __init__(self, key: Sequence[str], columns: Sequence[str], types: Sequence[str | None]):
        self.key = list(key)
        index = {c: i for i, c in enumerate(columns)}
        self.missing = [k for k in self.key if k not in index]
        self.positions = [index[k] for k in self.key if k in index]
        self.converters = [sort_key_for(types[p] if p < len(types) else None) for p in self.positions]
        self.previous: tuple | None = None
        self.rows = 0
        self.nulls = 0
        self.duplicates = 0
        self.unsorted = 0
        self.example: tuple[Any, Any] | None = None  # (previous key, next key) at the first disorder

    def _convert(self, values: Sequence, converter: Callable | None) -> list:
        return list(values) if converter is None else list(map(converter, values))

    def add_columns(self, columns: Sequence[Sequence]) -> None:
        """The batch's key columns (one sequence per key column, in key order)."""
        if self.missing or not columns or not len(columns[0]):
            return
        n = len(columns[0])
        self.rows += n
        nulls = sum(c.count(None) for c in columns)
        if nulls:
            self.nulls += nulls
            self.previous = None  # ordering around NULL keys is not judged
            return
        try:
            keys = list(zip(*(self._convert(c, f) for c, f in zip(columns, self.converters))))
        except (TypeError, ValueError, InvalidOperation):
            keys = list(zip(*(list(map(str, c)) for c in columns)))
        if self.previous is not None:
            keys.insert(0, self.previous)
        self.previous = keys[-1]
        if len(keys) < 2:
            return
        head, tail = keys[:-1], keys[1:]
        if all(map(operator.lt, head, tail)):
            return
        self.duplicates += sum(map(operator.eq, head, tail))
        disorder = sum(map(operator.gt, head, tail))
        if disorder and self.example is None:
            at = next(i for i, (a, b) in enumerate(zip(head, tail)) if a > b)
            self.example = (head[at], tail[at])
        self.unsorted += disorder

    def add_rows(self, batch: Sequence[Sequence]) -> None:
        if not batch or self.missing:
            return
        cols = list(zip(*batch))
        self.add_columns([cols[p] for p in self.positions])

    def add_frame(self, frame) -> None:
        if self.missing or not len(frame):
            return
        columns = []
        for p in self.positions:
            series = frame.iloc[:, p]
            values = series.astype(object).where(series.notna(), None).tolist()
            columns.append(values)
        self.add_columns(columns)

    def set_from_engine(self, nulls: int, duplicates: int, unsorted: int, example, *, is_bytes: Sequence[bool]) -> None:
        """The facts the C engine computed (same rules, per row; batches of ``fetch_rows`` for NULLs);
        the example's raw values are converted as ``add_columns`` converts them."""
        self.nulls, self.duplicates, self.unsorted = nulls, duplicates, unsorted
        if example is not None:
            def typed(values):
                out = []
                for value, binary, converter in zip(values, is_bytes, self.converters):
                    value = value if binary else value.decode("utf-8")
                    try:
                        out.append(value if converter is None else converter(value))
                    except (TypeError, ValueError, InvalidOperation):
                        out.append(value)
                return tuple(out)

            self.example = (typed(example[0]), typed(example[1]))

    def facts(self) -> dict:
        return {"columns": self.key, "missing": self.missing, "nulls": self.nulls, "duplicates": self.duplicates,
                "unsorted": self.unsorted,
                "example": None if self.example is None else [list(map(_printed, self.example[0])),
                                                              list(map(_printed, self.example[1]))]}
