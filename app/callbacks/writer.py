"""Group commit for incoming callbacks: many requests, one transaction, each awaits its own.

One commit per request would cap ingest at the rate Postgres can flush its WAL. Instead a
request hands its event to a flusher and awaits a future; the flusher waits at most
`window` for company (or until `max_batch` events are queued), inserts the whole batch with
one statement, commits, and only then resolves every future. So "success" still goes out
only after the event is durable (invariant 1), and a failed commit fails every request in
the batch, which WeCom then retries.

Deduplication is the database's: INSERT … ON CONFLICT (app_id, dedup_key) DO NOTHING, with
RETURNING telling which rows are new. Concurrent duplicates in one batch or across replicas
end the same way: one row, every delivery answered "success".
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import DatabaseUnavailable, is_unavailable
from app.metrics import INGEST_BATCH_SIZE

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "wecom_hub_events"

_INSERT = text(
    """
    INSERT INTO events
        (app_id, received_at, create_time, family, type, msg_id, dedup_key, raw_body, xml, payload)
    SELECT a, r, c, f, t, m, d, b, x, p::jsonb
    FROM unnest(
        CAST(:app_ids AS integer[]), CAST(:received AS timestamptz[]),
        CAST(:created AS timestamptz[]), CAST(:families AS text[]), CAST(:types AS text[]),
        CAST(:msg_ids AS text[]), CAST(:dedup_keys AS text[]), CAST(:raw_bodies AS text[]),
        CAST(:xmls AS text[]), CAST(:payloads AS text[])
    ) AS u(a, r, c, f, t, m, d, b, x, p)
    ON CONFLICT (app_id, dedup_key) DO NOTHING
    RETURNING app_id, dedup_key
    """
)
_NOTIFY = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")


@dataclass(frozen=True, slots=True)
class NewEvent:
    app_id: int
    received_at: datetime
    create_time: datetime | None
    family: str
    type: str
    msg_id: str | None
    dedup_key: str
    raw_body: str
    xml: str
    payload_json: str


_Pending = tuple[NewEvent, "asyncio.Future[bool]"]


class EventWriter:
    def __init__(
        self, engine: AsyncEngine, *, window: float, max_batch: int, flushers: int
    ) -> None:
        self._engine = engine
        self._window = window
        self._max_batch = max_batch
        self._flushers = flushers
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flush_forever()) for _ in range(self._flushers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(DatabaseUnavailable("shutting down"))

    async def store(self, event: NewEvent) -> bool:
        """Durably store event; True if it is new, False if it was already stored.

        Raises DatabaseUnavailable when Postgres cannot be reached in time.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        return await future

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._window and self._queue.qsize() < self._max_batch - 1:
                await asyncio.sleep(self._window)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            await self._insert(batch)
        finally:  # cancelled at shutdown mid-commit: nobody may wait forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(DatabaseUnavailable("writer stopped"))

    async def _insert(self, batch: list[_Pending]) -> None:
        events = [event for event, _ in batch]
        try:
            async with self._engine.begin() as connection:
                result = await connection.execute(_INSERT, _columns(events))
                inserted = {(row.app_id, row.dedup_key) for row in result}
                if inserted:
                    await connection.execute(_NOTIFY)
            INGEST_BATCH_SIZE.observe(len(batch))
        except Exception as exc:
            unavailable = is_unavailable(exc)
            log.error(
                "event batch not stored",
                extra={
                    "events": len(batch),
                    "error": type(exc).__name__,
                    "unavailable": unavailable,
                },
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(DatabaseUnavailable(str(exc)) if unavailable else exc)
            return
        for event, future in batch:
            key = (event.app_id, event.dedup_key)
            is_new = key in inserted
            inserted.discard(key)  # a duplicate inside the batch is not new twice
            if not future.done():
                future.set_result(is_new)


def _columns(events: list[NewEvent]) -> dict[str, list[object]]:
    return {
        "app_ids": [e.app_id for e in events],
        "received": [e.received_at for e in events],
        "created": [e.create_time for e in events],
        "families": [e.family for e in events],
        "types": [e.type for e in events],
        "msg_ids": [e.msg_id for e in events],
        "dedup_keys": [e.dedup_key for e in events],
        "raw_bodies": [e.raw_body for e in events],
        "xmls": [e.xml for e in events],
        "payloads": [e.payload_json for e in events],
    }
