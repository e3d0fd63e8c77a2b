"""Group commit for incoming callbacks: many requests, one statement, each awaits its own.

One commit per request would cap ingest at the rate Postgres can flush its WAL. Instead a
request hands its event to a flusher and awaits a future; the flusher waits at most
`window` for company (or until `max_batch` events are queued), stores the whole batch with
one INSERT, and only after Postgres has committed it resolves every future. So "success"
still goes out only after the event is durable (invariant 1), and a failed batch fails
every request in it, which WeCom then retries.

The batch is a single statement in its own implicit transaction: one round trip, no
BEGIN/COMMIT, and the pg_notify that wakes the processor is part of it, delivered on commit.
Deduplication is the database's: ON CONFLICT (app_id, dedup_key) DO NOTHING, with RETURNING
telling which rows are new. Duplicates in one batch, across batches or across replicas end
the same way: one row, every delivery answered "success". That also makes the statement
safe to repeat, which is why a batch that lost its connection is tried once more.

The queue in front of the flushers is bounded (`max_queued`): when Postgres is slow, requests
would otherwise pile up without end, each holding its body. A request that finds it full is
refused with IngestBusy (503 `ingest_busy`), which WeCom retries.

What is stored: the body exactly as received (the evidence, decryptable with the app's key)
and the parsed fields as JSON (what processing and the API read). The decrypted XML is not
stored a third time: it held nothing the two do not (ADR 0008).

The writer has its own small asyncpg pool rather than SQLAlchemy sessions: this is the hot
path, and the ORM layer cost a measurable share of ingest throughput (bench/ingest.py).
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.callbacks.verify import Delivery
from app.db import DatabaseUnavailable, is_unavailable, reset_if_needed
from app.events.identity import canonical_json, identify
from app.metrics import INGEST_BATCH_SIZE

log = logging.getLogger(__name__)


_INSERT = """
    WITH inserted AS (
        INSERT INTO events (app_id, received_at, create_time, family, type, msg_id, dedup_key,
                            raw_body, payload)
        SELECT a, r, c, f, t, m, d, b, p::jsonb
        FROM unnest($1::integer[], $2::timestamptz[], $3::timestamptz[], $4::text[],
                    $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
            AS u(a, r, c, f, t, m, d, b, p)
        ON CONFLICT (app_id, dedup_key) DO NOTHING
        RETURNING app_id, dedup_key
    )
    -- the channel is app.processing.notify.EVENTS_CHANNEL
    SELECT app_id, dedup_key, pg_notify('wecom_hub_events', '') FROM inserted
"""


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
    payload_json: str

    @classmethod
    def received(
        cls, app_id: int, received_at: datetime, body: bytes, delivery: Delivery
    ) -> "NewEvent":
        payload_json = canonical_json(delivery.fields)
        identity = identify(delivery.fields, payload_json)
        return cls(
            app_id=app_id,
            received_at=received_at,
            create_time=identity.create_time,
            family=identity.family,
            type=identity.type,
            msg_id=identity.msg_id,
            dedup_key=identity.dedup_key,
            # Envelopes are ASCII in practice; never fail a verified callback over this.
            raw_body=body.decode("utf-8", errors="replace"),
            payload_json=payload_json,
        )


_Pending = tuple[NewEvent, "asyncio.Future[bool]"]


class IngestBusy(Exception):
    """The queue of callbacks waiting for a commit is full; nothing was queued."""


class EventWriter:
    def __init__(
        self,
        dsn: str,
        *,
        window: float,
        max_batch: int,
        flushers: int,
        timeout: float,
        max_queued: int = 4096,
    ) -> None:
        """max_queued: 16 full batches; at WeCom's largest bodies (64 KiB) 256 MB held."""
        self._dsn = dsn
        self._window = window
        self._max_batch = max_batch
        self._flushers = flushers
        self._timeout = timeout
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queued)
        self._tasks: list[asyncio.Task[None]] = []
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Connections are opened lazily: the service starts even while Postgres is down."""
        self._pool = asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._flushers,
            timeout=self._timeout,
            command_timeout=self._timeout,
            reset=reset_if_needed,  # one statement, nothing left behind: no reset round trip
        )
        await self._pool
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
        if self._pool is not None:
            await self._pool.close()

    async def store(self, event: NewEvent) -> bool:
        """Durably store event; True if it is new, False if it was already stored.

        Raises DatabaseUnavailable when Postgres cannot be reached in time, IngestBusy when
        too many callbacks already wait for a commit.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((event, future))
        except asyncio.QueueFull:
            raise IngestBusy from None
        return await future

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._window and self._queue.qsize() < self._max_batch - 1:
                await asyncio.sleep(self._window)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:  # cancelled at shutdown mid-commit: nobody may wait forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(DatabaseUnavailable("writer stopped"))

    async def _commit(self, batch: list[_Pending]) -> None:
        columns = _columns([event for event, _ in batch])
        try:
            try:
                rows = await self._execute(columns)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                # A pooled connection may have died with a database restart; the insert is
                # idempotent, so one more try on a fresh connection is safe.
                rows = await self._execute(columns)
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
        INGEST_BATCH_SIZE.observe(len(batch))
        inserted = {(row["app_id"], row["dedup_key"]) for row in rows}
        for event, future in batch:
            key = (event.app_id, event.dedup_key)
            is_new = key in inserted
            inserted.discard(key)  # a duplicate inside the batch is not new twice
            if not future.done():
                future.set_result(is_new)

    async def _execute(self, columns: list[list[object]]) -> list[asyncpg.Record]:
        assert self._pool is not None, "EventWriter.start() was not awaited"
        async with self._pool.acquire() as connection:
            try:
                return await connection.fetch(_INSERT, *columns)
            except BaseException:
                # A statement that failed midway (a timeout while Postgres restarts, a
                # cancellation) can leave the connection mid-operation; back in the pool, the
                # next batch on it failed with asyncpg's InternalClientError "another
                # operation is in progress", answered 500. Never reuse it.
                connection.terminate()
                raise


def _columns(events: list[NewEvent]) -> list[list[object]]:
    return [
        [e.app_id for e in events],
        [e.received_at for e in events],
        [e.create_time for e in events],
        [e.family for e in events],
        [e.type for e in events],
        [e.msg_id for e in events],
        [e.dedup_key for e in events],
        [e.raw_body for e in events],
        [e.payload_json for e in events],
    ]
