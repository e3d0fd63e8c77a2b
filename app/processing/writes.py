"""The processor's writes for one claimed batch, sent together: each kind of write once
for the whole batch, and the kinds together in as few statements as can be.

Projection and triggers call `defer(session, STATEMENT, params)`. In the processor's batch
transaction (`collecting`) that only records the row; `flush` then sends every pending row
before the batch commits. Anywhere else (the one-event-at-a-time path, sync, tests) the
statement runs at once, with one row.

What a flush saves (ADR 0008, bench/processing.py): Postgres parses the parameters,
plans, starts and ends an executor for every execution, and each round trip costs both
processes CPU and a wake-up. One execution per row (asyncpg's executemany) made that
about half of what an upsert cost Postgres; one round trip per kind of write still made
it most of what the projection cost beyond the claim. So each statement takes all of the
batch's rows at once, and statements on different tables go out together, each a
data-modifying CTE of one statement (`_together`), in rank order: for the benchmark's
mix, three round trips where there were ten. The rows travel as one JSON array of
arrays per statement, read by `jsonb_array_elements`: asyncpg encodes an array
parameter value by value, with checks that cost more than the encoding; `json.dumps` does
it in C.

One statement may not write a row twice (ON CONFLICT DO UPDATE refuses, and two CTEs of
one statement cannot see each other's rows), so no two statements on one table go out
together, and rows of one statement that name the same key are settled in it, as
`Repeats` says: the newest one counts (an upsert that keeps the newest), they are
combined (counters add, first_seen_at takes the least), or each repeat goes into a later
execution (in event order). A row for a key that *another* statement has pending (an add
and a churn of the same follow in one batch) first flushes that table's statements, so
the two apply in event order. (No deferred statement reads a table another one writes:
the churn counter reads the events table, which none of them writes.) Code that *reads*
what the projection writes (friend_of, the churn alert) must `await flush(session)` first.

Two processors side by side mostly take their row locks in one order, so they wait for
each other rather than deadlock: statements run in one fixed order (rank), the rows of
each in key order, and the rows many events share (counters, a group's row) last, so they
are held for the shortest time before the commit. Not every order is fixed: a table
flushed early for an event-order conflict, and statements that keep event order (KEEP,
SPLIT), may meet another processor's rows in the opposite order. Postgres then aborts one
batch, which the processor runs again one event at a time: slower, never wrong.

Statements are built once, at import (and each combination once, when first used): no
compilation, cache key or parameter processing per row.
"""

import enum
import functools
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, Unpack

import asyncpg
from sqlalchemy import Insert
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncSession

from app.actions.enqueue import NewAction, enqueue_params
from app.actions.kinds import ActionStatus
from app.db import is_unavailable
from app.notify import ACTIONS_CHANNEL

_DIALECT = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
_INFO_KEY = "wecom_hub_writes"
_RANKS = itertools.count()


class Repeats(enum.Enum):
    """What one execution does with rows of the batch that name the same key."""

    KEEP = "keep"  # all of them, in event order: ON CONFLICT DO NOTHING, the first one wins
    NEWEST = "newest"  # the newest (changed_at; the last of equals): a not_older upsert
    COMBINE = "combine"  # one row, the columns combined (sum, min): counters, first seen
    SPLIT = "split"  # a repeat goes into a later execution: applied one after the other


