"""Group commit for writes that many tasks make at once: the runner's outcomes, enrichments.

Each write is a statement and a commit of its own when made alone; at 200 new customers a
second a commit a customer was a large share of Postgres's CPU (ADR 0008). `submit` queues
one item and waits until it is committed; a single flusher sends whatever is queued in one
call of `send` (one statement), and the next batch forms while it runs. Each caller still
waits for its own item, so "committed before going on" holds for every one of them.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from app.db import is_unavailable

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Awaitable[None]], *, window: float = 0.0) -> None:
        """send: writes a batch in one statement (or raises). window: how long the first
        item waits for company (0: only what queues while a batch is in flight)."""
        self._send = send
        self._window = window
        self._queued: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def drain(self) -> None:
        """Until every item queued has been committed (or has failed)."""
        if self._flusher is not None:
            await asyncio.gather(asyncio.shield(self._flusher), return_exceptions=True)

    async def _flush(self) -> None:
        try:
            if self._window:
                await asyncio.sleep(self._window)
        except BaseException:
            _fail(self._queued, RuntimeError("stopped before the write"))
            self._queued = []
            raise
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                await self._commit(batch)
            except Exception as exc:
                if len(batch) == 1 or is_unavailable(exc):
                    _fail(batch, exc)
                    continue
                # One item the database refuses must not fail the others with it.
                for one in batch:
                    try:
                        await self._commit([one])
                    except Exception as single:
                        _fail([one], single)
            except BaseException:
                _fail(batch + self._queued, RuntimeError("stopped before the write"))
                self._queued = []
                raise

    async def _commit(self, batch: list[tuple[T, "asyncio.Future[None]"]]) -> None:
        await self._send([item for item, _ in batch])
        for _, future in batch:
            if not future.done():
                future.set_result(None)


def _fail(batch: list[tuple[T, "asyncio.Future[None]"]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
