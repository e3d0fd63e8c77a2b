"""The action runner: claims due actions, calls WeCom outside any transaction, records what
happened. Every outcome is a status with its reason (invariant 5):

    succeeded · skipped (nothing to do, and why) · failed (WeCom's errcode and errmsg)
    expired (the deadline passed: never tried, or not tried again, after it)

Claims are leases like the processor's; a runner that died mid-call leaves its action
`running` until the lease ends, then another runner takes it over. A handler must therefore
be safe to repeat (WeCom's own idempotency: msgid, welcome_code single use) or tolerate it.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto.at_rest import SecretBox
from app.metrics import ACTIONS_FINISHED
from app.processing.notify import ACTIONS_CHANNEL, listen
from app.processing.processor import worker_id
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError
from app.wecom_apps import load_credentials

log = logging.getLogger(__name__)

# The runner's own bookkeeping is plain asyncpg: one prepared statement and one round trip
# each, no transaction block. At 100 welcomes a second SQLAlchemy's per-statement work was a
# third of the runner's CPU.
_CLAIM = """
    UPDATE actions SET status = 'running', locked_by = $1,
        locked_until = now() + make_interval(secs => $2), attempts = attempts + 1,
        started_at = coalesce(started_at, now())
    WHERE id IN (
        SELECT id FROM actions
        WHERE (status = 'pending' AND next_attempt_at <= now())
           OR (status = 'running' AND locked_until < now())
        ORDER BY deadline NULLS LAST, next_attempt_at, id  -- welcomes (20 s) first
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, kind, app_id, corp_id, target, event_id, payload, attempts, deadline,
              created_at
"""

# Only while this runner holds the claim: a late runner changes nothing. An outcome without
# an error keeps the last one seen (a welcome that succeeded after a -1 says so).
_RELEASE = """
    UPDATE actions SET status = $3, reason = $4,
        errcode = CASE WHEN $6::text IS NULL THEN errcode ELSE $5 END,
        errmsg = coalesce($6, errmsg),
        next_attempt_at = coalesce($7, next_attempt_at),
        finished_at = CASE WHEN $7::timestamptz IS NULL THEN now() END,  -- no retry: finished
        locked_by = NULL, locked_until = NULL
    WHERE id = $1 AND locked_by = $2
"""


@dataclass(frozen=True, slots=True)
class ClaimedAction:
    id: int
    kind: str
    app_id: int
    corp_id: str
    target: str
    event_id: int | None
    payload: dict[str, Any]
    attempts: int
    deadline: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # "succeeded", "skipped", or "failed" (for a reason of our own, not WeCom's)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """What a handler gets: the action, whom to call WeCom as, and the database."""

    action: ClaimedAction
    credentials: Credentials
    client: WecomClient
    sessionmaker: async_sessionmaker[AsyncSession]
    db: asyncpg.Pool  # for a quick lookup, where a session would cost more than the query

    @property
    def deadline_monotonic(self) -> float | None:
        """The action's deadline on the monotonic clock the WeCom client counts in."""
        if self.action.deadline is None:
            return None
        remaining = (self.action.deadline - datetime.now(UTC)).total_seconds()
        return asyncio.get_running_loop().time() + remaining


Handler = Callable[[Run], Awaitable[Outcome]]


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(2.0**attempts, 300.0) * random.uniform(0.5, 1.0))