@dataclass(frozen=True, eq=False)
class Prepared:
    """A deferred write: SQL reading its rows from one JSON parameter (rows_source), each
    row the values of `names` in order. key: the parameters that name the row it writes
    (None: it commutes with every other write, e.g. a counter). rank: the order in which a
    flush sends statements."""

    table: str
    key: tuple[str, ...] | None
    repeats: Repeats
    insert: str  # INSERT … ON CONFLICT …, no RETURNING; its rows are $1
    names: tuple[str, ...]
    processors: Mapping[str, Any]
    rank: tuple[bool, int]
    notify: str | None = None  # a channel told (on commit) when a row was inserted
    sql: str = field(init=False, repr=False)  # the statement on its own
    # The parameters in `names` order and the key's values, picked in C: a batch calls
    # these for every row.
    values_of: Callable[[Mapping[str, Any]], tuple[Any, ...]] = field(init=False, repr=False)
    key_of: Callable[[Mapping[str, Any]], Any] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.names) < 2:  # itemgetter of one name gives the value, not a tuple
            raise ValueError("a deferred write has at least two parameters")
        if self.insert.count("$") != 1 or "RETURNING" in self.insert:
            raise ValueError("a deferred write reads $1 once and returns nothing")
        object.__setattr__(self, "values_of", itemgetter(*self.names))
        object.__setattr__(self, "key_of", itemgetter(*self.key) if self.key else None)
        sql = self.insert
        if self.notify is not None:
            sql = f"WITH w AS ({self.insert} RETURNING 1) SELECT {self.result('w')}"
        object.__setattr__(self, "sql", sql)

    def result(self, cte: str) -> str:
        """What a statement selects from this one run as the CTE `cte`: reading it to the
        end makes it run there, in the select list's order."""
        if self.notify is None:
            return f"(SELECT count(*) FROM {cte})"  # noqa: S608 - a name from code
        return (
            f"(SELECT CASE WHEN count(*) > 0 THEN pg_notify('{self.notify}', '') END"  # noqa: S608
            f" FROM {cte})"
        )

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        values = self.values_of(params)
        if not self.processors:
            return values
        return tuple(
            process(value) if (process := self.processors.get(name)) is not None else value
            for name, value in zip(self.names, values, strict=True)
        )


# What the asyncpg dialect makes of `insert(t).values({c: bindparam(c)})`: positional
# parameters with their casts, nothing else (checked at import).
_INSERT = re.compile(
    r"^INSERT INTO (?P<table>\w+) \((?P<columns>[\w, ]+)\) VALUES \((?P<values>[^()]+)\)"
    r"(?P<rest> ON CONFLICT .*)$",
    re.DOTALL,
)
_PARAM = re.compile(r"^\$(?P<n>\d+)::(?P<type>[A-Z][A-Z ]*)$")
_AGGREGATES = frozenset({"sum", "min", "max"})
_TIMESTAMP = frozenset({"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"})
_JSON = frozenset({"JSON", "JSONB"})
_PLAIN = frozenset({"VARCHAR", "TEXT", "INTEGER", "BIGINT", "SMALLINT", "BOOLEAN"})


def _column(index: int, type_: str) -> str:
    """The SQL for the index-th value of a row `r.v` of the batch's JSON, as type_."""
    type_ = type_.upper()
    if type_ in _TIMESTAMP:  # sent as seconds since the epoch (_json_value)
        return f"to_timestamp(CAST(r.v->>{index} AS float8))"
    if type_ in _JSON:  # nested as it is; JSON null is SQL NULL
        return f"CAST(nullif(r.v->{index}, 'null') AS {type_})"
    if type_ in _PLAIN:
        return f"CAST(r.v->>{index} AS {type_})"
    raise ValueError(f"no JSON form for {type_}")


def rows_source(columns: Sequence[tuple[str, str]]) -> str:
    """`u`: the batch's rows (the statement's one parameter, $1, a JSON array of arrays,
    one value per column in this order) with their types and `u.ord`, the row's place."""
    values = ", ".join(
        f"{_column(index, type_)} AS {_quoted(name)}" for index, (name, type_) in enumerate(columns)
    )
    rows = "jsonb_array_elements(CAST(CAST($1 AS text) AS jsonb)) WITH ORDINALITY AS r(v, ord)"
    return f"(SELECT {values}, r.ord FROM {rows}) AS u"  # noqa: S608 - names and types from code


def _json_value(value: object) -> float:
    """What JSON has no form for: a datetime goes as seconds since the epoch (a double
    holds microseconds exactly in this century; to_timestamp rounds them back)."""
    if isinstance(value, datetime):
        return value.timestamp()
    raise TypeError(f"{type(value).__name__} is not a deferred write's value")


def _batch(rows: Sequence[tuple[Any, ...]]) -> str:
    return json.dumps(rows, default=_json_value, separators=(",", ":"))


def _quoted(name: str) -> str:
    return f'"{name}"'


