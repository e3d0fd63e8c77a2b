"""The action runner: claims due actions, runs each kind's handler outside any transaction,
records every attempt and the outcome. Every outcome is a status with its reason
(invariant 5):

    succeeded · skipped (nothing to do, and why) · failed (the error's code and message)
    expired (the deadline passed: never tried, or not tried again, after it)

The runner knows nothing of WeCom: a handler reports failure by raising ActionError (code,
message, retryable), and the kind's RetryPolicy decides when to try again. Any other
exception is a bug in the handler: recorded as `crash` and retried like a transient error.
It only counts, around each handler run, the HTTP requests the WeCom client sent on its
behalf (app/wecom/calls.py): an attempt is one pass of the runner, and the client's own
retries within it (a welcome's -1, 30 ms apart) show in the attempt's `wecom_calls`.

Claims are leases like the processor's; a runner that died mid-call leaves its action
claimed (shown as `running`) until the lease ends, then another runner takes it over. A
handler must therefore be safe to repeat (WeCom's own idempotency: msgid, welcome_code
single use) or tolerate it.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.actions.errors import ActionError, Reply
from app.actions.kinds import POLICIES, ActionKind, ActionStatus, RetryPolicy
from app.batching import GroupCommit
from app.metrics import ACTION_ERRORS, ACTIONS_FINISHED, action_error_label
from app.notify import ACTIONS_CHANNEL, ClaimSpacing, Listener, worker_id
from app.wecom.calls import CallCount, counting

log = logging.getLogger(__name__)

# Kinds that have a runner of their own in every process (app/processing/workers.py).
_OWN_RUNNER_KINDS = frozenset({ActionKind.WEBHOOK})

# The runner's own bookkeeping is plain asyncpg: one prepared statement and one round trip
# each, no transaction block. At 100 welcomes a second SQLAlchemy's per-statement work was a
# third of the runner's CPU.
#
# A claim is only a lease: the action stays `pending` (kinds.status_sql shows it as running)
# and no indexed column changes, so Postgres updates the row in place (HOT) instead of
# adding an entry to each of the table's nine indexes (ADR 0008, fifth round).
_CLAIM = """
    UPDATE actions SET locked_by = $1,
        locked_until = now() + make_interval(secs => $2), attempts = attempts + 1,
        started_at = coalesce(started_at, now())
    WHERE id IN (
        SELECT id FROM actions
        -- Due: true of every claimed action too (a claim leaves next_attempt_at as it was,
        -- due, and nothing moves it while the action runs). Read from ix_actions_due itself,
        -- so the actions waiting to retry (a webhook's receiver down for hours, results
        -- polled later) cost a claim no visit to the table.
        WHERE next_attempt_at <= now() AND status = 'pending'
          AND (locked_until IS NULL OR locked_until < now())  -- no lease, or a dead one
          AND (kind = ANY($4::text[])) = $5  -- this runner's kinds, or all but those
        ORDER BY deadline NULLS LAST, next_attempt_at, id  -- welcomes (20 s) first
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, kind, app_id, corp_id, target, event_id, payload, attempts, deadline,
              created_at
"""

# Only while this runner holds the claim does the action change: a late runner changes
# nothing. An outcome without an error keeps the last one seen (a welcome that succeeded
# after a -1 says so). The attempt is logged in the same statement either way, numbered per
# action in the log itself: a runner that lost its lease still made its call, and that is
# logged as `lease_lost`. Its WeCom requests were sent all the same, so they are added to
# the action's wecom_calls (`counted`, on exactly the rows `released` leaves alone: two
# updates of one row in one statement would keep only one of them): the action's total is
# the sum over its attempts log (short only of a lease taken over while this very statement
# ran, which `released` then skips and `counted` did not select).
#
# Outcomes that finish together are recorded together: one statement, one round trip, for
# every outcome queued while the previous one ran (at 200 new customers a second a round trip
# per outcome was the runner's largest single cost, ADR 0008). Each caller still waits for
# its own outcome to be committed before it goes on.
_RELEASE = """
    WITH outcome AS (
        SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::timestamptz[], $8::timestamptz[],
                             $9::double precision[], $10::text[], $11::smallint[], $12::text[],
                             $13::integer[])
            AS u(id, worker, status, reason, error_code, error_message, retry_at, started_at,
                 duration_ms, outcome, http_status, response, wecom_calls)
    ), released AS (
        UPDATE actions AS a SET status = o.status, reason = o.reason,
            error_code = coalesce(o.error_code, a.error_code),
            error_message = CASE WHEN o.error_code IS NULL THEN a.error_message
                                 ELSE o.error_message END,
            next_attempt_at = coalesce(o.retry_at, a.next_attempt_at),
            finished_at = CASE WHEN o.retry_at IS NULL THEN now() END,  -- no retry: done
            locked_by = NULL, locked_until = NULL,
            wecom_calls = a.wecom_calls + o.wecom_calls
        FROM outcome AS o
        WHERE a.id = o.id AND a.locked_by = o.worker
        RETURNING a.id
    ), counted AS (
        UPDATE actions AS a SET wecom_calls = a.wecom_calls + o.wecom_calls
        FROM outcome AS o
        WHERE a.id = o.id AND a.locked_by IS DISTINCT FROM o.worker AND o.wecom_calls > 0
    )
    INSERT INTO action_attempts (action_id, attempt, worker, started_at, duration_ms, outcome,
                                 error_code, message, http_status, response, wecom_calls)
    SELECT o.id,
           (SELECT count(*) + 1 FROM action_attempts WHERE action_id = o.id),
           o.worker, o.started_at, o.duration_ms,
           CASE WHEN EXISTS (SELECT FROM released r WHERE r.id = o.id) THEN o.outcome
                ELSE 'lease_lost' END,
           o.error_code, coalesce(o.error_message, o.reason), o.http_status, o.response,
           o.wecom_calls
    FROM outcome AS o
