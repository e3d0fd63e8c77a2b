"""The event processor: claims stored events, projects each exactly once, records failures.

Claims are leases (SELECT … FOR UPDATE SKIP LOCKED, then locked_by/locked_until), so any
number of processes can run this on one database, and the events of a process that died are
taken over once its lease runs out. Each event is projected in its own transaction that
first marks it processed *if this processor still holds it*: a processor whose lease was
taken over finds nothing to mark and rolls its projection back, so an event is projected
once even when two processors briefly hold it.

It wakes at once on the NOTIFY that ingest sends, and polls as a fallback in case a
notification is lost (a dropped LISTEN connection, another writer).
"""

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.automations.store import RuleCache
from app.automations.triggers import automate
from app.db import is_unavailable
from app.events.context import Context
from app.events.models import InvalidEvent, parse_event
from app.metrics import EVENTS_PROCESSED
from app.models import Event
from app.notify import EVENTS_CHANNEL, RULES_CHANNEL, ClaimSpacing, Listener, worker_id
from app.processing.projection import Projector, project
from app.processing.writes import collecting, flush
from app.webhooks.publish import Subscriptions, publish_event

log = logging.getLogger(__name__)

# One statement on its own (autocommit): one round trip, where a session's transaction took
# three (BEGIN, the claim, COMMIT); at a few events per batch that was most of the claim.
_CLAIM = """
    UPDATE events AS e
    SET locked_by = $1, locked_until = now() + make_interval(secs => $2),
        attempts = e.attempts + 1
    FROM apps AS a
    WHERE a.id = e.app_id AND e.id IN (
        SELECT id FROM events
        WHERE status = 'pending'
          AND (next_attempt_at IS NULL OR next_attempt_at <= now())
          AND (locked_until IS NULL OR locked_until < now())
        ORDER BY id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING e.id, e.app_id, a.corp_id, e.family, e.type, e.payload::text AS payload,
              e.received_at, e.attempts
"""


# The batch's events, those this processor still holds: one text statement with an array
# (one prepared statement whatever the batch size; the ORM's IN list made one per size).
_MARK_PROCESSED = text(
    """
    UPDATE events SET status = 'processed', processed_at = now(), processed_by = :worker,
        error = NULL, locked_by = NULL, locked_until = NULL
    WHERE id = ANY(CAST(:ids AS bigint[])) AND locked_by = :worker AND status = 'pending'
    RETURNING id
    """
)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    app_id: int
    corp_id: str
    family: str
    type: str
    payload: dict[str, Any]
    received_at: datetime
    attempts: int


def _context(claimed: Claimed) -> Context:
    return Context(
        event_id=claimed.id,
        app_id=claimed.app_id,
        corp_id=claimed.corp_id,
        received_at=claimed.received_at,
    )


