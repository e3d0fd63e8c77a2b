"""Chores every action-runner process does once a minute. Each is idempotent and safe to run
from every replica at once; a failed round (Postgres away) is simply the next round's to do.

- enqueue the uploads of welcome attachment files that are due (app/automations/media.py)
- forget the answers to idempotent API writes after 24 hours (app/apikeys.py)
- delete processed events older than WECOM_HUB_EVENT_RETENTION_DAYS, in small batches
- after each minute, read the queues into the gauges and log a summary: what this process
  did in that minute, and how much waits
"""

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.actions.kinds import ActionKind
from app.apikeys import prune_idempotent_requests
from app.automations.media import SCHEDULE_UPLOADS
from app.metrics import (
    ACTIONS_FINISHED,
    ACTIONS_PENDING,
    CALLBACKS,
    EVENTS_PENDING,
    EVENTS_PROCESSED,
    EVENTS_PRUNED,
    PROCESSING_LAG,
)

log = logging.getLogger(__name__)

EVERY_SECONDS = 60.0

# Each batch is one statement in a transaction of its own: its locks (the rows, and the
# actions and messages whose event_id becomes NULL) last one batch, tens of milliseconds
# at this size, never the whole prune. Replicas share the work (SKIP LOCKED) and never
# wait on each other or on a processor.
PRUNE_EVENTS = """
    DELETE FROM events WHERE id IN (
        SELECT id FROM events
        WHERE received_at < now() - make_interval(days => $1) AND status = 'processed'
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
"""
PRUNE_BATCH = 1000
# A round stops pruning after this long (its other chores wait meanwhile); a backlog (a
# retention just shortened) is worked off over as many rounds as it takes.
PRUNE_SECONDS = 10.0

# Each part reads an index: the oldest due event by ix_events_pending, the pending events
# counted in the same index, pending actions by ix_actions_due.
BACKLOG = """
    SELECT coalesce(extract(epoch FROM now() - (
               SELECT received_at FROM events
               WHERE status = 'pending'
                 AND (next_attempt_at IS NULL OR next_attempt_at <= now())
               ORDER BY id LIMIT 1
           )), 0)::float8,
           (SELECT count(*) FROM events WHERE status = 'pending'),
           coalesce(pending.kinds, '{}'), coalesce(pending.counts, '{}')
    FROM (
        SELECT array_agg(kind) AS kinds, array_agg(n) AS counts
        FROM (
            SELECT kind, count(*) AS n FROM actions
            WHERE status = 'pending' AND locked_by IS NULL  -- not held: kinds.status_sql
            GROUP BY kind
        ) k
    ) AS pending
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits, database-wide: the same whichever replica reads it."""

    lag_seconds: float
    events_pending: int
    actions_pending: dict[str, int]

    @classmethod
    def from_row(cls, row: Iterable[Any]) -> "Backlog":
        """From a BACKLOG row, as asyncpg or SQLAlchemy return it."""
        lag, events, kinds, counts = row
        return cls(float(lag), int(events), dict(zip(kinds, counts, strict=True)))

    def show(self) -> None:
        """Into the gauges: a kind with nothing pending shows 0, not its last count."""
        PROCESSING_LAG.set(self.lag_seconds)
        EVENTS_PENDING.set(self.events_pending)
        for kind in {*ActionKind, *self.actions_pending}:
            ACTIONS_PENDING.labels(kind).set(self.actions_pending.get(kind, 0))


async def prune_events(
    db: asyncpg.Pool, days: int, *, batch: int = PRUNE_BATCH, budget: float = PRUNE_SECONDS
) -> int:
    """Delete processed events received more than `days` ago; how many were deleted.
    Pending and failed events stay, whatever their age: they still have work or a reason to
    show."""
    deleted, started = 0, time.monotonic()
    while True:
        status = await db.execute(PRUNE_EVENTS, days, batch)  # "DELETE <count>"
        count = int(status.rsplit(" ", 1)[1])
        deleted += count
        EVENTS_PRUNED.inc(count)
        if count < batch or time.monotonic() - started >= budget:
            return deleted


async def run_once(
    db: asyncpg.Pool, sessionmaker: async_sessionmaker[AsyncSession], *, retention_days: int
) -> None:
    try:
        await db.execute(SCHEDULE_UPLOADS)
        async with sessionmaker.begin() as session:
            await prune_idempotent_requests(session)
        if retention_days:
            await prune_events(db, retention_days)
    except Exception as exc:
        log.warning("housekeeping round skipped", extra={"error": repr(exc)})


def _by(counter: Counter, label: str) -> defaultdict[str, float]:
    """The counter's values added up by one of its labels, as /metrics shows them."""
    totals: defaultdict[str, float] = defaultdict(float)
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels[label]] += sample.value
    return totals


def _total(counter: Counter) -> float:
    return sum(
        sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


_ACCEPTED = frozenset({"stored", "duplicate", "url_verified"})
# In every summary, 0 or not, so that every line has the same fields.
_ACTION_OUTCOMES = ("succeeded", "failed", "expired", "skipped", "retry")


def counted() -> dict[str, int]:
    """This process's counters, in the summary's words."""
    callbacks = _by(CALLBACKS, "outcome")
    events = _by(EVENTS_PROCESSED, "outcome")
    actions = _by(ACTIONS_FINISHED, "status")
    totals = {
        "callbacks_stored": callbacks["stored"],
        "callbacks_duplicate": callbacks["duplicate"],
        "callbacks_rejected": sum(n for o, n in callbacks.items() if o not in _ACCEPTED),
        "urls_verified": callbacks["url_verified"],
        "events_processed": events["processed"],
        "events_retried": events["retry"],
        "events_failed": events["failed"],
        "events_pruned": _total(EVENTS_PRUNED),
        **{f"actions_{status}": actions[status] for status in {*_ACTION_OUTCOMES, *actions}},
    }
    return {name: int(n) for name, n in totals.items()}


class Summary:
    """What this process did since the last summary, from its own counters: no query, and
    each process tells its own share (a log collector adds them up)."""

    def __init__(self) -> None:
        self._last = counted()

    def since_last(self) -> dict[str, int]:
        now = counted()
        since = {name: n - self._last.get(name, 0) for name, n in now.items()}
        self._last = now
        return since


async def log_summary(db: asyncpg.Pool, summary: Summary) -> None:
    fields: dict[str, object] = dict(summary.since_last())
    try:
        [row] = await db.fetch(BACKLOG)
        backlog = Backlog.from_row(row)
    except Exception as exc:
        log.warning("queues not read", extra={"error": repr(exc)})
    else:
        backlog.show()
        fields["processing_lag_seconds"] = round(backlog.lag_seconds, 1)
        fields["events_pending"] = backlog.events_pending
        fields["actions_pending"] = sum(backlog.actions_pending.values())
    log.info("summary", extra=fields)


async def run(
    db: asyncpg.Pool,
    sessionmaker: async_sessionmaker[AsyncSession],
    stop: asyncio.Event,
    *,
    retention_days: int,
    every: float = EVERY_SECONDS,
) -> None:
    summary = Summary()
    while True:
        await run_once(db, sessionmaker, retention_days=retention_days)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        if stop.is_set():
            return
        await log_summary(db, summary)