def prepare(
    statement: Insert,
    table: str,
    key: Sequence[str] | None,
    *,
    repeats: Repeats = Repeats.KEEP,
    combine: Mapping[str, str] | None = None,
    last: bool = False,
) -> Prepared:
    """A Core INSERT … VALUES (one bind parameter per column) … ON CONFLICT, for a batch:
    the same statement, its VALUES row replaced by `SELECT … FROM` the batch's rows.

    repeats: NEWEST only for an upsert whose SET takes every column from `excluded` and
    that applies only when not older (app.sql.upsert's not_older): keeping the newest row
    of a key is then what applying each row in turn would leave. COMBINE: `combine` names
    the aggregate (sum, min, max) of every column outside the key. last: rows that many
    events share, written after the others."""
    compiled = statement.inline().compile(dialect=_DIALECT)
    names = tuple(compiled.positiontup or ())
    found = _INSERT.match(str(compiled))
    if found is None or found["table"] != table:
        raise ValueError(f"not a single-row INSERT … ON CONFLICT into {table}: {compiled}")
    params = [_PARAM.match(value) for value in found["values"].split(", ")]
    if tuple(found["columns"].split(", ")) != names or any(
        param is None or int(param["n"]) != n for n, param in enumerate(params, 1)
    ):
        raise ValueError(f"VALUES is not one parameter per column, in order: {compiled}")
    types = [param["type"] for param in params if param is not None]
    if repeats is not Repeats.KEEP and not key:
        raise ValueError(f"{repeats} needs a key")
    if repeats is Repeats.KEEP and "DO UPDATE" in found["rest"]:
        # Two rows of the batch for one row of the table would fail the whole batch.
        raise ValueError("an upsert says what a batch does with a repeated key (repeats)")
    by_key = ", ".join(f"u.{_quoted(name)}" for name in key or ())
    source = rows_source(list(zip(names, types, strict=True)))
    if repeats is Repeats.COMBINE:
        functions = dict(combine or {})
        if set(functions) != set(names) - set(key or ()) or not set(functions.values()) <= (
            _AGGREGATES
        ):
            raise ValueError(f"combine must name sum, min or max for {set(names) - set(key or ())}")
        selected = ", ".join(
            f"{functions[name]}(u.{_quoted(name)})" if name in functions else f"u.{_quoted(name)}"
            for name in names
        )
        select = f"SELECT {selected} FROM {source} GROUP BY {by_key} ORDER BY {by_key}"  # noqa: S608
    else:
        selected = ", ".join(f"u.{_quoted(name)}" for name in names)
        if repeats is Repeats.NEWEST:
            if "changed_at" not in names:
                raise ValueError("NEWEST needs changed_at")
            newest = f"{by_key}, u.changed_at DESC NULLS LAST, u.ord DESC"
            select = f"SELECT DISTINCT ON ({by_key}) {selected} FROM {source} ORDER BY {newest}"  # noqa: S608
        else:
            order = by_key if repeats is Repeats.SPLIT else "u.ord"
            select = f"SELECT {selected} FROM {source} ORDER BY {order}"  # noqa: S608
    processors = {}
    for name, type_ in zip(names, types, strict=True):
        if type_ in _JSON:
            continue  # nested in the batch's JSON as it is
        bind_type = compiled.binds[name].type
        process = bind_type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
        if process is not None:
            processors[name] = process
    return Prepared(
        table,
        None if repeats is Repeats.COMBINE else tuple(key or ()) or None,
        repeats,
        f"INSERT INTO {table} ({found['columns']}) {select}{found['rest']}",
        names,
        processors,
        (last, next(_RANKS)),
    )


def prepare_sql(
    insert: str,
    columns: Sequence[tuple[str, str]],
    table: str,
    key: Sequence[str] | None,
    *,
    last: bool = False,
    notify: str | None = None,
) -> Prepared:
    """An INSERT written for a batch by hand: `{rows}` in it is the batch's rows, `u`
    (rows_source(columns)), and it copes by itself with rows that repeat a key (DO
    NOTHING, or GROUP BY)."""
    if "{rows}" not in insert:
        raise ValueError("the statement does not read {rows}")
    return Prepared(
        table,
        tuple(key) if key is not None else None,
        Repeats.KEEP,
        insert.replace("{rows}", rows_source(columns)).strip(),
        tuple(name for name, _ in columns),
        {},
        (last, next(_RANKS)),
        notify,
    )


@functools.lru_cache(maxsize=256)
def _together(statements: tuple[Prepared, ...]) -> str:
    """Statements on different tables as one: each a data-modifying CTE, run in the
    order given (the select list reads each to its end, in turn). One round trip where
    each took one; Postgres runs them in one snapshot, which is why no two may write
    one table (a row written twice in one statement is an error)."""
    if len(statements) == 1:
        return statements[0].sql
    ctes = ", ".join(
        f"w{n} AS ({p.insert.replace('$1', f'${n + 1}')} RETURNING 1)"
        for n, p in enumerate(statements)
    )
    results = ", ".join(p.result(f"w{n}") for n, p in enumerate(statements))
    return f"WITH {ctes} SELECT {results}"


