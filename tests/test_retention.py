"""Retention: processed events older than WECOM_HUB_EVENT_RETENTION_DAYS are deleted in
batches; what they led to (actions, messages) stays; nothing waits on a locked row."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import REGISTRY

from app import housekeeping
from app.config import Settings
from app.db import asyncpg_dsn, create_engine, create_pool, create_sessionmaker
from tests.conftest import RegisteredApp


@pytest.fixture
async def pool(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    assert settings.database_url
    async with create_pool(asyncpg_dsn(settings.database_url), settings, max_size=2) as opened:
        yield opened


async def _event(db: asyncpg.Connection, key: str, *, days_ago: float, status: str) -> int:
    return int(
        await db.fetchval(
            """INSERT INTO events (app_id, received_at, family, type, dedup_key, raw_body, xml,
                                   payload, status)
               SELECT id, now() - make_interval(days => $2), 'message', 'text', $1, 'enc',
                      '<xml/>', '{}', $3
               FROM apps
               RETURNING id""",
            key,
            days_ago,
            status,
        )
    )


def _pruned() -> float:
    return REGISTRY.get_sample_value("wecom_hub_events_pruned_total") or 0.0


async def _left(db: asyncpg.Connection) -> set[str]:
    return {r["dedup_key"] for r in await db.fetch("SELECT dedup_key FROM events")}


async def test_old_processed_events_go_what_they_led_to_stays(
    pool: asyncpg.Pool, db: asyncpg.Connection, wecom_app: RegisteredApp
) -> None:
    old = [await _event(db, f"old-{i}", days_ago=181, status="processed") for i in range(5)]
    for key, status in (("old-pending", "pending"), ("old-failed", "failed")):
        await _event(db, key, days_ago=400, status=status)
    await _event(db, "recent", days_ago=179, status="processed")
    await db.execute(
        """INSERT INTO actions (kind, target, idempotency_key, event_id, status)
           VALUES ('welcome', 'wm1', 'w1', $1, 'succeeded')""",
        old[0],
    )
    await db.execute(
        """INSERT INTO messages (corp_id, app_id, event_id, source, msg_id, sender, msg_type,
                                 payload)
           SELECT corp_id, id, $1, 'app', 'm1', 'zhangsan', 'text', '{}' FROM apps""",
        old[1],
    )
    pruned_before = _pruned()

    assert await housekeeping.prune_events(pool, 180, batch=2) == 5

    assert await _left(db) == {"old-pending", "old-failed", "recent"}
    assert await db.fetchval("SELECT event_id FROM actions WHERE idempotency_key = 'w1'") is None
    assert await db.fetchval("SELECT event_id FROM messages WHERE msg_id = 'm1'") is None
    assert _pruned() - pruned_before == 5


async def test_a_row_another_transaction_holds_is_skipped_not_waited_for(
    pool: asyncpg.Pool, db: asyncpg.Connection, wecom_app: RegisteredApp
) -> None:
    held = await _event(db, "held", days_ago=200, status="processed")
    await _event(db, "free", days_ago=200, status="processed")
    async with db.transaction():
        await db.execute("SELECT 1 FROM events WHERE id = $1 FOR UPDATE", held)
        assert await asyncio.wait_for(housekeeping.prune_events(pool, 180), 5) == 1
    assert await _left(db) == {"held"}
    assert await housekeeping.prune_events(pool, 180) == 1  # the next round takes it


@pytest.mark.parametrize(("days", "left"), [(0, {"ancient"}), (30, set())])
async def test_the_housekeeping_round_prunes_unless_retention_is_zero(
    pool: asyncpg.Pool,
    db: asyncpg.Connection,
    settings: Settings,
    wecom_app: RegisteredApp,
    days: int,
    left: set[str],
) -> None:
    await _event(db, "ancient", days_ago=3650, status="processed")
    assert settings.database_url
    engine = create_engine(settings.database_url, settings, pool_size=1)
    await housekeeping.run_once(pool, create_sessionmaker(engine), retention_days=days)
    await engine.dispose()
    assert await _left(db) == left
