"""Quality checks evaluated before anything is published (the project YAML's ``checks:``).

Everything here works from what the export measured while the CSV streamed: the row count, the
columns and their profile (``column_profile``), the unique-key facts of the stream, and the
previous version's row count. No second pass over the file, no database, no Airflow.

Keys (contract): ``columns`` (names, or a mapping name -> MySQL type name, in order), ``min_rows``,
``max_rows``, ``not_null`` (list), ``unique`` (list; default the project's ``key``),
``max_null_share`` (mapping column -> fraction 0..1), ``max_rows_change`` (fraction), ``mode``
(``fail``, the default, or ``warn``).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

CHECK_KEYS = ("columns", "min_rows", "max_rows", "not_null", "unique", "max_null_share", "max_rows_change", "mode")
MODES = ("fail", "warn")
MAX_CHECK_COLUMNS = 1000
_COLUMN_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9 ]{0,39}$")
MAX_ROWS_LIMIT = 10 ** 15


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _names(value: object) -> bool:
    return (isinstance(value, list) and 0 < len(value) <= MAX_CHECK_COLUMNS
            and all(isinstance(v, str) and _COLUMN_NAME.match(v) for v in value) and len(set(value)) == len(value))


def validate_key(value: object) -> tuple[list[str] | None, list[str]]:
    """The ``key`` YAML value: a non-empty list of distinct column names (or null)."""
    if value is None:
        return None, []
    if not _names(value):
        return None, ["must be a list of distinct column names, e.g. [id] or [customer_id, day]"]
    return list(value), []


def validate_checks(value: object, key: list[str] | None = None) -> tuple[dict | None, list[tuple[str, str]]]:
    """(the normalized checks, [(sub-key, problem), ...]) for the ``checks`` YAML value.

    Normalized: every key present, ``columns`` as a list of ``[name, type-or-None]`` pairs,
    ``unique`` defaulted to ``key``, ``mode`` defaulted to ``fail``.
    """
    if value is None:
        return None, []
    if not isinstance(value, dict):
        return None, [("", "must be a mapping of checks (keys: " + ", ".join(CHECK_KEYS) + ")")]
    problems: list[tuple[str, str]] = []
    for name in sorted({str(k) for k in value} - set(CHECK_KEYS)):
        close = difflib.get_close_matches(name, CHECK_KEYS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append((name, f"unknown check; {hint}(checks: {', '.join(CHECK_KEYS)})"))
    out: dict[str, Any] = {"columns": None, "min_rows": None, "max_rows": None, "not_null": [], "unique": None,
                           "max_null_share": {}, "max_rows_change": None, "mode": "fail"}
    columns = value.get("columns")
    if columns is not None:
        if isinstance(columns, list) and _names(columns):
            out["columns"] = [[c, None] for c in columns]
        elif (isinstance(columns, dict) and 0 < len(columns) <= MAX_CHECK_COLUMNS
              and all(isinstance(k, str) and _COLUMN_NAME.match(k) for k in columns)
              and all(isinstance(t, str) and _TYPE_NAME.match(t) for t in columns.values())):
            out["columns"] = [[c, t.strip().upper()] for c, t in columns.items()]
        else:
            problems.append(("columns", "must be a list of column names, or a mapping column name -> MySQL type "
                                        "name (e.g. {id: INT, name: VARCHAR}), in the CSV's order"))
    for name in ("min_rows", "max_rows"):
        if value.get(name) is not None:
            if not _is_int(value[name]) or not 0 <= value[name] <= MAX_ROWS_LIMIT:
                problems.append((name, "must be a whole number of rows (0 or more)"))
            else:
                out[name] = value[name]
    if out["min_rows"] is not None and out["max_rows"] is not None and out["min_rows"] > out["max_rows"]:
        problems.append(("min_rows", f"{out['min_rows']} is above max_rows {out['max_rows']}"))
    if value.get("not_null") is not None:
        if not _names(value["not_null"]):
            problems.append(("not_null", "must be a list of distinct column names"))
        else:
            out["not_null"] = list(value["not_null"])
    if "unique" in value and value["unique"] is not None:
        if not _names(value["unique"]):
            problems.append(("unique", "must be a list of distinct column names (the columns that identify a row)"))
        else:
            out["unique"] = list(value["unique"])
    elif key:
        out["unique"] = list(key)
    shares = value.get("max_null_share")
    if shares is not None:
        if (not isinstance(shares, dict) or not shares or len(shares) > MAX_CHECK_COLUMNS
                or not all(isinstance(k, str) and _COLUMN_NAME.match(k) for k in shares)):
            problems.append(("max_null_share", "must be a mapping column name -> fraction from 0 to 1, e.g. {email: 0.05}"))
        else:
            bad = [k for k, v in shares.items() if not _is_fraction(v)]
            if bad:
                problems.append(("max_null_share", f"{', '.join(bad)}: must be a fraction from 0 to 1"))
            else:
                out["max_null_share"] = {k: float(v) for k, v in shares.items()}
    change = value.get("max_rows_change")
    if change is not None:
        if isinstance(change, bool) or not isinstance(change, (int, float)) or not 0 <= change <= 1000:
            problems.append(("max_rows_change", "must be a fraction (0.5 = the row count may differ from the previous "
                                                "version's by at most 50%)"))
        else:
            out["max_rows_change"] = float(change)
    mode = value.get("mode", "fail")
    if mode not in MODES:
        problems.append(("mode", "must be 'fail' (the default: nothing is published) or 'warn' (log and publish)"))
    else:
        out["mode"] = mode
    return out, problems


@dataclass
class CheckReport:
    """Failed checks (each naming measured and allowed values) and errors (the checks themselves
    name columns the result does not have: fixed in the YAML, never only warned about)."""

    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors


def _pct(value: float) -> str:
    return f"{value * 100:.4g}%"


def evaluate(checks: dict, *, rows: int, columns: list[str], profile: dict[str, dict] | None,
             key_facts: dict | None = None, previous_rows: int | None = None,
             previous_version: str | None = None) -> CheckReport:
    """Evaluate normalized ``checks`` (``validate_checks``) against what the export measured."""
    report = CheckReport()
    profile = profile or {}
    present = set(columns)

    def need(check: str, names) -> list[str]:
        unknown = [n for n in names if n not in present]
        if unknown:
            report.errors.append(f"{check}: column(s) {', '.join(map(repr, unknown))} not in the result "
                                 f"(columns: {', '.join(columns)})")
        return [n for n in names if n in present]

    expected = checks.get("columns")
    if expected is not None:
        names = [c for c, _ in expected]
        problems = []
        if names != columns:
            missing = [c for c in names if c not in present]
            extra = [c for c in columns if c not in set(names)]
            detail = []
            if missing:
                detail.append(f"missing {missing}")
            if extra:
                detail.append(f"unexpected {extra}")
            if not missing and not extra:
                detail.append("same names in another order")
            problems.append(f"columns are {columns}, expected {names} ({'; '.join(detail)})")
        for name, want in expected:
            if want is None or name not in present:
                continue
            got = (profile.get(name) or {}).get("type")
            if got is not None and str(got).upper() != want:
                problems.append(f"column {name!r} has type {got}, expected {want}")
        if problems:
            report.failures.append("columns: " + "; ".join(problems))
        else:
            report.passed.append("columns")

    if checks.get("min_rows") is not None:
        if rows < checks["min_rows"]:
            report.failures.append(f"min_rows: {rows} rows, allowed at least {checks['min_rows']}")
        else:
            report.passed.append("min_rows")
    if checks.get("max_rows") is not None:
        if rows > checks["max_rows"]:
            report.failures.append(f"max_rows: {rows} rows, allowed at most {checks['max_rows']}")
        else:
            report.passed.append("max_rows")

    for name in need("not_null", checks.get("not_null") or []):
        nulls = (profile.get(name) or {}).get("nulls", 0)
        if nulls:
            report.failures.append(f"not_null: column {name!r} has {nulls} NULL value(s), allowed 0")
        else:
            report.passed.append(f"not_null {name}")

    shares = checks.get("max_null_share") or {}
    for name in need("max_null_share", list(shares)):
        nulls = (profile.get(name) or {}).get("nulls", 0)
        share = nulls / rows if rows else 0.0
        if share > shares[name]:
            report.failures.append(f"max_null_share: column {name!r} is {_pct(share)} NULL ({nulls} of {rows} rows), "
                                   f"allowed at most {_pct(shares[name])}")
        else:
            report.passed.append(f"max_null_share {name}")

    unique = checks.get("unique")
    if unique:
        known = need("unique", unique)
        if len(known) == len(unique):
            label = f"unique ({', '.join(unique)})"
            facts = key_facts or {}
            if facts.get("columns") != list(unique):
                report.errors.append(f"{label}: the export did not track this key")
            elif facts.get("unsorted"):
                first = facts.get("example")
                where = f" (e.g. {first[0]} comes before {first[1]})" if first else ""
                report.failures.append(
                    f"{label}: the data is not sorted by the key{where}, so uniqueness cannot be checked while "
                    f"streaming: end the query with ORDER BY {', '.join(unique)} (for text keys with a binary "
                    "collation, e.g. COLLATE utf8mb4_bin: keys are compared by UTF-8 byte order)")
            elif facts.get("nulls") or facts.get("duplicates"):
                parts = []
                if facts.get("duplicates"):
                    parts.append(f"{facts['duplicates']} duplicate key(s)")
                if facts.get("nulls"):
                    parts.append(f"{facts['nulls']} NULL key value(s)")
                report.failures.append(f"{label}: {' and '.join(parts)}, allowed 0")
            else:
                report.passed.append("unique")

    change = checks.get("max_rows_change")
    if change is not None:
        if previous_rows is None:
            report.passed.append("max_rows_change (no previous version)")
        else:
            measured = abs(rows - previous_rows) / previous_rows if previous_rows else (0.0 if rows == 0 else float("inf"))
            if measured > change:
                signed = (rows - previous_rows) / previous_rows if previous_rows else float("inf")
                report.failures.append(
                    f"max_rows_change: {rows} rows vs {previous_rows} in the previous version {previous_version} "
                    f"({'+' if signed >= 0 else ''}{_pct(signed) if previous_rows else 'from 0'}), "
                    f"allowed at most {_pct(change)} change")
            else:
                report.passed.append("max_rows_change")
    return report


def summary(report: CheckReport, what: str) -> str:
    """One message naming every failed check (and error), for the task log / failure."""
    lines = [f"{len(report.failures) + len(report.errors)} check(s) failed for {what}:"]
    lines += [f"  - {e}" for e in report.errors] + [f"  - {f}" for f in report.failures]
    return "\n".join(lines)
