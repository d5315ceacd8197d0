"""What changed between two versions of a project: schema, rows, per-column profile, and row keys.

Plain Python (no Airflow): the CLI and the registry page both call it through ``catalog``.

``diff_versions`` returns the contract's diff JSON::

    {"schema": {"added": [...], "removed": [...], "changed": {column: {"base": type, "target": type}}},
     "rows": {"base": n, "target": m},
     "columns": {column: {stat: {"base": x, "target": y}, ...}, ...},
     "keys": {"added": a, "removed": r, "changed": c}}        # only when a key is given

* ``schema`` compares the ordered column names and, where both profiles know them, the MySQL types.
* ``columns`` lists, for every column in both versions, the profile statistics (``nulls``, ``empty``,
  ``min``, ``max``, ``distinct``) that differ; a column whose statistics are all equal is left out.
* ``keys`` comes from one streaming merge of the two CSV files (``key_diff``): both are published
  sorted by the query's total ORDER BY, so when that order starts with the key, one pass over each
  file with one row of each in memory finds the keys only in the target (added), only in the base
  (removed), and in both with different values in the columns both versions have (changed). Memory
  does not grow with the files. A file that is not sorted by the key, or repeats a key, is refused
  with the file, the row and the ORDER BY to use.

How keys compare (it must be the order MySQL sorted them in): NULL first; numeric columns
(``INT``, ``DECIMAL``, ``DOUBLE``, ... by the profile's type, or, without a type, any value that
reads as a number) by value; everything else by its text, code point by code point, which is
UTF-8 byte order: for a text key, sort with a binary collation (``ORDER BY name COLLATE utf8mb4_bin``)
rather than a case-insensitive one. Dates and times compare correctly as text.
"""
from __future__ import annotations

import csv
import re
from decimal import Decimal
from pathlib import Path
from typing import Iterator, Mapping, Sequence

PROFILE_STATS = ("nulls", "empty", "min", "max", "distinct")
NUMERIC_TYPES = frozenset({"TINYINT", "SMALLINT", "MEDIUMINT", "INT", "INTEGER", "BIGINT", "DECIMAL", "NUMERIC",
                           "DEC", "FIXED", "FLOAT", "DOUBLE", "REAL", "YEAR"})
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# One CSV field of a raw record: quoted (RFC 4180, "" inside) or not; used only to tell NULL from "".
_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^,\r\n]*)')


class DiffError(ValueError):
    """The two versions cannot be compared as asked (bad key, unreadable file)."""


class BadKeyError(DiffError):
    """The key itself is wrong for these files (no columns, repeated, not in a file's header)."""


class KeyOrderError(DiffError):
    """A file is not sorted by the key, or repeats a key: the streaming merge would give wrong counts."""


def base_type(type_name: object) -> str | None:
    """``DECIMAL`` for ``decimal(10,2) unsigned``; None when unknown."""
    if not isinstance(type_name, str) or not type_name.strip():
        return None
    return re.split(r"[\s(]", type_name.strip(), maxsplit=1)[0].upper()


def _profile(meta: Mapping) -> dict:
    profile = meta.get("profile") if isinstance(meta, Mapping) else None
    return profile if isinstance(profile, Mapping) else {}


def _columns(meta: Mapping) -> list[str] | None:
    columns = meta.get("columns") if isinstance(meta, Mapping) else None
    if isinstance(columns, (list, tuple)) and columns:
        return [str(c) for c in columns]
    profile = _profile(meta)
    return list(profile) if profile else None


def _type(meta: Mapping, column: str) -> str | None:
    stats = _profile(meta).get(column)
    return stats.get("type") if isinstance(stats, Mapping) else None


def schema_diff(base_columns: Sequence[str], target_columns: Sequence[str], base: Mapping, target: Mapping) -> dict:
    """Columns added, removed, and retyped (both types known and different, compared without length)."""
    in_base, in_target = set(base_columns), set(target_columns)
    changed = {}
    for column in target_columns:
        if column in in_base:
            before, after = _type(base, column), _type(target, column)
            if before and after and base_type(before) != base_type(after):
                changed[column] = {"base": before, "target": after}
    return {"added": [c for c in target_columns if c not in in_base],
            "removed": [c for c in base_columns if c not in in_target],
            "changed": changed}


