"""The background loops of a process: the event processor (and, with the WeCom client, the
action runner). `serve` runs them beside HTTP by default; `wecom-hub worker` runs only them."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.processing.processor import EventProcessor


def event_processor(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], dsn: str
) -> EventProcessor:
    return EventProcessor(
        sessionmaker,
        listen_dsn=dsn,
        batch_size=settings.processor_batch_size,
        lease_seconds=settings.processor_lease_seconds,
        max_attempts=settings.processor_max_attempts,
        poll_seconds=settings.processor_poll_seconds,
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], dsn: str
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Start the loops; cancel them, and wait for them, on exit."""
    tasks = [asyncio.create_task(event_processor(settings, sessionmaker, dsn).run())]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
