"""Chores every action-runner process does once a minute. Each is one idempotent statement,
safe to run from every replica at once; a failed round (Postgres away) is simply the next
round's to do.

- enqueue the uploads of welcome attachment files that are due (app/automations/media.py)
- forget the answers to idempotent API writes after 24 hours (app/apikeys.py)
"""

import asyncio
import contextlib
import logging

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.apikeys import prune_idempotent_requests
from app.automations.media import SCHEDULE_UPLOADS

log = logging.getLogger(__name__)

EVERY_SECONDS = 60.0


async def run_once(db: asyncpg.Pool, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    try:
        await db.execute(SCHEDULE_UPLOADS)
        async with sessionmaker.begin() as session:
            await prune_idempotent_requests(session)
    except Exception as exc:
        log.warning("housekeeping round skipped", extra={"error": repr(exc)})


async def run(
    db: asyncpg.Pool,
    sessionmaker: async_sessionmaker[AsyncSession],
    stop: asyncio.Event,
    *,
    every: float = EVERY_SECONDS,
) -> None:
    while not stop.is_set():
        await run_once(db, sessionmaker)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
