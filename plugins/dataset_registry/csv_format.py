"""The contract's CSV format, in one place.

UTF-8, header row, ``,`` separator, RFC 4180 quoting, ``\\n`` line ends. SQL NULL is an empty unquoted
field; the empty string is ``""``. Values arrive as MySQL's text protocol prints them (see
mysql_export), so this module only quotes. Binary values (BINARY/VARBINARY/BLOB/BIT columns) are
written as ``0x`` + uppercase hex, as ``mysql --binary-as-hex`` prints them, so the file stays UTF-8.

The C export engine (``_fastexport.c``) writes the same bytes for query results without a
preprocess (tests/test_export_engine.py compares them); a change here must be made there too.

Each row goes through a function compiled once per result shape: columns that can never need
quoting (numbers, dates) skip the checks, which keeps the per-row cost low.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

_NEEDS_QUOTES = re.compile(r'[",\r\n]').search


def quote(value: str) -> str:
    """RFC 4180 quoting of one non-NULL text value; the empty string becomes ``""``."""
    if value and not _NEEDS_QUOTES(value):
        return value
    return '"' + value.replace('"', '""') + '"'


def binary_text(value: bytes) -> str:
    return "0x" + value.hex().upper()


def format_value(value: object) -> str:
    """Any Python value (as a preprocess step may return) to its CSV field."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN: pandas' missing value
            return ""
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return binary_text(bytes(value))
    return quote(value if isinstance(value, str) else str(value))


def header_line(columns: Sequence[str]) -> str:
    return ",".join(quote(c) for c in columns) + "\n"


def compile_row_formatter(plain: Sequence[bool]) -> Callable[[Sequence], str]:
    """A function turning one row tuple into one CSV line.

    ``plain[i]`` is True when column i is known to hold only values that never need quoting and are
    never empty strings (numbers, dates, times): those fields are emitted as they are.
    """
    parts = []
    for i, is_plain in enumerate(plain):
        if is_plain:
            parts.append(f"('' if r[{i}] is None else r[{i}])")
        else:
            parts.append(f"('' if r[{i}] is None else _text(r[{i}]))")
    body = " + ',' + ".join(parts) if parts else "''"
    source = f"def _row(r):\n    return {body} + '\\n'\n"
    namespace: dict = {}
    exec(compile(source, "<csv_row>", "exec"), {"_text": _text}, namespace)  # noqa: S102 - code is ours
    return namespace["_row"]


def _text(value) -> str:
    if value.__class__ is str:
        if value and not _NEEDS_QUOTES(value):
            return value
        return '"' + value.replace('"', '""') + '"'
    return format_value(value)
