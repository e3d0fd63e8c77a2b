"""What the capacity work (ADR 0008) changed in how work is written, and what must not have
changed because of it: a batch's writes go out together yet apply in event order; outcomes
recorded together are each recorded; an enrichment never undoes tags marked after WeCom
answered it."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from app.actions.runner import _CLAIM
from app.config import Settings
from app.db import asyncpg_dsn, create_pool
from app.processing.enrichment import ContactWrites
from app.processing.processor import EventProcessor
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import deliver, sessionmaker_for
from tests.test_automations import replica
from tests.test_processing import T0, contact_event


async def test_one_batch_applies_an_add_a_churn_and_a_comeback_in_event_order(
    client: httpx.AsyncClient, settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """Processed one by one, the deletion at T0+10 is recorded and the comeback at T0+20
    makes the follow active again. Written together at the end of the batch, the same must
    hold: written by statement (every add, then every deletion), the deletion would be
    older than the follow and be dropped."""
    for change, at in (
        ("add_external_contact", T0),
        ("del_follow_user", T0 + 10),
        ("add_external_contact", T0 + 20),
    ):
        await deliver(client, wecom_app, contact_event(wecom_app, change, "wmA", at))
    await deliver(client, wecom_app, contact_event(wecom_app, "add_external_contact", "wmB", T0))
    maker = sessionmaker_for(settings)
    processor = EventProcessor(maker, worker="one-batch", batch_size=100)
    assert await processor.run_once() == 4  # one batch, one transaction
    await maker.kw["bind"].dispose()

    follow = await db.fetchrow(
        "SELECT status, deleted_by_customer_at, changed_at FROM follows"
        " WHERE external_userid = 'wmA'"
    )
    assert follow is not None
    assert follow["status"] == "active"
    assert follow["deleted_by_customer_at"].timestamp() == T0 + 10
    assert follow["changed_at"].timestamp() == T0 + 20
    counted = await db.fetchrow(
        "SELECT sum(added) AS added, sum(churned) AS churned FROM customer_stats"
    )
    assert counted is not None and (counted["added"], counted["churned"]) == (3, 1)
    enrichments = await db.fetchval("SELECT count(*) FROM actions WHERE kind = 'enrich_contact'")
    assert enrichments == 3  # one per add, none lost or doubled by the deferral
    assert await db.fetchval("SELECT count(*) FROM events WHERE status <> 'processed'") == 0


async def test_outcomes_that_finish_together_are_each_recorded(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key)
        SELECT 'from_the_future', a.id, a.corp_id, 'x' || i, 'k' || i
        FROM apps a, generate_series(1, 20) AS i
        """
    )
    async with replica(settings, simulator) as other:
        assert await other.runner.run_once() == 20  # twenty outcomes at once
    statuses = await db.fetch("SELECT DISTINCT status, error_code FROM actions")
    assert [tuple(s) for s in statuses] == [("failed", "unknown_kind")]
    attempts = await db.fetch(
        "SELECT action_id, attempt, outcome FROM action_attempts ORDER BY action_id"
    )
    assert len(attempts) == 20
    assert {(a["attempt"], a["outcome"]) for a in attempts} == {(1, "failed")}
    assert len({a["action_id"] for a in attempts}) == 20


