"""The processor's writes for one claimed batch, sent together: one pipelined statement per
kind of write instead of a round trip per event and write.

Projection and triggers call `defer(session, STATEMENT, params)`. In the processor's batch
transaction (`collecting`) that only records the row; `flush` then sends each statement's
rows with asyncpg's executemany (one prepared statement, one round trip, the rows run in
order, each with the same effect as when run alone) before the batch commits. Anywhere else
(the one-event-at-a-time path, tests, tools) the statement runs at once through the
session, as before.

Order is kept where it matters: rows of one statement run in the order they came; a row
for a key that another statement already has pending (an add and a deletion of the same
follow in one batch) first flushes that table's statements, so the two apply in event
order. (No deferred statement reads a table another one writes: the churn counter reads
the events table, which none of them writes.) Counters
have no key: additions commute. Code that *reads* what the projection writes (friend_of,
the churn alert) must `await flush(session)` first.

Statements are compiled once, at import, to asyncpg's SQL: no compilation, cache key or
parameter processing per row (ADR 0008).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import Insert, TextClause
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import ENQUEUE_SQL, enqueue_params
from app.actions.kinds import ActionKind
from app.db import is_unavailable

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
_INFO_KEY = "wecom_hub_writes"


@dataclass(frozen=True, eq=False)
class Prepared:
    """A statement with its asyncpg SQL and parameter order. key: the parameters that name
    the row it writes (None: it commutes with every other write, e.g. a counter)."""

    statement: Insert | TextClause
    table: str
    key: tuple[str, ...] | None
    sql: str
    names: tuple[str, ...]
    processors: Mapping[str, Any]

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        values = []
        for name in self.names:
            value = params[name]
            process = self.processors.get(name)
            values.append(process(value) if process is not None else value)
        return tuple(values)


def prepare(statement: Insert | TextClause, table: str, key: Sequence[str] | None) -> Prepared:
    compiled = statement.compile(dialect=_DIALECT)
    names = tuple(compiled.positiontup or ())
    processors = {}
    for name in names:
        bind_type = compiled.binds[name].type
        process = bind_type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
        if process is not None:
            processors[name] = process
    return Prepared(
        statement,
        table,
        tuple(key) if key is not None else None,
        str(compiled),
        names,
        processors,
    )


@dataclass
class Writes:
    pending: dict[Prepared, list[tuple[Any, ...]]] = field(default_factory=dict)
    # (table, key values) → the statement that has a row for it pending
    rows: dict[tuple[Any, ...], Prepared] = field(default_factory=dict)


def collecting(session: AsyncSession) -> None:
    """From now on, defer() in this session's transaction waits for flush()."""
    session.info[_INFO_KEY] = Writes()


async def defer(session: AsyncSession, prepared: Prepared, params: Mapping[str, Any]) -> None:
    writes: Writes | None = session.info.get(_INFO_KEY)
    if writes is None:
        connection = await session.connection()
        await connection.execute(prepared.statement, dict(params))
        return
    if prepared.key is not None:
        row = (prepared.table, *(params[name] for name in prepared.key))
        other = writes.rows.get(row)
        if other is not None and other is not prepared:
            # Only that table's statements: no deferred statement reads another's table.
            await flush(session, table=prepared.table)
        writes.rows[row] = prepared
    writes.pending.setdefault(prepared, []).append(prepared.args(params))


async def flush(session: AsyncSession, *, table: str | None = None) -> None:
    """Send what is pending (only `table`'s statements, if given), in the session's
    transaction. A no-op outside `collecting`."""
    writes: Writes | None = session.info.get(_INFO_KEY)
    if writes is None or not writes.pending:
        return
    if table is None:
        pending, writes.pending, writes.rows = writes.pending, {}, {}
    else:
        pending = {p: rows for p, rows in writes.pending.items() if p.table == table}
        for prepared in pending:
            del writes.pending[prepared]
        writes.rows = {row: p for row, p in writes.rows.items() if row[0] != table}
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert isinstance(raw, asyncpg.Connection)
    assert raw.is_in_transaction(), "defer() outside a begun transaction"
    try:
        for prepared, rows in pending.items():
            await raw.executemany(prepared.sql, rows)
    except Exception as exc:
        # Unseen by SQLAlchemy: a connection lost midway must not return to its pool.
        if is_unavailable(exc):
            await connection.invalidate()
        raise


# Actions written by the processor (enrichment, welcomes, tags): app/actions/enqueue.py's
# statement, deferred like the projection's writes. Its answer (the action's id) is not
# needed there.
_ENQUEUE = prepare(ENQUEUE_SQL, "actions", ("idempotency_key",))


async def defer_enqueue(
    session: AsyncSession,
    *,
    kind: ActionKind,
    app_id: int | None,
    corp_id: str | None,
    target: str,
    idempotency_key: str,
    event_id: int | None = None,
    payload: dict[str, Any] | None = None,
    deadline: datetime | None = None,
    skipped: str | None = None,
) -> None:
    """app.actions.enqueue.enqueue, deferred: exactly one action per idempotency_key."""
    await defer(
        session,
        _ENQUEUE,
        enqueue_params(
            kind=kind,
            app_id=app_id,
            corp_id=corp_id,
            target=target,
            idempotency_key=idempotency_key,
            event_id=event_id,
            payload=payload,
            deadline=deadline,
            skipped=skipped,
        ),
    )