@dataclass
class _Rows:
    """One statement's pending rows: executions in order, each row in the first one after
    every earlier row with its key (SPLIT), or all in one (the others)."""

    executions: list[list[tuple[Any, ...]]] = field(default_factory=lambda: [[]])
    last_execution: dict[tuple[Any, ...], int] = field(default_factory=dict)


@dataclass
class Writes:
    pending: dict[Prepared, _Rows] = field(default_factory=dict)
    # (table, key values) → the statement that has a row for it pending
    rows: dict[tuple[Any, ...], Prepared] = field(default_factory=dict)


def collecting(session: AsyncSession) -> None:
    """From now on, defer() in this session's transaction waits for flush()."""
    session.info[_INFO_KEY] = Writes()


async def defer(session: AsyncSession, prepared: Prepared, params: Mapping[str, Any]) -> None:
    writes: Writes | None = session.info.get(_INFO_KEY)
    args = prepared.args(params)
    if writes is None:
        connection = await session.connection()
        await connection.exec_driver_sql(prepared.sql, (_batch([args]),))
        return
    row: tuple[Any, ...] = ()
    if prepared.key_of is not None:
        row = (prepared.table, prepared.key_of(params))
        other = writes.rows.get(row)
        if other is not None and other is not prepared:
            # Only that table's statements: no deferred statement reads another's table.
            await flush(session, table=prepared.table)
        writes.rows[row] = prepared
    pending = writes.pending.get(prepared)
    if pending is None:
        pending = writes.pending[prepared] = _Rows()
    if prepared.repeats is Repeats.SPLIT:
        execution = pending.last_execution.get(row, -1) + 1
        pending.last_execution[row] = execution
        if execution == len(pending.executions):
            pending.executions.append([])
        pending.executions[execution].append(args)
    else:
        pending.executions[0].append(args)


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
    # In rank order, as few statements as can be: a statement joins the one before
    # unless that one writes its table already.
    together: list[list[tuple[Prepared, list[tuple[Any, ...]]]]] = [[]]
    for prepared in sorted(pending, key=lambda p: p.rank):
        for rows in pending[prepared].executions:
            if any(p.table == prepared.table for p, _ in together[-1]):
                together.append([])
            together[-1].append((prepared, rows))
    try:
        for statements in together:
            await raw.execute(
                _together(tuple(p for p, _ in statements)),
                *(_batch(rows) for _, rows in statements),
            )
    except Exception as exc:
        # Unseen by SQLAlchemy: a connection lost midway must not return to its pool.
        if is_unavailable(exc):
            await connection.invalidate()
        raise


# Actions written by the processor (enrichment, welcomes, tags): what
# app/actions/enqueue.py's ENQUEUE_SQL does for one row, for a batch. Its answer (the
# action's id) is not needed here; a repeated idempotency key, in the batch or in the table,
# writes nothing; the action runners are woken (on commit) only if a row was written.
_ENQUEUE = prepare_sql(
    f"""
    INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key, event_id, payload,
                         deadline, status, reason, finished_at)
    SELECT u.kind, u.app_id, u.corp_id, u.target, u.idempotency_key, u.event_id,
           CAST(u.payload AS jsonb), u.deadline, u.status, u.reason,
           CASE WHEN u.status = '{ActionStatus.PENDING}' THEN NULL ELSE now() END
    FROM {{rows}}
    ORDER BY u.ord
    ON CONFLICT (idempotency_key) DO NOTHING
    """,  # noqa: S608 - the only interpolation is a constant
    (
        ("kind", "text"),
        ("app_id", "integer"),
        ("corp_id", "text"),
        ("target", "text"),
        ("idempotency_key", "text"),
        ("event_id", "bigint"),
        ("payload", "text"),  # enqueue_params gives it as JSON text
        ("deadline", "timestamptz"),
        ("status", "text"),
        ("reason", "text"),
    ),
    "actions",
    ("idempotency_key",),
    notify=ACTIONS_CHANNEL,
)


async def defer_enqueue(session: AsyncSession, **action: Unpack[NewAction]) -> None:
    """app.actions.enqueue.enqueue, deferred: exactly one action per idempotency_key."""
    await defer(session, _ENQUEUE, enqueue_params(**action))
