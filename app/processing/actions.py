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

from sqlalchemy import func, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto.at_rest import SecretBox
from app.metrics import ACTIONS_FINISHED
from app.models import Action
from app.processing.notify import ACTIONS_CHANNEL, listen
from app.processing.processor import worker_id
from app.wecom.client import Credentials, WecomClient
from app.wecom.errors import WecomApiError
from app.wecom_apps import load_credentials

log = logging.getLogger(__name__)

_CLAIM = text(
    """
    UPDATE actions SET status = 'running', locked_by = :worker,
        locked_until = now() + make_interval(secs => :lease), attempts = attempts + 1,
        started_at = coalesce(started_at, now())
    WHERE id IN (
        SELECT id FROM actions
        WHERE (status = 'pending' AND next_attempt_at <= now())
           OR (status = 'running' AND locked_until < now())
        ORDER BY deadline NULLS LAST, next_attempt_at, id  -- welcomes (20 s) first
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, kind, app_id, corp_id, target, event_id, payload, attempts, deadline,
              created_at
    """
)


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
    status: str  # "succeeded" or "skipped"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """What a handler gets: the action, whom to call WeCom as, and the database."""

    action: ClaimedAction
    credentials: Credentials
    client: WecomClient
    sessionmaker: async_sessionmaker[AsyncSession]

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
        async with self._sessionmaker.begin() as session:
            rows = await session.execute(
                _CLAIM, {"worker": self.worker, "lease": self._lease_seconds, "limit": limit}
            )
            return [ClaimedAction(**row._mapping) for row in rows]

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
        details = {"errcode": error.errcode, "errmsg": error.errmsg}
        retry_at = datetime.now(UTC) + retry_delay(action.attempts)
        if not error.retryable or action.attempts >= self._max_attempts:
            await self._finish(action, "failed", **details)
        elif action.deadline is not None and retry_at >= action.deadline:
            await self._finish(
                action, "expired", reason="deadline passed while retrying", **details
            )
        else:
            await self._update(action, status="pending", next_attempt_at=retry_at, **details)
            ACTIONS_FINISHED.labels(action.kind, "retry").inc()

    async def _finish(self, action: ClaimedAction, status: str, **values: Any) -> None:
        await self._update(action, status=status, finished_at=func.now(), **values)
        ACTIONS_FINISHED.labels(action.kind, status).inc()
        log.info(
            "action finished",
            extra={"action_id": action.id, "kind": action.kind, "status": status, **values},
        )

    async def _update(self, action: ClaimedAction, **values: Any) -> None:
        """Only while this runner holds the claim: a late runner changes nothing."""
        async with self._sessionmaker.begin() as session:
            await session.execute(
                update(Action)
                .where(Action.id == action.id, Action.locked_by == self.worker)
                .values(locked_by=None, locked_until=None, **values)
            )