class ActionRunner:
    def __init__(
        self,
        db: asyncpg.Pool,
        sessionmaker: async_sessionmaker[AsyncSession],
        client: WecomClient,
        box: SecretBox,
        handlers: dict[str, Handler],
        *,
        listen_dsn: str | None = None,
        batch_size: int = 50,
        concurrency: int = 16,
        lease_seconds: float = 60.0,
        max_attempts: int = 6,
        poll_seconds: float = 1.0,
        worker: str | None = None,
    ) -> None:
        self._db = db
        self._sessionmaker = sessionmaker
        self._client = client
        self._box = box
        self._handlers = handlers
        self._listen_dsn = listen_dsn
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._poll_seconds = poll_seconds
        self.worker = worker or worker_id()
        self._wake = asyncio.Event()
        self._credentials: dict[int, Credentials] = {}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run actions until `stop` is set; then the actions in flight finish (a call
        half made is better completed and recorded than cut off), and run returns."""
        stop = stop or asyncio.Event()
        listener = None
        if self._listen_dsn:
            listener = asyncio.create_task(
                listen(
                    self._listen_dsn, ACTIONS_CHANNEL, self._wake, retry_seconds=self._poll_seconds
                )
            )
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                # A pipeline, not batches: whenever a slot frees up, the next due action
                # (earliest deadline first) starts; a slow call never holds up a welcome.
                free = self._concurrency - len(in_flight)
                claimed: list[ClaimedAction] = []
                if free > 0:
                    try:
                        claimed = await self.claim(limit=min(free, self._batch_size))
                    except Exception as exc:
                        log.warning("action runner paused", extra={"error": repr(exc)})
                for action in claimed:
                    task = asyncio.create_task(self.execute(action))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if claimed and len(claimed) == free:
                    continue
                self._wake.clear()
                waiters: set[asyncio.Future[Any]] = {
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                }
                done, _ = await asyncio.wait(
                    waiters | in_flight,
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
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def run_once(self) -> int:
        """Claim what is due and run it all; for tests and tools that step the runner."""
        claimed = await self.claim(limit=self._batch_size)
        await asyncio.gather(*(self.execute(action) for action in claimed))
        return len(claimed)

    async def claim(self, *, limit: int) -> list[ClaimedAction]:
        rows = await self._db.fetch(_CLAIM, self.worker, self._lease_seconds, limit)
        return [ClaimedAction(**row) for row in rows]

    async def execute(self, action: ClaimedAction) -> None:
        async with self._slots:
            if action.deadline is not None and action.deadline <= datetime.now(UTC):
                await self._finish(action, "expired", reason="deadline passed before the call")
                return
            handler = self._handlers.get(action.kind)
            if handler is None:
                await self._finish(action, "failed", reason=f"no handler for {action.kind!r}")
                return
            try:
                run = Run(
                    action,
                    await self._credentials_for(action.app_id),
                    self._client,
                    self._sessionmaker,
                    self._db,
                )
                outcome = await handler(run)
            except WecomApiError as exc:
                await self._failed(action, exc)
                return
            except Exception as exc:
                log.exception("action handler crashed", extra={"action_id": action.id})
                await self._failed(action, WecomApiError(action.kind, None, repr(exc)[:500]))
                return
            await self._finish(action, outcome.status, reason=outcome.reason)

    async def _credentials_for(self, app_id: int) -> Credentials:
        if app_id not in self._credentials:
            async with self._sessionmaker() as session:
                self._credentials[app_id] = await load_credentials(session, self._box, app_id)
        return self._credentials[app_id]

    async def _failed(self, action: ClaimedAction, error: WecomApiError) -> None:
        """Transient errors are tried again later, unless attempts or the deadline run out."""
        retry_at = datetime.now(UTC) + retry_delay(action.attempts)
        if not error.retryable or action.attempts >= self._max_attempts:
            await self._finish(action, "failed", error=error)
        elif action.deadline is not None and retry_at >= action.deadline:
            await self._finish(
                action, "expired", reason="deadline passed while retrying", error=error
            )
        else:
            await self._release(action, "pending", error=error, retry_at=retry_at)
            ACTIONS_FINISHED.labels(action.kind, "retry").inc()

    async def _finish(
        self,
        action: ClaimedAction,
        status: str,
        *,
        reason: str | None = None,
        error: WecomApiError | None = None,
    ) -> None:
        await self._release(action, status, reason=reason, error=error)
        ACTIONS_FINISHED.labels(action.kind, status).inc()
        log.info(
            "action finished",
            extra={
                "action_id": action.id,
                "kind": action.kind,
                "status": status,
                "reason": reason,
                "errcode": error.errcode if error else None,
                "errmsg": error.errmsg if error else None,
            },
        )

    async def _release(
        self,
        action: ClaimedAction,
        status: str,
        *,
        reason: str | None = None,
        error: WecomApiError | None = None,
        retry_at: datetime | None = None,
    ) -> None:
        await self._db.execute(
            _RELEASE,
            action.id,
            self.worker,
            status,
            reason,
            error.errcode if error else None,
            error.errmsg if error else None,
            retry_at,
        )
