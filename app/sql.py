"""Upsert statements built once, at import, and executed with parameters.

Building an INSERT … ON CONFLICT per row (values, excluded, cache key) cost more than running
it: bench/processing.py went from ~230 to thousands of events/s when the projection switched
to these. Each statement is compiled once and cached by SQLAlchemy like any other.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, or_
from sqlalchemy.dialects.postgresql import Insert, insert


def upsert(
    table: Table,
    key: Sequence[str],
    columns: Sequence[str],
    *,
    set_: Callable[[Any], Mapping[str, Any]] | None = None,
    not_older: bool = False,
) -> Insert:
    """INSERT key+columns, ON CONFLICT (key) update `columns`, or what set_(excluded)
    returns. not_older: only if the row's changed_at is not
    newer than this one's: a late event changes nothing (WeCom does not promise order)."""
    statement = insert(table).values({name: bindparam(name) for name in (*key, *columns)})
    excluded = statement.excluded
    updates = dict(set_(excluded)) if set_ is not None else {c: excluded[c] for c in columns}
    where: ColumnElement[bool] | None = None
    if not_older:
        where = or_(
            table.c.changed_at.is_(None), table.c.changed_at <= statement.excluded.changed_at
        )
    return statement.on_conflict_do_update(index_elements=list(key), set_=updates, where=where)


def insert_ignore(table: Table, columns: Sequence[str], key: Sequence[str]) -> Insert:
    statement = insert(table).values({name: bindparam(name) for name in columns})
    return statement.on_conflict_do_nothing(index_elements=list(key))