def profile_diff(base_columns: Sequence[str], target_columns: Sequence[str], base: Mapping, target: Mapping) -> dict:
    """Per column in both versions: the profile statistics that differ, ``{stat: {base, target}}``."""
    in_target = set(target_columns)
    out = {}
    for column in base_columns:
        if column not in in_target:
            continue
        before, after = _profile(base).get(column), _profile(target).get(column)
        if not isinstance(before, Mapping) or not isinstance(after, Mapping):
            continue
        changes = {stat: {"base": before.get(stat), "target": after.get(stat)}
                   for stat in PROFILE_STATS if before.get(stat) != after.get(stat)}
        if changes:
            out[column] = changes
    return out


def diff_versions(base: Mapping, target: Mapping, *, key: Sequence[str] | None = None,
                  base_file: str | Path | None = None, target_file: str | Path | None = None,
                  base_label: str = "base", target_label: str = "target") -> dict:
    """The contract's diff of two versions.

    :param base: the older version's record: ``columns``, ``profile`` (column -> ``{type, nulls, empty,
        min, max, distinct}``) and ``rows``, any of them possibly missing (versions published before
        profiles existed); missing columns are read from the files' headers when files are given
    :param target: the newer version's record, same keys
    :param key: the project's key columns; when given, both files are required and ``keys`` is added
    :param base_file: the base version's CSV (needed for ``key``, or when a record has no columns)
    :param target_file: the target version's CSV
    :param base_label: how messages name the base file (e.g. ``shop/v1 (orders.csv)``)
    :param target_label: how messages name the target file
    """
    key = list(key or [])
    if key and (base_file is None or target_file is None):
        raise DiffError("a key diff needs both versions' files")
    base_columns = _columns(base) or (read_header(base_file, base_label) if base_file else [])
    target_columns = _columns(target) or (read_header(target_file, target_label) if target_file else [])
    result = {
        "schema": schema_diff(base_columns, target_columns, base, target),
        "rows": {"base": base.get("rows"), "target": target.get("rows")},
        "columns": profile_diff(base_columns, target_columns, base, target),
    }
    if key:
        counts = key_diff(base_file, target_file, key, types=_key_types(key, base, target),
                          base_label=base_label, target_label=target_label)
        result["keys"] = {name: counts[name] for name in ("added", "removed", "changed")}
        for side in ("base", "target"):
            if result["rows"][side] is None:
                result["rows"][side] = counts[f"{side}_rows"]
    return result


def _key_types(key: Sequence[str], base: Mapping, target: Mapping) -> dict[str, str]:
    """The MySQL type of each key column when a profile knows it (the target's wins)."""
    types = {}
    for column in key:
        known = base_type(_type(target, column)) or base_type(_type(base, column))
        if known:
            types[column] = known
    return types


# ------------------------------------------------------------------ the streaming merge
class _Records:
    """A CSV file read one record at a time, with the record's raw text (to tell NULL from "").

    ``csv.reader`` pulls one physical line at a time from its iterator and never reads ahead, so the
    lines gathered while it produced a record are exactly that record's text.
    """

    def __init__(self, path: Path, label: str):
        self.label = label
        self._file = open(path, newline="", encoding="utf-8")
        self._lines: list[str] = []
        csv.field_size_limit(MAX_FIELD_BYTES)  # the default 128 KiB refuses MEDIUMTEXT/JSON values
        self._reader = csv.reader(self._gather(), strict=True)
        self.row_number = -1  # data rows read so far (the header is row 0)

    def _gather(self) -> Iterator[str]:
        for line in self._file:
            self._lines.append(line)
            yield line

    def next(self) -> tuple[list[str], str | None] | None:
        """(fields, raw text) of the next record, the raw text only when a field is empty (the one
        case where the parsed fields cannot tell NULL from ""); None at the end."""
        self._lines.clear()
        try:
            fields = next(self._reader)
        except StopIteration:
            return None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DiffError(f"{self.label}: unreadable CSV after data row {self.row_number}: {exc}") from None
        self.row_number += 1
        return fields, ("".join(self._lines) if "" in fields else None)

    def close(self) -> None:
        self._file.close()


