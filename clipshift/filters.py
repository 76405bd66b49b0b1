"""Row filters over the Lance tables, built in one place from column = value conditions.

Reads through pylance take a `pyarrow.compute` expression (`matches`): values travel as typed
Arrow scalars, never as text. LanceDB's `where` (vector search prefilters) and `delete` take a
SQL string; `where` builds it with every value quoted as a SQL literal, so a path or id holding
a quote cannot change the condition.

A condition's value is a single value (the column equals it) or a list, tuple or set (the
column is one of its values).
"""

from __future__ import annotations

import re
from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc

Scalar = str | int | float | bool
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def matches(**conditions: Scalar | Collection[Scalar]) -> pc.Expression:
    """Rows meeting every condition, as a pyarrow.compute expression for a pylance scan."""
    expression = None
    for column, value in conditions.items():
        field = pc.field(column)
        if _is_many(value):
            values = list(value)
            typed = pa.array(values, _arrow_type(values))
            term = field.isin(typed)
        else:
            term = field == value
        expression = term if expression is None else expression & term
    if expression is None:
        raise ValueError("matches() needs at least one condition")
    return expression


def where(**conditions: Scalar | Collection[Scalar]) -> str:
    """Rows meeting every condition, as a LanceDB SQL string (for `where` and `delete`)."""
    terms = []
    for column, value in conditions.items():
        if not _COLUMN.match(column):
            raise ValueError(f"not a plain column name: {column!r}")
        if _is_many(value):
            values = list(value)
            terms.append(
                f"{column} IN ({', '.join(map(sql_literal, values))})" if values else "FALSE"
            )
        else:
            terms.append(f"{column} = {sql_literal(value)}")
    if not terms:
        raise ValueError("where() needs at least one condition")
    return " AND ".join(terms)


def sql_literal(value: Scalar) -> str:
    """`value` as a SQL literal: text in single quotes with quotes doubled."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def _is_many(value) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))


def _arrow_type(values: list) -> pa.DataType:
    if all(isinstance(v, str) for v in values):
        return pa.string()
    return pa.array(values).type