async def test_an_enrichment_keeps_tags_marked_after_wecom_answered_it(
    settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    marked_at = datetime.now(UTC)
    await db.execute(
        "INSERT INTO follows (corp_id, userid, external_userid, status, tag_ids, tags_marked_at)"
        " VALUES ($1, 'zhangsan', 'wmA', 'active', '{etMARKED}', $2)",
        wecom_app.corp_id,
        marked_at,
    )
    answer = {
        "external_contact": {"external_userid": "wmA", "name": "王小明"},
        "follow_user": [{"userid": "zhangsan", "remark": "老客户", "tags": []}],
    }
    assert settings.database_url is not None
    async with create_pool(asyncpg_dsn(settings.database_url), settings, max_size=2) as pool:
        writes = ContactWrites(pool)
        # WeCom answered before the tag was marked: its (empty) list is older.
        asked = marked_at - timedelta(seconds=1)
        await writes.store(wecom_app.corp_id, "wmA", answer, asked)
        follow = await db.fetchrow("SELECT tag_ids, remark FROM follows")
        assert follow is not None and (follow["tag_ids"], follow["remark"]) == (
            ["etMARKED"],
            "老客户",
        )
        # Asked after it: WeCom's list is the truth.
        await writes.store(wecom_app.corp_id, "wmA", answer, marked_at + timedelta(seconds=1))
        assert await db.fetchval("SELECT tag_ids FROM follows") == []
    name = await db.fetchval("SELECT name FROM external_contacts WHERE external_userid = 'wmA'")
    assert name == "王小明"


async def test_enrichments_that_finish_together_are_stored_together_and_the_latest_wins(
    settings: Settings, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """One statement for every answer that came while the last one was written; a customer
    asked twice in one batch keeps the later answer (an upsert may not touch a row twice)."""
    asked = datetime.now(UTC)

    def answer(external_userid: str, name: str) -> dict[str, Any]:
        return {
            "external_contact": {"external_userid": external_userid, "name": name},
            "follow_user": [{"userid": "zhangsan", "remark": name, "tags": []}],
        }

    assert settings.database_url is not None
    async with create_pool(asyncpg_dsn(settings.database_url), settings, max_size=2) as pool:
        writes = ContactWrites(pool)
        later, earlier = asked + timedelta(seconds=1), asked - timedelta(seconds=1)
        await asyncio.gather(
            *(
                writes.store(wecom_app.corp_id, f"wm{i}", answer(f"wm{i}", f"客户{i}"), asked)
                for i in range(20)
            ),
            writes.store(wecom_app.corp_id, "wm0", answer("wm0", "新名字"), later),
            writes.store(wecom_app.corp_id, "wm1", answer("wm1", "旧名字"), earlier),
        )
    # Rows written by one statement share its transaction id.
    transactions = await db.fetchval("SELECT count(DISTINCT xmin::text) FROM external_contacts")
    assert transactions <= 2, transactions
    names = {
        r[0]: r[1] for r in await db.fetch("SELECT external_userid, name FROM external_contacts")
    }
    assert len(names) == 20 and (names["wm0"], names["wm1"], names["wm7"]) == (
        "新名字",
        "客户1",
        "客户7",
    )
    remarks = {r[0]: r[1] for r in await db.fetch("SELECT external_userid, remark FROM follows")}
    assert (remarks["wm0"], remarks["wm1"]) == ("新名字", "客户1")


async def test_a_claim_reads_the_due_index_in_order_not_by_bitmap(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The runner's pools make no bitmap scans (app/db.py create_pool, ADR 0008): between
    two vacuums the due index is mostly entries of actions that have moved on, which a
    bitmap scan visits in the table on every claim, and the planner, counting live rows
    only, prefers it. And the actions waiting to retry are passed over in the index itself.
    Five due welcomes among thousands that are done, and webhooks waiting an hour:"""
    await db.execute(
        "INSERT INTO actions (kind, target, idempotency_key, deadline)"
        " SELECT 'send_welcome', 'wm' || i, 'welcome:' || i, now() + make_interval(secs => i)"
        " FROM generate_series(1, 5000) AS i"
    )
    # All but five move on, as a claim (a lease) and then an outcome move them.
    await db.execute(
        "UPDATE actions SET locked_by = 'a runner', locked_until = now() WHERE id % 1000 <> 0"
    )
    await db.execute(
        "UPDATE actions SET status = 'succeeded', locked_by = NULL, locked_until = NULL"
        " WHERE id % 1000 <> 0"
    )
    await db.execute(
        "INSERT INTO actions (kind, target, idempotency_key, next_attempt_at)"
        " SELECT 'webhook', 'https://receiver.example', 'webhook:' || i,"
        "        now() + interval '1 hour'"
        " FROM generate_series(1, 2000) AS i"
    )
    await db.execute("ANALYZE actions")
    due = await db.fetch("SELECT id FROM actions WHERE status = 'pending' AND deadline IS NOT NULL")
    assert settings.database_url is not None
    async with create_pool(asyncpg_dsn(settings.database_url), settings, max_size=1) as pool:
        claim = ("w1", 30.0, 32, ["webhook"], False)  # the runner of every kind but webhook
        plan = "\n".join(row[0] for row in await pool.fetch("EXPLAIN " + _CLAIM, *claim))
        async with pool.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            try:  # ANALYZE runs the claim: rolled back, so the one below claims the same
                analyzed = await connection.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + _CLAIM, *claim
                )
            finally:
                await transaction.rollback()
        claimed = await pool.fetch(_CLAIM, *claim)
    assert "Bitmap" not in plan and "Index Scan using ix_actions_due" in plan, plan
    scan = _node(json.loads(analyzed)[0]["Plan"], "ix_actions_due")
    # The hour-long waits were passed over in the index, not fetched and filtered out.
    assert scan.get("Rows Removed by Filter", 0) == 0, scan
    assert sorted(row["id"] for row in claimed) == sorted(row["id"] for row in due)


def _node(plan: dict[str, Any], index: str) -> dict[str, Any]:
    """The node of an EXPLAIN (FORMAT JSON) plan that scans this index."""
    if plan.get("Index Name") == index:
        return plan
    for child in plan.get("Plans", []):
        try:
            return _node(child, index)
        except LookupError:
            pass
    raise LookupError(index)