"""

# One value per column of _RELEASE's unnest, in its order; built only in _release.
_Outcome = tuple[
    int,  # id
    str,  # worker
    str,  # status
    str | None,  # reason
    str | None,  # error_code
    str | None,  # error_message
    datetime | None,  # retry_at
    datetime,  # started_at
    float,  # duration_ms
    str,  # outcome
    int | None,  # http_status
    str | None,  # response
    int,  # wecom_calls
]


async def _record(db: asyncpg.Pool, batch: list[_Outcome]) -> None:
    """Outcomes that finished together, in one statement (app/batching.py). An action
    appears at most once in a batch: one runner holds it, and its caller waits."""
    columns = zip(*batch, strict=True)
    await db.execute(_RELEASE, *(list(column) for column in columns))


_GIVE_BACK = """
    UPDATE actions SET locked_by = NULL, locked_until = NULL, next_attempt_at = now()
    WHERE locked_by = $1 AND status = 'pending'
"""


@dataclass(frozen=True, slots=True)
class ClaimedAction:
    id: int
    kind: str
    app_id: int | None
    corp_id: str | None
    target: str
    event_id: int | None
    payload: dict[str, Any]
    attempts: int
    deadline: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a handler that did not fail says: succeeded or skipped, or failed for a reason
    of its own that retrying cannot change (nothing to send), with the reason."""

    status: ActionStatus
    reason: str | None = None
    reply: "Reply | None" = None


@dataclass(frozen=True, slots=True)
class Run:
    """What a handler gets: the action and the database."""

    action: ClaimedAction
    sessionmaker: async_sessionmaker[AsyncSession]
    db: asyncpg.Pool  # for a quick lookup, where a session would cost more than the query

    @property
    def deadline_monotonic(self) -> float | None:
        """The action's deadline on the event loop's monotonic clock."""
        if self.action.deadline is None:
            return None
        remaining = (self.action.deadline - datetime.now(UTC)).total_seconds()
        return asyncio.get_running_loop().time() + remaining


Handler = Callable[[Run], Awaitable[Outcome]]
# Told of every action that finished (not of retries), with its status and error: where an
# outcome is itself news (a welcome sent, an action failed) it becomes a webhook.
Finished = Callable[
    [ClaimedAction, ActionStatus, "str | None", "ActionError | None"], Awaitable[None]
]


