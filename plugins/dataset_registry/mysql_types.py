"""MySQL type names of a result set's columns, from the protocol's type codes and flags.

Used wherever a version carries its schema (lineage schema facet, profile): the name a person
would write in DDL (``DECIMAL``, ``VARCHAR``, ``VARBINARY``, ``DATETIME``, ...), without length or
scale. TEXT and BLOB share one type code on the wire; the BINARY flag tells them apart.
"""
from __future__ import annotations

from typing import Sequence

BINARY_FLAG = 128  # MySQLdb.constants.FLAG.BINARY

_NAMES = {
    0: "DECIMAL", 1: "TINYINT", 2: "SMALLINT", 3: "INT", 4: "FLOAT", 5: "DOUBLE", 6: "NULL", 7: "TIMESTAMP",
    8: "BIGINT", 9: "MEDIUMINT", 10: "DATE", 11: "TIME", 12: "DATETIME", 13: "YEAR", 14: "DATE", 15: "VARCHAR",
    16: "BIT", 245: "JSON", 246: "DECIMAL", 247: "ENUM", 248: "SET", 249: "TINYTEXT", 250: "MEDIUMTEXT",
    251: "LONGTEXT", 252: "TEXT", 253: "VARCHAR", 254: "CHAR", 255: "GEOMETRY",
}
_BINARY_NAMES = {"VARCHAR": "VARBINARY", "CHAR": "BINARY", "TINYTEXT": "TINYBLOB", "MEDIUMTEXT": "MEDIUMBLOB",
                 "LONGTEXT": "LONGBLOB", "TEXT": "BLOB"}


def type_name(type_code: int, flags: int = 0) -> str:
    """``DECIMAL`` for 246, ``VARBINARY`` for 253 with the BINARY flag, ``UNKNOWN(n)`` for a new code."""
    name = _NAMES.get(type_code, f"UNKNOWN({type_code})")
    if flags & BINARY_FLAG and name in _BINARY_NAMES:
        return _BINARY_NAMES[name]
    return name


def type_names(description: Sequence[Sequence], flags: Sequence[int] | None = None) -> list[str]:
    """One name per column of a DB-API ``cursor.description`` (flags: ``result.field_flags()``)."""
    flags = list(flags or [0] * len(description))
    return [type_name(int(d[1]), int(f)) for d, f in zip(description, flags)]
