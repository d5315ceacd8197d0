"""The contract's CSV format on Arrow data, column by column with Arrow compute kernels.

The Arrow preprocess API (``preprocess_api: arrow``) writes a preprocess's output batches as the
contract's bytes without per-row Python: RFC 4180 quoting only where a value needs it (``"``, ``,``,
CR, LF) or is the empty string, NULL as an empty unquoted field.

How non-text output columns print (the way MySQL's text protocol prints the same types, where there is
one): integers as digits; booleans as ``1``/``0``; DECIMAL at the type's scale; floats in the shortest
text that reads back to the same double (``0.1``, ``1``, ``1e+20``: not Python's ``repr``, which the
pandas API uses), NaN as NULL (as the pandas API writes it); DATE as ``YYYY-MM-DD``;
timestamps as ``YYYY-MM-DD HH:MM:SS`` plus the unit's fraction digits (none for ``s``), in UTC;
binary as ``0x`` + uppercase hex. Any other type (lists, structs, durations...) is refused with the
column's name. ``csv_format`` is the format for Python values; this module never imports Airflow.
"""
from __future__ import annotations

from typing import Sequence

_QUOTE_CHARS = r'[",\r\n]'


class ArrowFormatError(ValueError):
    """An output column Arrow cannot print in the contract's format; the message names it."""


def _is_text(t) -> bool:
    import pyarrow.types as pt

    return pt.is_string(t) or pt.is_large_string(t) or pt.is_string_view(t)


def normalized(array):
    """One output column as it is printed and profiled: dictionaries decoded, any text type as
    ``string``, float NaN as null (the CSV has no NaN: the pandas API writes it as NULL too)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    if pt.is_dictionary(array.type):
        array = array.dictionary_decode()
    t = array.type
    if _is_text(t) and not pt.is_string(t):
        return array.cast(pa.string())
    if pt.is_floating(t) and pc.any(pc.is_nan(array)).as_py():
        return pc.if_else(pc.is_nan(array), pa.scalar(None, t), array)
    return array


def column_text(array, name: str):
    """The printed text of every value of one ``normalized`` Arrow column (a ``string`` array, nulls
    kept), and whether a value may need quoting (only text can)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pt

    t = array.type
    if pt.is_string(t):
        return array, True
    if pt.is_null(t):
        return pa.nulls(len(array), pa.string()), False
    if pt.is_boolean(t):
        return pc.if_else(array, "1", "0"), False
    if pt.is_integer(t) or pt.is_floating(t) or pt.is_decimal(t) or pt.is_date(t):
        return array.cast(pa.string()), False
    if pt.is_timestamp(t):
        if t.tz is not None:  # the stored instant is UTC: drop the zone to print UTC wall time
            array = array.cast(pa.timestamp(t.unit))
        return pc.strftime(array, format="%Y-%m-%d %H:%M:%S"), False  # %S carries the unit's fraction
    if pt.is_binary(t) or pt.is_large_binary(t) or pt.is_fixed_size_binary(t):
        # Rare in a preprocess's output: hex per value in Python (C-speed bytes.hex, one pass).
        return pa.array([None if v is None else "0x" + v.hex().upper() for v in array.to_pylist()], pa.string()), False
    raise ArrowFormatError(f"column {name!r} has Arrow type {t}, which has no CSV text: return strings, integers, "
                           "floats, decimals, booleans, dates or timestamps (cast or format it in the preprocess)")


def batch_bytes(texts: Sequence[tuple]):
    """The CSV lines of one batch from its columns' printed text (``column_text``'s pairs), as one
    bytes-like object. With the C engine built, one pass in C (``_fastexport.format_batch``, the GIL
    released); else with Arrow kernels (``csv_field`` per column, lines joined, the values buffer)."""
    if not texts or not len(texts[0][0]):
        return b""
    try:
        from dataset_registry import _fastexport
    except ImportError:
        for text, quotable in texts:
            if quotable:
                try:
                    text.validate(full=True)  # UTF-8: Arrow strings built unchecked may not be
                except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid
                    raise ArrowFormatError(f"a text column is not valid UTF-8 ({exc})") from None
        return _batch_bytes_arrow(texts)
    columns = []
    for text, quotable in texts:
        validity, offsets, data = text.buffers()
        columns.append((offsets, data if data is not None else b"", validity, text.offset, quotable))
    try:
        return _fastexport.format_batch(columns, len(texts[0][0]))
    except ValueError as exc:
        raise ArrowFormatError(str(exc)) from None


def csv_field(text, quotable: bool):
    """One column's CSV fields: quoted where needed (text only), NULL as the empty unquoted field."""
    import pyarrow.compute as pc

    if quotable:
        needs = pc.or_(pc.match_substring_regex(text, _QUOTE_CHARS), pc.equal(pc.binary_length(text), 0))
        if pc.any(needs).as_py():
            quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
            text = pc.if_else(needs, quoted, text)
    return pc.fill_null(text, "")


def _batch_bytes_arrow(texts: Sequence[tuple]) -> memoryview:
    """``batch_bytes`` with Arrow kernels only: each line ends in \\n, so the joined lines' values
    buffer is the batch's CSV."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    fields = [csv_field(t, q) for t, q in texts]
    lines = pc.binary_join_element_wise(*fields, ",") if len(fields) > 1 else fields[0]
    lines = pc.binary_join_element_wise(lines, "\n", "")  # (value, "\n") joined by ""
    wide = lines.type == pa.large_string()
    _, offsets, data = lines.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int64 if wide else np.int32)[lines.offset:lines.offset + len(lines) + 1]
    start, end = int(bounds[0]), int(bounds[-1])
    return memoryview(data)[start:end] if data is not None else memoryview(b"")