@dataclass(frozen=True, slots=True)
class _Attempt:
    started_at: datetime
    started: float  # perf_counter
    calls: CallCount  # requests sent to WeCom while the handler ran

    @classmethod
    def begin(cls) -> "_Attempt":
        return cls(datetime.now(UTC), time.perf_counter(), CallCount())

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class ActionRunner:
    def __init__(
        self,
        db: asyncpg.Pool,
        sessionmaker: async_sessionmaker[AsyncSession],
        handlers: Mapping[ActionKind, Handler],
        *,
        kinds: frozenset[ActionKind] | None = None,
        policies: Mapping[ActionKind, RetryPolicy] = POLICIES,
        finished: Finished | None = None,
        listener: Listener | None = None,
        batch_size: int = 50,
        concurrency: int = 16,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        claim_interval: float = 0.0,
        worker: str | None = None,
    ) -> None:
        self._db = db
        # The first outcome waits a moment for company: actions claimed together mostly end
        # within a few milliseconds of each other, and one statement for all of them costs
        # Postgres little more than one for each (ADR 0008).
        self._outcomes = GroupCommit(functools.partial(_record, db), window=claim_interval / 4)
        self._sessionmaker = sessionmaker
        self._handlers = handlers
        # kinds: only these (a runner of their own, e.g. webhooks, whose slow receivers must
        # never take a welcome's place); None: every kind but those.
        self._only = kinds is not None
        self._claim_kinds = sorted(kinds if kinds is not None else _OWN_RUNNER_KINDS)
        self._policies = policies
        self._finished = finished
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._lease_seconds = lease_seconds
        self._poll_seconds = poll_seconds
        self._claim_interval = claim_interval
        self.worker = worker or worker_id()
        self._wake = asyncio.Event()
        if listener is not None:  # else the loop polls
            listener.wake(ACTIONS_CHANNEL, self._wake)
        self._settling: set[asyncio.Task[None]] = set()  # see _settle

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run actions until `stop` is set; then the actions in flight finish (a call
        half made is better completed and recorded than cut off), and run returns."""
        stop = stop or asyncio.Event()
        in_flight: set[asyncio.Task[None]] = set()
        spacing = ClaimSpacing(self._claim_interval)
        try:
            while not stop.is_set():
                # A pipeline, not batches: whenever a slot frees up, the next due action
                # (earliest deadline first) starts; a slow call never holds up a welcome.
                free = self._concurrency - len(in_flight)
                claimed: list[ClaimedAction] = []
                # Cleared before the claim: a notification that comes while it runs is
                # for work it may not have seen, and wakes the next wait at once.
                self._wake.clear()
                limit = min(free, self._batch_size)
                if free > 0:
                    await spacing.wait()
                    if stop.is_set():
                        break
                    # Whatever was notified while spacing is in this claim: not one more.
                    self._wake.clear()
                    try:
                        claimed = await self.claim(limit=limit)
                    except Exception as exc:
                        log.warning("action runner paused", extra={"error": repr(exc)})
                    spacing.claimed(full=len(claimed) == limit)
                for action in claimed:
                    task = asyncio.create_task(self.execute(action))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if claimed and len(claimed) == free:
                    continue
                # A finished action frees a slot, which matters only if due work was left
                # for want of one; otherwise only a notification or the poll can bring
                # new work, and claiming after every finished action was a round trip
                # each for nothing (ADR 0008).
                left_behind = free <= 0 or len(claimed) == limit
                waiters: set[asyncio.Future[Any]] = {
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                }
                done, _ = await asyncio.wait(
                    waiters | (in_flight if left_behind else set()),
                    timeout=self._poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in waiters - done:
                    waiter.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await asyncio.gather(*self._settling, return_exceptions=True)
            # Every outcome queued is recorded before what is held is given back: given
            # back first, an action that ran would be pending again, its outcome refused for
            # want of the lease, and run twice.
            await self._outcomes.drain()
            await self._release_held()

    async def _release_held(self) -> None:
        """Whatever this runner still holds (cut off at a stop) goes back to pending now,
        instead of waiting for its lease to run out before another process may take it."""
        try:
            await self._db.execute(_GIVE_BACK, self.worker)
        except Exception as exc:  # Postgres away: the leases end by themselves
            log.warning("claims not released", extra={"error": repr(exc)})

    async def run_once(self) -> int:
        """Claim what is due and run it all; for tests and tools that step the runner."""
        claimed = await self.claim(limit=self._batch_size)
        await asyncio.gather(*(self.execute(action) for action in claimed))
        return len(claimed)

    async def claim(self, *, limit: int) -> list[ClaimedAction]:
        rows = await self._db.fetch(
            _CLAIM, self.worker, self._lease_seconds, limit, self._claim_kinds, self._only
        )
        return [ClaimedAction(**row) for row in rows]

    async def execute(self, action: ClaimedAction) -> None:
        async with self._slots:
            attempt = _Attempt.begin()
            if action.deadline is not None and action.deadline <= attempt.started_at:
                await self._finish(
                    action, attempt, ActionStatus.EXPIRED, "deadline passed before the call"
                )
                return
            # By its name: a kind this version does not know (a newer replica wrote it, in a
            # rolling deploy) fails with a reason instead of crashing the runner's task.
            handler = self._handlers.get(action.kind)  # type: ignore[call-overload]
            if handler is None:
                await self._finish(
                    action,
                    attempt,
                    ActionStatus.FAILED,
                    f"no handler for {action.kind!r} in this version",
                    ActionError("unknown_kind", action.kind, retryable=False),
                )
                return
            try:
                with counting(attempt.calls):
                    outcome = await handler(Run(action, self._sessionmaker, self._db))
            except ActionError as exc:
                await self._settle(self._failed(action, attempt, exc))
                return
            except Exception as exc:
                log.exception("action handler crashed", extra={"action_id": action.id})
                crash = ActionError("crash", repr(exc)[:500], retryable=True)
                await self._settle(self._failed(action, attempt, crash))
                return
            await self._settle(
                self._finish(action, attempt, outcome.status, outcome.reason, reply=outcome.reply)
            )

    async def _settle(self, recording: Coroutine[Any, Any, None]) -> None:
        """The call was made: its outcome is recorded and announced even if this runner is
        cut off meanwhile (run() waits for it before it gives back what it holds), or the
        action would be given back, run again, and its news lost."""
        task = asyncio.ensure_future(recording)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _failed(self, action: ClaimedAction, attempt: _Attempt, error: ActionError) -> None:
        """Transient errors are tried again later, unless attempts or the deadline run out."""
        policy = self._policies[ActionKind(action.kind)]  # it had a handler: a known kind
        delay = policy.delay(action.attempts)
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        retry_at = datetime.now(UTC) + delay
        if not error.retryable or action.attempts >= policy.max_attempts:
            await self._finish(action, attempt, ActionStatus.FAILED, None, error)
        elif action.deadline is not None and retry_at >= action.deadline:
            await self._finish(
                action, attempt, ActionStatus.EXPIRED, "deadline passed while retrying", error
            )
        else:
            await self._release(action, attempt, ActionStatus.PENDING, None, error, retry_at)
            ACTIONS_FINISHED.labels(action.kind, "retry").inc()
            ACTION_ERRORS.labels(action.kind, "retry", action_error_label(error.code)).inc()

    async def _finish(
        self,
        action: ClaimedAction,
        attempt: _Attempt,
        status: ActionStatus,
        reason: str | None,
        error: ActionError | None = None,
        *,
        reply: Reply | None = None,
    ) -> None:
        await self._release(action, attempt, status, reason, error, reply=reply)
        ACTIONS_FINISHED.labels(action.kind, status).inc()
        if error is not None:
            ACTION_ERRORS.labels(action.kind, status, action_error_label(error.code)).inc()
        if self._finished is not None:
            try:
                await self._finished(action, status, reason, error)
            except Exception as exc:  # news of an outcome never undoes the outcome
                log.warning(
                    "action outcome not announced",
                    extra={"action_id": action.id, "error": repr(exc)},
                )
        log.info(
            "action finished",
            extra={
                "action_id": action.id,
                "kind": action.kind,
                "status": status,
                "reason": reason,
                "error_code": error.code if error else None,
                "error_message": error.message if error else None,
            },
        )

    async def _release(
        self,
        action: ClaimedAction,
        attempt: _Attempt,
        status: ActionStatus,
        reason: str | None,
        error: ActionError | None,
        retry_at: datetime | None = None,
        *,
        reply: Reply | None = None,
    ) -> None:
        reply = reply or (error.reply if error else None)
        await self._outcomes.submit(
            (
                action.id,
                self.worker,
                status.value,
                reason,
                error.code if error else None,
                error.message if error else None,
                retry_at,
                attempt.started_at,
                attempt.duration_ms,
                "retry" if retry_at is not None else status.value,
                reply.http_status if reply else None,
                reply.body if reply else None,
                attempt.calls.sent,
            )
        )
