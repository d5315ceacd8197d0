"""The profile and unique-key facts of an Arrow preprocess's output, batch by batch with Arrow kernels.

Same fields and rules as ``column_profile`` (its docstring is the reference): nulls, empty strings,
min/max compared typed (a text column named like a query column of a numeric MySQL type compares as
that number: integers and DECIMAL exactly, FLOAT/DOUBLE as doubles; text that is not a number falls
back to text order for the column; strings in UTF-8 byte order) and printed as the CSV prints them,
and the approximate distinct count (``DistinctSketch``, over 64-bit hashes of each value's CSV text).
The key facts follow ``KeyTracker``: adjacent keys compared (typed), the previous batch's last key
carried over, a batch with a NULL key counted and not judged. Nothing here imports Airflow.
"""
from __future__ import annotations

from typing import Any, Sequence

from dataset_registry.column_profile import (
    BINARY_TYPES, DECIMAL_TYPES, FLOAT_TYPES, INTEGER_TYPES, DistinctSketch, _cut,
)


def arrow_type_name(arrow_type, query_type: str | None) -> str:
    """The type recorded for an output column: the query's MySQL type when the column has a query
    column's name and still holds text; else the Arrow type mapped to a MySQL-ish name (as
    ``pandas_type_name`` does for pandas: integers BIGINT, floats DOUBLE, booleans BOOLEAN, ...)."""
    import pyarrow.types as pt

    t = arrow_type.value_type if pt.is_dictionary(arrow_type) else arrow_type
    if pt.is_string(t) or pt.is_large_string(t) or pt.is_string_view(t) or pt.is_null(t):
        return query_type if query_type is not None else "TEXT"
    if pt.is_unsigned_integer(t):
        return "BIGINT UNSIGNED"
    if pt.is_integer(t):
        return "BIGINT"
    if pt.is_floating(t):
        return "DOUBLE"
    if pt.is_boolean(t):
        return "BOOLEAN"
    if pt.is_decimal(t):
        return "DECIMAL"
    if pt.is_timestamp(t):
        return "DATETIME"
    if pt.is_date(t):
        return "DATE"
    if pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t):
        return "VARBINARY"
    return "TEXT"


def _is_text_type(arrow_type) -> bool:
    import pyarrow.types as pt

    t = arrow_type.value_type if pt.is_dictionary(arrow_type) else arrow_type
    return pt.is_string(t) or pt.is_large_string(t)


