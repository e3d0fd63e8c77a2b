"""The action runner's own bookkeeping: a kind it does not know, and a runner that lost its
lease, both recorded rather than lost."""

import asyncio
import time

import asyncpg
import pytest

from app.actions.kinds import ActionKind, ActionStatus
from app.actions.runner import ActionRunner, ClaimedAction, Outcome, Run
from app.config import Settings
from tests.conftest import RegisteredApp, Simulator
from tests.processing_helpers import (
    holds,
    listener_for,
    most_spaced_claims,
    running_loop,
    wait_for,
)
from tests.test_automations import replica

_NEW_ACTION = """
    INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key)
    SELECT $1, id, corp_id, 'x', $1 FROM apps
"""

# The claim of the versions before migration 0018, as a runner of one still sends it during a
# rolling deploy: it took any pending action, whatever its lease.
_PREVIOUS_CLAIM = """
    UPDATE actions SET status = 'running', locked_by = 'an older runner',
        locked_until = now() + interval '60 s', attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM actions
        WHERE next_attempt_at <= now()
          AND (status = 'pending' OR (status = 'running' AND locked_until < now()))
        ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED
    )
"""


async def test_a_claim_is_a_lease_that_a_runner_of_an_older_version_cannot_take(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """A claim leaves the action pending and takes a lease, so that it changes no indexed
    column (a HOT update, ADR 0008). An older runner, which would take a pending action
    whatever its lease, has its claim refused instead (a rolling deploy)."""
    await db.execute(_NEW_ACTION, "from_the_future")
    async with replica(settings, simulator) as new:
        [claimed] = await new.runner.claim(limit=1)
        held = await db.fetchrow("SELECT status, locked_by FROM actions")
        assert held is not None
        assert (held["status"], held["locked_by"]) == ("pending", new.runner.worker)
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute(_PREVIOUS_CLAIM)
        assert await new.runner.claim(limit=1) == []  # held: nobody takes it twice
        await new.runner.execute(claimed)
    assert await db.fetchval("SELECT status FROM actions") == "failed"  # unknown_kind
    attempts = await db.fetch("SELECT outcome, worker FROM action_attempts")
    assert [tuple(a) for a in attempts] == [("failed", new.runner.worker)]


async def test_a_kind_this_version_does_not_know_fails_with_a_reason(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """A newer replica may write a kind an older one cannot run (a rolling deploy)."""
    await db.execute(_NEW_ACTION, "from_the_future")
    async with replica(settings, simulator) as other:
        assert await other.runner.run_once() == 1
    action = await db.fetchrow("SELECT status, error_code, reason FROM actions")
    assert action is not None
    assert (action["status"], action["error_code"]) == ("failed", "unknown_kind")
    assert "from_the_future" in action["reason"]
    attempts = await db.fetch("SELECT attempt, outcome, error_code FROM action_attempts")
    assert [tuple(a) for a in attempts] == [(1, "failed", "unknown_kind")]


async def test_a_runner_that_lost_its_lease_changes_nothing_but_its_attempt_is_logged(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    await db.execute(_NEW_ACTION, "from_the_future")
    async with (
        replica(settings, simulator, processor_lease_seconds=0.5) as slow,
        replica(settings, simulator) as other,
    ):
        [stale] = await slow.runner.claim(limit=1)

        async def lease_over() -> bool:
            return bool(await db.fetchval("SELECT locked_until < now() FROM actions"))

        await wait_for(lease_over)
        assert await other.runner.run_once() == 1  # taken over, and finished
        await slow.runner.execute(stale)  # the slow one comes back
    assert await db.fetchval("SELECT status FROM actions") == "failed"
    attempts = await db.fetch("SELECT attempt, outcome, worker FROM action_attempts ORDER BY id")
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "lease_lost")]
    assert attempts[1]["worker"] == slow.runner.worker


async def test_a_runner_cut_off_records_what_ran_before_it_gives_the_rest_back(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """Outcomes wait a moment for company before they are recorded (ADR 0008). A runner
    cut off then (SHUTDOWN_SECONDS passed) must record them, and announce them, before it
    gives back what it holds: given back first, the action would be pending again, its
    outcome refused for want of the lease, the call made twice and its news lost."""
    await db.execute(_NEW_ACTION, ActionKind.MARK_TAG.value)
    ran = asyncio.Event()
    announced: list[tuple[int, str]] = []

    async def handler(run: Run) -> Outcome:
        ran.set()
        return Outcome(ActionStatus.SUCCEEDED)

    async def finished(action: ClaimedAction, status: ActionStatus, *_: object) -> None:
        announced.append((action.id, status))

    async with replica(settings, simulator) as other:
        # A claim interval of 0.4 s: outcomes wait 0.1 s for company.
        runner = ActionRunner(
            other.pool,
            other.sessions,
            {ActionKind.MARK_TAG: handler},
            finished=finished,
            claim_interval=0.4,
        )
        running = asyncio.create_task(runner.run())
        await asyncio.wait_for(ran.wait(), 10)
        running.cancel()  # while the outcome waits
        await asyncio.gather(running, return_exceptions=True)
    assert await db.fetchval("SELECT status FROM actions") == "succeeded"
    attempts = await db.fetch("SELECT outcome FROM action_attempts")
    assert [a["outcome"] for a in attempts] == ["succeeded"]
    assert announced == [(await db.fetchval("SELECT id FROM actions"), "succeeded")]


async def test_actions_that_keep_coming_are_claimed_several_at_a_time(
    settings: Settings, simulator: Simulator, wecom_app: RegisteredApp, db: asyncpg.Connection
) -> None:
    """While actions keep coming, the runner claims at most once per claim interval (ADR
    0008). A claim stamps started_at with its statement's time: one value per claim."""
    ran: list[int] = []

    async def handler(run: Run) -> Outcome:
        ran.append(run.action.id)
        return Outcome(ActionStatus.SUCCEEDED)

    listener = listener_for(settings)
    async with replica(settings, simulator) as other:
        runner = ActionRunner(
            other.pool,
            other.sessions,
            {ActionKind.MARK_TAG: handler},
            claim_interval=0.25,
            listener=listener,
            poll_seconds=60,
        )
        async with running_loop(db, listener, runner.run()):
            started = time.monotonic()
            for n in range(30):  # one action every 25 ms, for about 0.75 s
                await db.execute(_NOTIFIED_ACTION, ActionKind.MARK_TAG.value, f"spaced-{n}")
                await asyncio.sleep(0.025)
            most = most_spaced_claims(time.monotonic() - started, 0.25)
            await wait_for(lambda: holds(db, _ALL_SUCCEEDED))
    claims = await db.fetchval("SELECT count(DISTINCT started_at) FROM actions")
    assert len(ran) == 30
    assert claims <= most, f"30 actions in {claims} claims: claimed as they came, not spaced"


_NOTIFIED_ACTION = """
    WITH new AS (
        INSERT INTO actions (kind, app_id, corp_id, target, idempotency_key)
        SELECT $1, id, corp_id, 'x', $2 FROM apps RETURNING id
    )
    SELECT pg_notify('wecom_hub_actions', '') FROM new
"""
_ALL_SUCCEEDED = "SELECT count(*) = 30 FROM actions WHERE status = 'succeeded'"
