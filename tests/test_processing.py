"""Events projected into customer state, exactly once, in any order, by any processor."""

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.processing.processor import EventProcessor
from app.simulator.callbacks import add_external_contact, event_xml, text_message
from tests.conftest import RegisteredApp
from tests.processing_helpers import (
    deliver,
    drain,
    holds,
    listener_for,
    most_spaced_claims,
    row,
    running_loop,
    sessionmaker_for,
    wait_for,
)

T0 = 1_700_000_000


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    maker = sessionmaker_for(settings)
    yield maker
    await maker.kw["bind"].dispose()


@pytest.fixture
def processor(sessionmaker: async_sessionmaker[AsyncSession]) -> EventProcessor:
    return EventProcessor(sessionmaker, worker="test-processor")


def contact_event(app: RegisteredApp, change: str, external: str, at: int, **extra: str) -> str:
    fields = {"ChangeType": change, "UserID": "zhangsan", "ExternalUserID": external, **extra}
    return event_xml(app.corp_id, "change_external_contact", fields, create_time=at)


async def test_new_customer_projects_contact_follow_and_enrichment(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    await deliver(
        client,
        wecom_app,
        add_external_contact(
            corp_id=wecom_app.corp_id,
            user_id="zhangsan",
            external_user_id="wmA",
            state="spring_promo",
            welcome_code="W1",
            create_time=T0,
        ),
    )
    assert await drain(processor) == 1

    contact = await row(db, "SELECT * FROM external_contacts")
    assert (contact["corp_id"], contact["external_userid"]) == (wecom_app.corp_id, "wmA")
    assert contact["first_seen_at"].timestamp() == T0
    follow = await row(db, "SELECT * FROM follows")
    assert (follow["userid"], follow["status"], follow["state"]) == (
        "zhangsan",
        "active",
        "spring_promo",
    )
    assert follow["added_at"].timestamp() == T0
    actions = await db.fetch("SELECT kind, target, status, reason FROM actions ORDER BY id")
    assert [tuple(a)[:3] for a in actions] == [
        ("enrich_contact", "wmA", "pending"),
        ("welcome", "wmA", "skipped"),  # no welcome rule yet: said so, not silently dropped
    ]
    assert "no enabled welcome rule" in actions[1]["reason"]
    event = await row(db, "SELECT status, processed_by, error FROM events")
    assert tuple(event) == ("processed", "test-processor", None)


async def test_churn_and_member_deletion_are_told_apart(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    await deliver(client, wecom_app, contact_event(wecom_app, "add_external_contact", "wmA", T0))
    await deliver(client, wecom_app, contact_event(wecom_app, "add_external_contact", "wmB", T0))
    await deliver(client, wecom_app, contact_event(wecom_app, "del_follow_user", "wmA", T0 + 5))
    await deliver(
        client,
        wecom_app,
        contact_event(
            wecom_app, "del_external_contact", "wmB", T0 + 6, Source="DELETE_BY_TRANSFER"
        ),
    )
    await drain(processor)
    rows = {r["external_userid"]: r for r in await db.fetch("SELECT * FROM follows")}
    assert rows["wmA"]["status"] == "deleted_by_customer"
    assert rows["wmA"]["deleted_by_customer_at"].timestamp() == T0 + 5
    assert rows["wmB"]["status"] == "deleted_by_member"
    assert rows["wmB"]["delete_source"] == "DELETE_BY_TRANSFER"


async def test_a_late_add_does_not_undo_a_later_deletion(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    await deliver(client, wecom_app, contact_event(wecom_app, "del_follow_user", "wmA", T0 + 20))
    await drain(processor)
    await deliver(client, wecom_app, contact_event(wecom_app, "add_external_contact", "wmA", T0))
    await drain(processor)
    follow = await row(db, "SELECT status, changed_at FROM follows")
    assert follow["status"] == "deleted_by_customer"
    assert follow["changed_at"].timestamp() == T0 + 20
    # …but a newer add (the customer came back) does.
    await deliver(
        client, wecom_app, contact_event(wecom_app, "add_external_contact", "wmA", T0 + 30)
    )
    await drain(processor)
    assert await db.fetchval("SELECT status FROM follows") == "active"


async def test_half_added_customer(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    await deliver(
        client,
        wecom_app,
        contact_event(
            wecom_app, "add_half_external_contact", "wmA", T0, State="s1", WelcomeCode="W"
        ),
    )
    await drain(processor)
    assert await db.fetchval("SELECT status FROM follows") == "half"


async def test_customer_group_lifecycle(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    def chat(change: str, at: int, **fields: str | list[str]) -> str:
        return event_xml(
            wecom_app.corp_id,
            "change_external_chat",
            {"ChatId": "wrC1", "ChangeType": change, **fields},
            create_time=at,
        )

    await deliver(client, wecom_app, chat("create", T0))
    await deliver(
        client,
        wecom_app,
        chat(
            "update",
            T0 + 1,
            UpdateDetail="add_member",
            JoinScene="3",
            MemChangeCnt="2",
            MemChangeList=["wmA", "wmB"],
        ),
    )
    await deliver(
        client,
        wecom_app,
        chat(
            "update",
            T0 + 2,
            UpdateDetail="del_member",
            QuitScene="1",
            MemChangeCnt="1",
            MemChangeList=["wmB"],
        ),
    )
    await deliver(client, wecom_app, chat("dismiss", T0 + 3))
    await drain(processor)

    group = await row(db, "SELECT * FROM customer_groups")
    assert group["created_at"].timestamp() == T0
    assert group["dismissed_at"].timestamp() == T0 + 3
    members = {r["member_id"]: r for r in await db.fetch("SELECT * FROM group_members")}
    assert members["wmA"]["join_scene"] == 3 and members["wmA"]["quit_at"] is None
    assert members["wmB"]["quit_at"].timestamp() == T0 + 2 and members["wmB"]["quit_scene"] == 1
    kinds = [r["kind"] for r in await db.fetch("SELECT kind FROM actions ORDER BY id")]
    assert kinds == ["enrich_group"] * 3


async def test_tag_deletion_applies_at_once_and_resyncs(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        "INSERT INTO tags (corp_id, tag_id, group_id, name) VALUES ($1, 'etT1', 'etG1', 'VIP')",
        wecom_app.corp_id,
    )
    await deliver(
        client,
        wecom_app,
        event_xml(
            wecom_app.corp_id,
            "change_external_tag",
            {"Id": "etT1", "TagType": "tag", "ChangeType": "delete"},
            create_time=T0,
        ),
    )
    await drain(processor)
    assert (await db.fetchval("SELECT deleted_at FROM tags")).timestamp() == T0
    assert await db.fetchval("SELECT kind FROM actions") == "sync_tags"


async def test_app_message_and_contact_changes(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    await deliver(
        client,
        wecom_app,
        text_message(
            corp_id=wecom_app.corp_id, from_user="lisi", content="菜单", msg_id="m1", create_time=T0
        ),
    )
    await deliver(
        client,
        wecom_app,
        event_xml(
            wecom_app.corp_id,
            "change_contact",
            {"ChangeType": "create_user", "UserID": "lisi", "Name": "李四", "Department": "1,2"},
        ),
    )
    await deliver(
        client,
        wecom_app,
        event_xml(
            wecom_app.corp_id,
            "change_contact",
            {"ChangeType": "create_party", "Id": "2", "Name": "销售部", "ParentId": "1"},
        ),
    )
    await deliver(client, wecom_app, event_xml(wecom_app.corp_id, "some_future_event", {"X": "1"}))
    assert await drain(processor) == 4

    message = await row(db, "SELECT source, sender, msg_type, content, msg_id FROM messages")
    assert tuple(message) == ("app", "lisi", "text", "菜单", "m1")
    assert tuple(await row(db, "SELECT name, department FROM members")) == ("李四", "1,2")
    assert await db.fetchval("SELECT name FROM departments WHERE id = '2'") == "销售部"
    statuses = await db.fetch("SELECT type, status FROM events ORDER BY id")
    assert {r["status"] for r in statuses} == {"processed"}


async def test_an_event_delivered_three_times_projects_once(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    message = contact_event(wecom_app, "add_external_contact", "wmA", T0, WelcomeCode="W1")
    for _ in range(3):
        await deliver(client, wecom_app, message)
    assert await drain(processor) == 1
    assert await db.fetchval("SELECT count(*) FROM follows") == 1
    assert await db.fetchval("SELECT count(*) FROM actions") == 2  # enrichment, welcome
    # Even processing the same event again (an operator's replay) changes nothing.
    await db.execute("UPDATE events SET status = 'pending'")
    assert await drain(processor) == 1
    assert await db.fetchval("SELECT count(*) FROM actions") == 2
    assert await db.fetchval("SELECT count(*) FROM follows") == 1


async def test_a_poison_event_fails_with_its_reason_and_blocks_nothing(
    client: httpx.AsyncClient,
    wecom_app: RegisteredApp,
    processor: EventProcessor,
    db: asyncpg.Connection,
) -> None:
    broken = event_xml(
        wecom_app.corp_id,
        "change_external_contact",
        {"ChangeType": "add_external_contact", "UserID": "zhangsan"},
    )
    await deliver(client, wecom_app, broken)
    await deliver(client, wecom_app, contact_event(wecom_app, "add_external_contact", "wmA", T0))
    await drain(processor)
    rows = await db.fetch("SELECT status, error FROM events ORDER BY id")
    assert rows[0]["status"] == "failed"
    assert "ExternalUserID" in rows[0]["error"]
    assert rows[1]["status"] == "processed"


async def _insert_events(db: asyncpg.Connection, app_slug: str, count: int) -> None:
    await db.execute(
        """
        INSERT INTO events (app_id, received_at, family, type, msg_id, dedup_key, raw_body,
                            xml, payload)
        SELECT a.id, now(), 'message', 'text', 'm' || i, 'msg:m' || i, '', '',
               jsonb_build_object('MsgType', 'text', 'MsgId', 'm' || i, 'Content', 'hi',
                                  'FromUserName', 'u', 'CreateTime', '1700000000')
        FROM apps a, generate_series(1, $2) AS i WHERE a.slug = $1
        """,
        app_slug,
        count,
    )


async def test_two_processors_process_each_of_1000_events_exactly_once(
    settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    await _insert_events(db, wecom_app.slug, 1000)
    makers = [sessionmaker_for(settings), sessionmaker_for(settings)]
    processors = [EventProcessor(m, worker=f"p{i}", batch_size=50) for i, m in enumerate(makers)]
    await asyncio.gather(*(drain(p) for p in processors))
    for maker in makers:
        await maker.kw["bind"].dispose()

    counts: dict[str, int] = {
        r[0]: r[1]
        for r in await db.fetch(
            "SELECT processed_by, count(*) FROM events WHERE status = 'processed' GROUP BY 1"
        )
    }
    assert sum(counts.values()) == 1000
    assert set(counts) == {"p0", "p1"}  # both did real work, side by side
    assert await db.fetchval("SELECT count(*) FROM messages") == 1000


async def test_a_dead_processors_events_are_taken_over_after_its_lease(
    settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    await _insert_events(db, wecom_app.slug, 20)
    dead_maker, live_maker = sessionmaker_for(settings), sessionmaker_for(settings)
    dead = EventProcessor(dead_maker, worker="dead", lease_seconds=1.5)
    live = EventProcessor(live_maker, worker="live", lease_seconds=1.5)

    claimed = await dead.claim()  # committed claims, then the process "dies"
    assert len(claimed) == 20
    assert await live.run_once() == 0  # the lease still holds

    deadline = time.monotonic() + 10
    while await db.fetchval("SELECT count(*) FROM events WHERE status = 'processed'") < 20:
        assert time.monotonic() < deadline, "events were not taken over"
        await live.run_once()
        await asyncio.sleep(0.1)
    assert await db.fetchval("SELECT count(DISTINCT processed_by) FROM events") == 1
    assert await db.fetchval("SELECT max(attempts) FROM events") == 2

    # The dead one coming back finds it no longer holds them: nothing is done twice.
    for event in claimed:
        await dead.process(event)
    assert await db.fetchval("SELECT count(*) FROM messages") == 20
    for maker in (dead_maker, live_maker):
        await maker.kw["bind"].dispose()


async def test_notify_wakes_the_processor_at_once(
    client: httpx.AsyncClient,
    settings: Settings,
    wecom_app: RegisteredApp,
    sessionmaker: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
) -> None:
    listener = listener_for(settings)
    # Polling alone would take a minute.
    processor = EventProcessor(sessionmaker, listener=listener, poll_seconds=60)
    async with running_loop(db, listener, processor.run()):
        await deliver(
            client, wecom_app, contact_event(wecom_app, "add_external_contact", "wmA", T0)
        )
        processed = "SELECT status = 'processed' FROM events"
        await wait_for(lambda: holds(db, processed), within=5)  # not the minute's poll


async def test_events_that_keep_coming_are_claimed_several_at_a_time(
    client: httpx.AsyncClient,
    settings: Settings,
    wecom_app: RegisteredApp,
    sessionmaker: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
) -> None:
    """While events keep coming, the processor claims at most once per claim interval, so
    each batch takes what arrived meanwhile (ADR 0008): one statement for several events,
    not one each. A batch is marked processed in one transaction: one processed_at."""
    listener = listener_for(settings)
    processor = EventProcessor(
        sessionmaker, listener=listener, poll_seconds=60, claim_interval=0.25
    )
    async with running_loop(db, listener, processor.run()):
        started = time.monotonic()
        for n in range(30):  # one event every 25 ms, for about 0.75 s
            xml = text_message(
                corp_id=wecom_app.corp_id, from_user="m", content=f"{n}", msg_id=f"spaced-{n}"
            )
            await deliver(client, wecom_app, xml)
            await asyncio.sleep(0.025)
        most = most_spaced_claims(time.monotonic() - started, 0.25)
        await wait_for(lambda: holds(db, _ALL_PROCESSED))
    batches = await db.fetchval("SELECT count(DISTINCT processed_at) FROM events")
    assert batches <= most, f"30 events in {batches} batches: claimed as they came, not spaced"


_ALL_PROCESSED = "SELECT count(*) = 30 FROM events WHERE status = 'processed'"
