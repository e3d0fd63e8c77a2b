"""Deliver callbacks over HTTP, drive the processor step by step, wait for what the running
hub does (an action settled), and work the simulator's /sim controls."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import asyncpg_dsn, create_engine, create_sessionmaker
from app.notify import Listener
from app.processing.processor import EventProcessor
from app.simulator.callbacks import build_callback
from tests.conftest import RegisteredApp, Simulator


async def deliver(client: httpx.AsyncClient, app: RegisteredApp, message_xml: str) -> None:
    callback = build_callback(app.crypt, message_xml)
    response = await client.post(
        f"/callback/{app.slug}", params=callback.params, content=callback.body
    )
    assert response.text == "success", response.text


async def drain(processor: EventProcessor, *, max_rounds: int = 100) -> int:
    """Process until nothing is due; the number of events claimed."""
    total = 0
    for _ in range(max_rounds):
        claimed = await processor.run_once()
        if claimed == 0:
            return total
        total += claimed
    raise AssertionError("processor still busy after max_rounds")


def sessionmaker_for(settings: Settings) -> async_sessionmaker[AsyncSession]:
    assert settings.database_url
    return create_sessionmaker(create_engine(settings.database_url, settings, pool_size=2))


async def row(db: asyncpg.Connection, query: str, *args: object) -> asyncpg.Record:
    """The one row a query must find."""
    found = await db.fetchrow(query, *args)
    assert found is not None, f"no row for {query}"
    return found


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    within: float = 10,
    *,
    context: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll a condition until it holds, failing after `within` seconds (with what `context`
    says then: a process's output, the rows it left, say)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() >= deadline:
            said = f"\n{await context()}" if context else ""
            raise AssertionError("condition not reached in time" + said)
        await asyncio.sleep(0.05)


def most_spaced_claims(sent_in: float, interval: float) -> int:
    """How many claims may take 30 items sent over `sent_in` seconds when claims are spaced
    `interval` apart while work keeps coming (ADR 0008): one per interval, and a few for the
    first and the last; 8 when sending was quick. A machine so slow that sending took
    nearly 30 intervals cannot tell spacing from none, and the test says so."""
    most = max(8, int(sent_in / interval) + 3)
    assert most < 20, f"sending 30 items took {sent_in:.2f} s: too slow to tell spacing"
    return most


async def holds(db: asyncpg.Connection, query: str, *args: object) -> bool:
    """Whether a query's one value is true: a condition for wait_for."""
    return bool(await db.fetchval(query, *args))


async def listening(db: asyncpg.Connection) -> None:
    """Until some loop LISTENs, so that a NOTIFY sent next cannot be missed."""
    query = (
        "SELECT count(*) > 0 FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN \"wecom_hub_%'"
    )
    await wait_for(lambda: holds(db, query), within=5)


def listener_for(settings: Settings) -> Listener:
    assert settings.database_url
    return Listener(asyncpg_dsn(settings.database_url), retry_seconds=1)


@contextlib.asynccontextmanager
async def running_loop(
    db: asyncpg.Connection, listener: Listener, loop: Coroutine[Any, Any, None]
) -> AsyncIterator[None]:
    """A processor's or runner's run() with its listener, from the moment it LISTENs (a
    NOTIFY sent then cannot be missed); cancelled on the way out."""
    async with listener.running():
        task = asyncio.create_task(loop)
        try:
            await listening(db)
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def status_of(db: asyncpg.Connection, kind: str, target: str) -> str | None:
    found: str | None = await db.fetchval(
        "SELECT status FROM actions WHERE kind = $1 AND target = $2", kind, target
    )
    return found


async def settled(db: asyncpg.Connection, kind: str, target: str) -> str:
    """Wait for the action of `kind` on `target` to exist and be done with (by a running hub's
    action runner); the status it ended in."""

    async def done() -> bool:
        return await status_of(db, kind, target) not in (None, "pending", "running")

    await wait_for(done)
    status = await status_of(db, kind, target)
    assert status is not None
    return status


async def sim(simulator: Simulator, method: str, path: str, **kwargs: Any) -> Any:
    """A call to the simulator's /sim control (a scan, a confirm, a corp's limits…), which
    must succeed; its JSON answer."""
    async with httpx.AsyncClient(base_url=simulator.url, timeout=5) as client:
        answer = await client.request(method, path, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()