class LostClaim(Exception):
    """Another processor took this event over (our lease ran out)."""


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff with jitter: ~2 s, 4 s, 8 s … capped at 5 minutes."""
    base = min(2.0**attempts, 300.0)
    return timedelta(seconds=base * random.uniform(0.5, 1.0))


class EventProcessor:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        listener: Listener | None = None,
        batch_size: int = 100,
        lease_seconds: float = 60.0,
        max_attempts: int = 8,
        poll_seconds: float = 1.0,
        claim_interval: float = 0.0,
        worker: str | None = None,
        projector: Projector = project,
        webhooks: Subscriptions | None = None,
    ) -> None:
        """projector is what an event does to the state; bench/processing.py swaps in a
        no-op to measure the claim-and-mark machinery alone. listener: new events wake the
        loop, and a changed rule drops the rules cached for automations; without one, the
        loop polls."""
        self._sessionmaker = sessionmaker
        self._project = projector
        self._rules = RuleCache()
        self._webhooks = webhooks or Subscriptions()
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._poll_seconds = poll_seconds
        self._claim_interval = claim_interval
        self.worker = worker or worker_id()
        self._wake = asyncio.Event()
        if listener is not None:
            listener.wake(EVENTS_CHANNEL, self._wake)
            listener.wake(RULES_CHANNEL, self._rules.changed)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process events until `stop` is set (the batch in hand is finished first)."""
        stop = stop or asyncio.Event()
        spacing = ClaimSpacing(self._claim_interval)
        try:
            while not stop.is_set():
                await spacing.wait()
                if stop.is_set():
                    break
                # Cleared before the claim: what is notified while it runs wakes the wait.
                self._wake.clear()
                try:
                    done = await self.run_once()
                except Exception as exc:  # the database is down: keep trying, do not die
                    log.warning("event processing paused", extra={"error": repr(exc)})
                    done = 0
                spacing.claimed(full=done >= self._batch_size)
                if done == 0:
                    waiters = {
                        asyncio.ensure_future(self._wake.wait()),
                        asyncio.ensure_future(stop.wait()),
                    }
                    _, pending = await asyncio.wait(
                        waiters, timeout=self._poll_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                    for waiter in pending:
                        waiter.cancel()
        finally:
            await self._release_held()

    async def _release_held(self) -> None:
        """Claims this processor still holds (a batch cut off at a stop) are given back at
        once, not left for their lease to run out."""
        try:
            async with self._sessionmaker.begin() as session:
                await session.execute(
                    update(Event)
                    .where(Event.locked_by == self.worker, Event.status == "pending")
                    .values(locked_by=None, locked_until=None)
                )
        except Exception as exc:  # Postgres away: the leases end by themselves
            log.warning("claims not released", extra={"error": repr(exc)})

    async def run_once(self) -> int:
        """Claim one batch and process it; the number of events claimed."""
        claimed = await self.claim()
        if claimed:
            await self.process_batch(claimed)
        return len(claimed)

    async def process_batch(self, claimed: list[Claimed]) -> None:
        """The whole batch in one transaction: one commit instead of one per event. If any
        event in it fails, the transaction is rolled back and the batch is done again one
        event at a time, so a poison event fails alone and the others go through."""
        try:
            async with self._sessionmaker.begin() as session:
                # The batch's writes go out together at the end (app/processing/writes.py).
                collecting(session)
                rows = await session.execute(
                    _MARK_PROCESSED, {"ids": [event.id for event in claimed], "worker": self.worker}
                )
                owned = set(rows.scalars())
                for event in claimed:
                    if event.id in owned:
                        await self._apply(session, event)
                await flush(session)
        except Exception as exc:
            log.info(
                "batch failed, processing its events one by one",
                extra={"events": len(claimed), "error": repr(exc)[:300]},
            )
            for event in claimed:
                await self.process(event)
            return
        EVENTS_PROCESSED.labels("processed").inc(len(owned))

    async def _apply(self, session: AsyncSession, event: Claimed) -> None:
        """What one event does, in the caller's transaction: the state it changes, the
        actions its rules make, the webhooks it sends."""
        typed = parse_event(event.family, event.type, event.payload)
        context = _context(event)
        await self._project(session, typed, context)
        await automate(session, typed, context, self._rules)
        await publish_event(session, typed, context, self._webhooks)

    async def claim(self) -> list[Claimed]:
        async with self._sessionmaker() as session:
            # The session's connection before it begins a transaction: the statement commits
            # by itself.
            connection = await session.connection()
            raw = (await connection.get_raw_connection()).driver_connection
            assert raw is not None
            try:
                rows = await raw.fetch(_CLAIM, self.worker, self._lease_seconds, self._batch_size)
            except Exception as exc:
                # SQLAlchemy did not see this statement fail: a connection that died with a
                # Postgres restart must not go back to its pool, or every claim fails on it.
                if is_unavailable(exc):
                    await connection.invalidate()
                raise
        claimed = [Claimed(**{**dict(row), "payload": json.loads(row["payload"])}) for row in rows]
        return sorted(claimed, key=lambda c: c.id)

    async def process(self, claimed: Claimed) -> None:
        """One event in its own transaction, its failure recorded with the reason."""
        try:
            async with self._sessionmaker.begin() as session:
                await self._mark(
                    session,
                    claimed.id,
                    status="processed",
                    processed_at=func.now(),
                    processed_by=self.worker,
                    error=None,
                )
                await self._apply(session, claimed)
        except LostClaim:
            log.info("event taken over by another processor", extra={"event_id": claimed.id})
            return
        except InvalidEvent as exc:
            await self._failed(claimed, str(exc), permanent=True)
            return
        except Exception as exc:
            await self._failed(claimed, f"{type(exc).__name__}: {exc}", permanent=False)
            return
        EVENTS_PROCESSED.labels("processed").inc()

    async def _mark(
        self, session: AsyncSession, event_id: int, *, status: str, **values: Any
    ) -> None:
        """Set the outcome, only if this processor still holds the claim."""
        result = await session.execute(
            update(Event)
            .where(Event.id == event_id, Event.locked_by == self.worker, Event.status == "pending")
            .values(status=status, locked_by=None, locked_until=None, **values)
            .returning(Event.id)
        )
        if result.first() is None:
            raise LostClaim(event_id)

    async def _failed(self, claimed: Claimed, reason: str, *, permanent: bool) -> None:
        """Keep the reason; retry later with backoff, or give up after max_attempts. One
        poison event never blocks the others: it just waits for its next attempt."""
        final = permanent or claimed.attempts >= self._max_attempts
        log.warning(
            "event processing failed",
            extra={
                "event_id": claimed.id,
                "attempt": claimed.attempts,
                "final": final,
                "reason": reason[:500],
            },
        )
        try:
            async with self._sessionmaker.begin() as session:
                if final:
                    await self._mark(session, claimed.id, status="failed", error=reason)
                else:
                    await self._mark(
                        session,
                        claimed.id,
                        status="pending",
                        error=reason,
                        next_attempt_at=func.now() + retry_delay(claimed.attempts),
                    )
        except LostClaim:
            return
        EVENTS_PROCESSED.labels("failed" if final else "retry").inc()