def typed_key(array, type_name: str | None, precision: int | None = None):
    """The array as its values compare: text of a numeric MySQL type cast to a number, booleans as
    integers, else the array itself. None when the text is not a number of that type (compare as text).

    DECIMAL as ``sort_key_for`` compares it: a declared display length (``precision``) of at most 15
    as a double (exact: 15 significant digits), longer or unknown as a decimal256 wide enough for
    any MySQL DECIMAL (65 digits, 30 after the point)."""
    import pyarrow as pa
    import pyarrow.types as pt

    t = array.type
    if pt.is_dictionary(t):
        array, t = array.dictionary_decode(), t.value_type
    if pt.is_boolean(t):
        return array.cast(pa.int8())
    if not (pt.is_string(t) or pt.is_large_string(t)):
        return array
    try:
        if type_name in INTEGER_TYPES:
            try:
                return array.cast(pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # BIGINT UNSIGNED beyond int64
                return array.cast(pa.decimal256(76, 0))
        if type_name in DECIMAL_TYPES:
            if precision is not None and 0 < precision <= 15:
                return array.cast(pa.float64())
            return array.cast(pa.decimal256(76, 30))
        if type_name in FLOAT_TYPES:
            return array.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return array


def _hashes(text, unique: bool = False):
    """64-bit hashes (numpy int64) of the non-null values of a ``string`` array (``unique``: of its
    distinct values, found by Arrow's hash table first): the C engine's hash when it is built (one pass
    over Arrow's buffers, GIL released), else pandas' hash of the values."""
    import numpy as np
    import pyarrow.compute as pc

    values = pc.drop_null(text) if unique is False else pc.unique(pc.drop_null(text))
    if not len(values):
        return np.empty(0, dtype=np.int64)
    try:
        from dataset_registry import _fastexport
    except ImportError:
        import pandas as pd

        return pd.util.hash_array(values.to_numpy(zero_copy_only=False)).view(np.int64)
    _, offsets, data = values.buffers()
    raw = _fastexport.hash_strings(offsets, data if data is not None else b"", values.offset, len(values), False)
    return np.frombuffer(raw, dtype=np.int64)


class _ColumnFacts:
    __slots__ = ("name", "type", "precision", "nulls", "empty", "low", "high", "as_text", "sketch")

    def __init__(self, name: str, type_name: str, precision: int | None = None):
        self.name, self.type, self.precision = name, type_name, precision
        self.nulls = self.empty = 0
        self.low: tuple[Any, str] | None = None  # (compared value, printed text)
        self.high: tuple[Any, str] | None = None
        self.as_text = False  # a value was not a number of the column's type: compare printed text
        self.sketch = DistinctSketch()

    def add(self, array, text) -> None:
        import pyarrow.compute as pc
        import pyarrow.types as pt

        nulls = array.null_count
        self.nulls += nulls
        if nulls == len(array):
            return
        if self.type in BINARY_TYPES:  # a binary query column arrives as its 0x text: b"" is "0x"
            self.empty += pc.sum(pc.equal(text, "0x")).as_py() or 0
        elif pt.is_string(array.type) or pt.is_large_string(array.type) or pt.is_dictionary(array.type):
            self.empty += pc.sum(pc.equal(pc.binary_length(text), 0)).as_py() or 0
        key = None if self.as_text else typed_key(array, self.type, self.precision)
        if key is None and not self.as_text:
            self.as_text = True  # from now on, and for what was kept so far
            self.low = None if self.low is None else (self.low[1], self.low[1])
            self.high = None if self.high is None else (self.high[1], self.high[1])
        if self.as_text:
            key = text
        bounds = pc.min_max(key)
        for which, value in (("min", bounds["min"]), ("max", bounds["max"])):
            if not value.is_valid:
                continue
            printed = text[pc.index(key, value).as_py()].as_py()
            if printed is not None:  # (a value's text is null only where the value is)
                self._fold(which, value.as_py(), printed)
        # While the count is exact, hash each distinct value once (a low-cardinality column stays cheap).
        self.sketch.add_hashes(_hashes(text, unique=not self.sketch.saturated))

    def _fold(self, which: str, value: Any, printed: str) -> None:
        current = self.low if which == "min" else self.high
        if current is not None:
            try:
                better = value < current[0] if which == "min" else value > current[0]
            except TypeError:  # batches of different types: compare as printed
                better = printed < current[1] if which == "min" else printed > current[1]
            if not better:
                return
        if which == "min":
            self.low = (value, printed)
        else:
            self.high = (value, printed)

    def as_dict(self) -> dict:
        return {"type": self.type, "nulls": self.nulls, "empty": self.empty,
                "min": None if self.low is None else _cut(self.low[1]),
                "max": None if self.high is None else _cut(self.high[1]),
                "distinct": self.sketch.estimate()}


class ArrowProfiler:
    """The profile of the output batches (``column_profile``'s fields and rules).

    :param query_types: the query's MySQL type per column name (kept for text columns of that name)
    :param precisions: the query's declared display length per column name, where known
    """

    def __init__(self, query_types: dict[str, str], precisions: dict[str, int | None] | None = None):
        self.query_types = dict(query_types)
        self.precisions = dict(precisions or {})
        self._cols: list[_ColumnFacts] | None = None

    def add_batch(self, names: Sequence[str], arrays: Sequence, texts: Sequence) -> None:
        """One output batch: its columns and their printed text (``arrow_csv.column_text``)."""
        if self._cols is None:
            self._cols = [_ColumnFacts(n, arrow_type_name(a.type, self.query_types.get(n)),
                                       self.precisions.get(n) if _is_text_type(a.type) else None)
                          for n, a in zip(names, arrays)]
        if not len(arrays) or not len(arrays[0]):
            return
        for column, array, text in zip(self._cols, arrays, texts):
            column.add(array, text)

    def profile(self) -> dict[str, dict]:
        return {c.name: c.as_dict() for c in self._cols or []}


class ArrowKeyTracker:
    """``KeyTracker``'s facts (sortedness, adjacent duplicates, NULL keys) over Arrow batches.

    :param key: the key columns
    :param columns: the output's columns; ``types`` their recorded type names
    """

    def __init__(self, key: Sequence[str], columns: Sequence[str], types: Sequence[str]):
        self.key = list(key)
        index = {c: i for i, c in enumerate(columns)}
        self.missing = [k for k in self.key if k not in index]
        self.positions = [index[k] for k in self.key if k in index]
        self.types = [types[p] for p in self.positions]
        self.previous: tuple[tuple, tuple] | None = None  # (compared values, printed texts) of the last key
        self.nulls = self.duplicates = self.unsorted = 0
        self.example: tuple[list, list] | None = None

    def add_batch(self, arrays: Sequence, texts: Sequence) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.missing or not len(arrays) or not len(arrays[0]):
            return
        cols = [arrays[p] for p in self.positions]
        shown = [texts[p] for p in self.positions]
        nulls = sum(c.null_count for c in cols)
        if nulls:
            self.nulls += nulls
            self.previous = None  # ordering around NULL keys is not judged
            return
        keys = [typed_key(c, t) for c, t in zip(cols, self.types)]
        keys = [k if k is not None else s for k, s in zip(keys, shown)]  # not a number: compare as text
        n = len(cols[0])
        first = tuple(k[0].as_py() for k in keys)
        if self.previous is not None:
            self._judge_pair(self.previous, (first, tuple(s[0].as_py() for s in shown)))
        self.previous = (tuple(k[n - 1].as_py() for k in keys), tuple(s[n - 1].as_py() for s in shown))
        if n < 2:
            return
        heads, tails = [k.slice(0, n - 1) for k in keys], [k.slice(1) for k in keys]
        equal_so_far = None
        greater = None
        for head, tail in zip(heads, tails):
            gt = pc.greater(head, tail)
            gt = gt if equal_so_far is None else pc.and_(equal_so_far, gt)
            greater = gt if greater is None else pc.or_(greater, gt)
            eq = pc.equal(head, tail)
            equal_so_far = eq if equal_so_far is None else pc.and_(equal_so_far, eq)
        self.duplicates += pc.sum(equal_so_far.cast(pa.int64())).as_py() or 0
        disorder = pc.sum(greater.cast(pa.int64())).as_py() or 0
        if disorder and self.example is None:
            at = pc.index(greater, True).as_py()
            self.example = ([s[at].as_py() for s in shown], [s[at + 1].as_py() for s in shown])
        self.unsorted += disorder

    def _judge_pair(self, before: tuple[tuple, tuple], after: tuple[tuple, tuple]) -> None:
        try:
            a, b = before[0], after[0]
            equal, greater = a == b, a > b
        except TypeError:
            equal, greater = before[1] == after[1], before[1] > after[1]
        self.duplicates += int(equal)
        if greater:
            self.unsorted += 1
            if self.example is None:
                self.example = (list(before[1]), list(after[1]))

    def facts(self) -> dict:
        return {"columns": self.key, "missing": self.missing, "nulls": self.nulls, "duplicates": self.duplicates,
                "unsorted": self.unsorted,
                "example": None if self.example is None else [[_cut(v) for v in self.example[0]],
                                                              [_cut(v) for v in self.example[1]]]}
