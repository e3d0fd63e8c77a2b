"""Wake-ups through Postgres LISTEN/NOTIFY, so loops react at once instead of polling, and
the pace of their claims while work keeps coming."""

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable

import asyncpg

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "wecom_hub_events"  # ingest committed events (app/callbacks/writer.py)
ACTIONS_CHANNEL = "wecom_hub_actions"  # the processor wrote actions (app/actions/enqueue.py)
# A rule was added, changed or removed, by any path (a trigger on `rules`, migration 0016):
# processors drop their cached rules (app/automations/store.py RuleCache).
RULES_CHANNEL = "wecom_hub_rules"


async def _connect(dsn: str) -> asyncpg.Connection:
    """Connect; if cancelled meanwhile (shutdown), close the connection that was still being
    made instead of leaving it to the garbage collector."""
    connecting = asyncio.ensure_future(asyncpg.connect(dsn, timeout=5))
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await (await connecting).close()
        raise


class Listener:
    """One LISTEN connection per process, for every loop in it. Postgres wakes every backend
    that listens in a database on each NOTIFY, whatever the channel: with a connection per
    loop (the processor's two, each runner's one) each new event woke four backends and
    four connections (ADR 0008). Loops register what to wake before `running()` starts."""

    def __init__(self, dsn: str, *, retry_seconds: float) -> None:
        self._dsn = dsn
        self._retry_seconds = retry_seconds
        self._wakes: dict[str, list[asyncio.Event]] = {}

    def wake(self, channel: str, event: asyncio.Event) -> None:
        """Set `event` on every notification on `channel`, and whenever the connection is
        (re)made: something may have come while nobody listened."""
        self._wakes.setdefault(channel, []).append(event)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._listen())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _listen(self) -> None:
        """Until cancelled. A lost connection is reopened; the loops also poll, so a
        notification missed meanwhile only costs a poll interval."""
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await _connect(self._dsn)
                closed = asyncio.Event()
                setters = {channel: _setter(events) for channel, events in self._wakes.items()}
                for channel, wake in setters.items():
                    await connection.add_listener(channel, wake)
                connection.add_termination_listener(lambda *_, closed=closed: closed.set())
                for wake in setters.values():  # something may have come while nobody listened
                    wake()
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("LISTEN connection failed", extra={"error": repr(exc)})
            finally:
                if connection is not None and not connection.is_closed():
                    await connection.close()
            await asyncio.sleep(self._retry_seconds)


def _setter(events: list[asyncio.Event]) -> Callable[..., None]:
    def wake(*_: object) -> None:
        for event in events:
            event.set()

    return wake


class ClaimSpacing:
    """At most one claim per `interval` while work keeps coming in, so each claim takes what
    arrived meanwhile: at 200 new customers a second a loop that claimed whenever woken
    took one or two rows per statement, and the statements' fixed cost was most of
    Postgres's CPU per customer (ADR 0008). A claim after a quiet spell goes at once, and so
    does the one after a full batch (a backlog is drained at full speed); the wait costs an
    event or an action at most `interval` of latency."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._started = 0.0
        self._full = True

    async def wait(self) -> None:
        """Before a claim: until `interval` after the previous one began, unless it was full."""
        if not self._full:
            delay = self._started + self._interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        self._started = time.monotonic()

    def claimed(self, *, full: bool) -> None:
        self._full = full


def worker_id() -> str:
    """Unique per process and loop, readable in the events and actions tables:
    host:pid:random."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{random.randrange(16**4):04x}"