def read_header(path: str | Path, label: str) -> list[str]:
    records = _Records(Path(path), label)
    try:
        first = records.next()
    finally:
        records.close()
    if first is None:
        raise DiffError(f"{label}: the file is empty (no header row)")
    return first[0]


def _nullable_fields(raw: str) -> list[str | None]:
    """The fields of one raw record with SQL NULL (an empty unquoted field) as None."""
    out: list[str | None] = []
    position, end = 0, len(raw.rstrip("\r\n"))
    while True:
        match = _FIELD.match(raw, position)
        quoted, plain = match.group(1), match.group(2)
        out.append(quoted.replace('""', '"') if quoted is not None else (plain if plain else None))
        position = match.end()
        if position >= end or raw[position] != ",":
            return out
        position += 1


def _values(fields: list[str], raw: str | None, indices: Sequence[int]) -> tuple:
    """The values at ``indices``, with NULL as None (``raw`` is there whenever a field is empty)."""
    if raw is not None:
        fields = _nullable_fields(raw)
    return tuple(fields[i] for i in indices)


def _rank_text(value: str) -> tuple:
    return (2, value)


MAX_FIELD_BYTES = 1 << 30  # LONGTEXT can hold 4 GiB; a field this big is read, not refused


def _rank_guess(value: str) -> tuple:
    """No type known: a value that reads as a number ranks as a number, and its text breaks ties, so
    ``01234`` and ``1234`` stay two keys (a zip code is text even when it looks numeric)."""
    return (1, Decimal(value), value) if _NUMBER.fullmatch(value) else (2, value)


def _ranker(column: str, mysql_type: str | None, label: str):
    """One key column's value -> its rank in MySQL's ORDER BY (NULL is ranked by the caller)."""
    kind = base_type(mysql_type)
    if kind is None:
        return _rank_guess
    if kind not in NUMERIC_TYPES:
        return _rank_text

    def rank_number(value: str) -> tuple:
        try:
            return (1, int(value))
        except ValueError:
            pass
        if _NUMBER.fullmatch(value):
            return (1, Decimal(value))
        raise DiffError(f"{label}: {column}={value!r} is not a number, but the profile says {column} is {mysql_type}")
    return rank_number


def _sort_key(values: tuple, rankers: Sequence) -> tuple:
    """How MySQL's ORDER BY ranks these key values: NULL first, numbers by value, text by code point."""
    return tuple((0, 0) if value is None else rank(value) for value, rank in zip(values, rankers))


def _shown_key(columns: Sequence[str], values: tuple) -> str:
    return ", ".join(f"{c}={'NULL' if v is None else repr(v)}" for c, v in zip(columns, values))


def _order_by(key: Sequence[str], types: Mapping[str, str]) -> str:
    parts = [column if base_type(types.get(column)) in NUMERIC_TYPES else
             f"{column} COLLATE utf8mb4_bin" if column in types else column for column in key]
    return "ORDER BY " + ", ".join(parts)


