"""The processor's batch writes (app/processing/writes.py): one statement per kind of write
for a whole batch must leave exactly what the same rows leave applied one at a time, and
two processors writing the same counters must neither deadlock nor lose a count."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.actions.kinds import ActionKind
from app.config import Settings
from app.processing import projection
from app.processing.processor import EventProcessor
from app.processing.writes import collecting, defer, defer_enqueue, flush
from tests.conftest import RegisteredApp
from tests.processing_helpers import drain, sessionmaker_for

T0 = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    maker = sessionmaker_for(settings)
    yield maker
    await maker.kw["bind"].dispose()


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _follow(external: str, status: str, at: datetime, state: str) -> dict[str, Any]:
    return {
        "corp_id": "wwc",
        "userid": "zhangsan",
        "external_userid": external,
        "status": status,
        "added_at": at,
        "state": state,
        "changed_at": at,
    }


def _member(userid: str, at: datetime, **fields: str | None) -> dict[str, Any]:
    return {
        "corp_id": "wwc",
        "userid": userid,
        "name": fields.get("name"),
        "department": fields.get("department"),
        "position": fields.get("position"),
        "deleted_at": None,
        "changed_at": at,
    }


def _writes(app_id: int) -> list[tuple[Any, dict[str, Any]]]:
    """Rows that repeat keys in every way a batch can: a follow written newer, older, and
    twice at the same time; a customer seen three times; one counter row added to four
    times; a member whose fields arrive in two changes; a message delivered twice."""
    rows: list[tuple[Any, dict[str, Any]]] = [
        (projection._FOLLOW_ADDED, _follow("wmA", "active", _at(10), "a")),
        (projection._FOLLOW_ADDED, _follow("wmA", "half", _at(30), "b")),
        (projection._FOLLOW_ADDED, _follow("wmA", "active", _at(20), "c")),  # older: ignored
        (projection._FOLLOW_ADDED, _follow("wmB", "half", _at(5), "d")),
        (projection._FOLLOW_ADDED, _follow("wmB", "active", _at(5), "e")),  # a tie: the last
        (projection._FOLLOW_ADDED, _follow("wmC", "active", _at(0.000001), "f")),
        (projection._FOLLOW_ADDED, _follow("wmD", "active", _at(86399.999999), "g")),
    ]
    for seconds in (40, 5, 25):
        rows.append(
            (
                projection._CONTACT_SEEN,
                {"corp_id": "wwc", "external_userid": "wmA", "first_seen_at": _at(seconds)},
            )
        )
    for userid in ("zhangsan", "lisi", "zhangsan", "zhangsan"):
        rows.append(
            (
                projection._ADDED_COUNTED,
                {"hour": T0, "corp_id": "wwc", "userid": userid, "state": "s1", "added": 1},
            )
        )
    rows += [
        (projection._MEMBER, _member("wangwu", _at(1), name="王五")),
        (projection._MEMBER, _member("wangwu", _at(2), department="7")),
        (projection._MEMBER, _member("wangwu", _at(3), position="店长")),
    ]
    for content in ("first", "second"):
        rows.append(
            (
                projection._MESSAGE,
                {
                    "corp_id": "wwc",
                    "app_id": app_id,
                    "event_id": None,
                    "source": "app",
                    "msg_id": "m1",
                    "sender": "zhangsan",
                    "msg_type": "text",
                    "content": content,
                    "payload": {"Content": content, "nested": {"list": [1, None, "二"]}},
                    "sent_at": _at(7.25),
                },
            )
        )
    return rows


_STATE = {
    "follows": "SELECT external_userid, status, state, added_at, changed_at FROM follows",
    "external_contacts": "SELECT external_userid, first_seen_at FROM external_contacts",
    "customer_stats": "SELECT hour, userid, state, added FROM customer_stats",
    "members": "SELECT userid, name, department, position, changed_at FROM members",
    "messages": "SELECT msg_id, content, payload, sent_at FROM messages",
    "actions": "SELECT kind, target, idempotency_key, status, reason, deadline, payload"
    " FROM actions ORDER BY id",
}


async def _state(db: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    found = {}
    for table, query in _STATE.items():
        rows = [tuple(r) for r in await db.fetch(query)]
        found[table] = rows if table == "actions" else sorted(rows, key=repr)
    return found


async def _enqueue_some(session: AsyncSession, app_id: int) -> None:
    for n, (kind, skipped) in enumerate(
        (
            (ActionKind.ENRICH_CONTACT, None),
            (ActionKind.WELCOME, "no rule"),
            (ActionKind.ENRICH_CONTACT, None),
        )
    ):
        await defer_enqueue(
            session,
            kind=kind,
            app_id=app_id,
            corp_id="wwc",
            target=f"wm{n % 2}",
            idempotency_key=f"{kind}:{n % 2}",  # the third repeats the first: one action
            payload={"n": n},
            deadline=_at(20.5) if skipped is None else None,
            skipped=skipped,
        )


async def test_a_batch_leaves_what_its_rows_leave_one_at_a_time(
    sessionmaker: async_sessionmaker[AsyncSession],
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
) -> None:
    app_id = await db.fetchval("SELECT id FROM apps")
    writes = _writes(app_id)

    async with sessionmaker.begin() as session:  # one at a time, each statement at once
        for statement, params in writes:
            await defer(session, statement, params)
        await _enqueue_some(session, app_id)
    one_at_a_time = await _state(db)

    await db.execute(
        "TRUNCATE follows, external_contacts, customer_stats, members, messages, actions CASCADE"
    )
    async with sessionmaker.begin() as session:  # the processor's way: together, at the end
        collecting(session)
        await session.execute(text("SELECT 1"))  # the batch's mark comes first
        for statement, params in writes:
            await defer(session, statement, params)
        await _enqueue_some(session, app_id)
        assert await db.fetchval("SELECT count(*) FROM follows") == 0  # nothing sent yet
        await flush(session)
    assert await _state(db) == one_at_a_time

    follows = {r[0]: r for r in one_at_a_time["follows"]}
    assert follows["wmA"][1:3] == ("half", "b")  # the newest of three
    assert follows["wmB"][1:3] == ("active", "e")  # equal times: the later one
    assert follows["wmC"][3] == _at(0.000001)  # microseconds kept
    assert follows["wmD"][3] == _at(86399.999999)
    assert one_at_a_time["external_contacts"] == [("wmA", _at(5))]
    assert sorted(r[1:] for r in one_at_a_time["customer_stats"]) == [
        ("lisi", "s1", 1),
        ("zhangsan", "s1", 3),
    ]
    assert one_at_a_time["members"] == [("wangwu", "王五", "7", "店长", _at(3))]
    (message,) = one_at_a_time["messages"]
    assert message[1] == "first" and json.loads(message[2])["nested"] == {"list": [1, None, "二"]}
    assert [(a[0], a[3], a[5]) for a in one_at_a_time["actions"]] == [
        ("enrich_contact", "pending", _at(20.5)),
        ("welcome", "skipped", None),
    ]


async def test_a_repeated_key_across_statements_applies_in_event_order(
    sessionmaker: async_sessionmaker[AsyncSession], db: asyncpg.Connection
) -> None:
    """A churn between two adds of one follow: three statements' rows for one key, which
    the batch must not reorder (by statement they would be add, add, churn)."""
    async with sessionmaker.begin() as session:
        collecting(session)
        await session.execute(text("SELECT 1"))
        await defer(session, projection._FOLLOW_ADDED, _follow("wmA", "active", _at(0), "x"))
        await defer(
            session,
            projection._FOLLOW_DELETED_BY_CUSTOMER,
            {
                "corp_id": "wwc",
                "userid": "zhangsan",
                "external_userid": "wmA",
                "status": "deleted_by_customer",
                "deleted_by_customer_at": _at(10),
                "changed_at": _at(10),
            },
        )
        await defer(session, projection._FOLLOW_ADDED, _follow("wmA", "active", _at(20), "y"))
        await flush(session)
    follow = await db.fetchrow("SELECT status, state, deleted_by_customer_at FROM follows")
    assert follow is not None
    assert tuple(follow) == ("active", "y", _at(10))


async def _insert_adds(db: asyncpg.Connection, app_slug: str, count: int) -> None:
    """Adds that land on a few counter rows, in an order that differs from batch to batch
    (members ascending, then descending): two processors writing them row by row in event
    order would each hold a row the other wants."""
    await db.execute(
        """
        INSERT INTO events (app_id, received_at, family, type, dedup_key, raw_body, payload)
        SELECT a.id, now(), 'change_external_contact', 'add_external_contact', 'add:' || i, '',
               jsonb_build_object(
                   'ChangeType', 'add_external_contact',
                   'UserID', 'member' || CASE WHEN (i / 20) % 2 = 0 THEN i % 5 ELSE 4 - i % 5 END,
                   'ExternalUserID', 'wm' || i, 'State', 'ch' || (i % 3),
                   'CreateTime', '1700000000')
        FROM apps a, generate_series(1, $2) AS i WHERE a.slug = $1
        """,
        app_slug,
        count,
    )


async def test_two_processors_add_to_shared_counters_without_deadlock_or_loss(
    settings: Settings,
    wecom_app: RegisteredApp,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _insert_adds(db, wecom_app.slug, 800)
    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    before = await db.fetchval(deadlocks)
    makers = [sessionmaker_for(settings), sessionmaker_for(settings)]
    processors = [EventProcessor(m, worker=f"p{i}", batch_size=20) for i, m in enumerate(makers)]
    caplog.set_level("INFO", logger="app.processing.processor")
    runs: list[Awaitable[int]] = [drain(p, max_rounds=200) for p in processors]
    await asyncio.gather(*runs)
    for maker in makers:
        await maker.kw["bind"].dispose()

    assert await db.fetchval("SELECT count(*) FROM events WHERE status = 'processed'") == 800
    assert await db.fetchval("SELECT count(DISTINCT processed_by) FROM events") == 2
    assert await db.fetchval("SELECT sum(added) FROM customer_stats") == 800
    assert await db.fetchval("SELECT count(*) FROM customer_stats") == 15  # 5 members × 3
    assert await db.fetchval(deadlocks) == before
    assert not [r for r in caplog.records if "batch failed" in r.getMessage()]