class _KeyedFile:
    """One side of the merge: rows as (sort key, key values, compared values), checked to be increasing."""

    def __init__(self, path: Path, label: str, key: Sequence[str], types: Mapping[str, str]):
        self.label = label
        self.key = list(key)
        self.types = types
        self.records = _Records(path, label)
        first = self.records.next()
        if first is None:
            self.records.close()
            raise DiffError(f"{label}: the file is empty (no header row)")
        self.header = first[0]
        missing = [c for c in key if c not in self.header]
        if missing:
            self.records.close()
            raise BadKeyError(f"{label}: key column(s) {', '.join(missing)} not in the file's columns "
                              f"({', '.join(self.header)}); the key must name columns of both versions")
        self.key_indices = [self.header.index(c) for c in key]
        self.rankers = [_ranker(c, types.get(c), label) for c in key]
        self.compare_indices: list[int] = []
        self.rows = 0
        self._previous: tuple | None = None
        self._previous_values: tuple | None = None

    def compare_on(self, columns: Sequence[str]) -> None:
        self.compare_indices = [self.header.index(c) for c in columns]

    def next(self) -> tuple | None:
        record = self.records.next()
        if record is None:
            return None
        fields, raw = record
        self.rows += 1
        if len(fields) != len(self.header):
            raise DiffError(f"{self.label}: data row {self.rows} has {len(fields)} fields, the header has "
                            f"{len(self.header)}")
        values = _values(fields, raw, self.key_indices)
        try:
            sort_key = _sort_key(values, self.rankers)
        except DiffError as exc:
            raise DiffError(f"data row {self.rows} of {exc}") from None
        if self._previous is not None and sort_key <= self._previous:
            self._refuse(values, sort_key == self._previous)
        self._previous, self._previous_values = sort_key, values
        return sort_key, fields, raw

    def compared(self, fields: list[str], raw: str | None) -> tuple:
        return _values(fields, raw, self.compare_indices)

    def _refuse(self, values: tuple, duplicate: bool) -> None:
        names = ", ".join(self.key)
        here = _shown_key(self.key, values)
        before = _shown_key(self.key, self._previous_values)
        order_by = _order_by(self.key, self.types)
        if duplicate:
            raise KeyOrderError(
                f"{self.label} is not unique on the key ({names}): data row {self.rows} repeats {here} of the row "
                f"before it. A row-level diff needs a key that identifies each row: declare the project's full key, "
                f"or pass a longer --key")
        raise KeyOrderError(
            f"{self.label} is not sorted by the key ({names}): data row {self.rows} ({here}) comes after "
            f"{before}. The row-level diff merges both files in key order, so the project's query must end in "
            f"`{order_by}` (numbers by value, text in binary order); versions published with another order "
            f"can only be compared by schema and profile (no key)")

    def close(self) -> None:
        self.records.close()


def key_diff(base_file: str | Path, target_file: str | Path, key: Sequence[str], *,
             types: Mapping[str, str] | None = None, base_label: str = "base",
             target_label: str = "target") -> dict:
    """Row-level counts by one streaming merge of two CSV files sorted by ``key``.

    :param key: the key columns, in the order the files are sorted by
    :param types: MySQL type per key column when known (numeric ones compare by value)
    :returns: ``{added, removed, changed, base_rows, target_rows}``; ``changed`` counts keys in both
        files whose values differ in the columns both files have (NULL and "" are different values)
    :raises KeyOrderError: a file is not sorted by the key, or repeats a key
    """
    key = list(key or [])
    if not key:
        raise BadKeyError("key_diff needs at least one key column")
    if len(set(key)) != len(key):
        raise BadKeyError(f"key columns repeat: {', '.join(key)}")
    types = dict(types or {})
    base = _KeyedFile(Path(base_file), base_label, key, types)
    try:
        target = _KeyedFile(Path(target_file), target_label, key, types)
    except BaseException:
        base.close()
        raise
    try:
        same_layout = base.header == target.header
        if not same_layout:
            common = [c for c in base.header if c in set(target.header)]
            base.compare_on(common)
            target.compare_on(common)
        added = removed = changed = 0
        left, right = base.next(), target.next()
        while left is not None or right is not None:
            if right is None or (left is not None and left[0] < right[0]):
                removed += 1
                left = base.next()
            elif left is None or right[0] < left[0]:
                added += 1
                right = target.next()
            else:
                if same_layout:
                    differs = _record_differs(left, right)
                else:
                    differs = base.compared(left[1], left[2]) != target.compared(right[1], right[2])
                changed += differs
                left, right = base.next(), target.next()
        return {"added": added, "removed": removed, "changed": changed,
                "base_rows": base.rows, "target_rows": target.rows}
    finally:
        base.close()
        target.close()


def _record_differs(left: tuple, right: tuple) -> bool:
    """Same columns in the same order: the records differ when a value does (NULL is not "")."""
    if left[1] != right[1]:
        return True
    if left[2] is None or left[2] == right[2]:  # no empty field (then neither has one), or the same text
        return False
    return _nullable_fields(left[2]) != _nullable_fields(right[2])
