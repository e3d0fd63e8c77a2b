"""Stay under WeCom's limits before WeCom says 45009/45033: a token bucket per corp and API
(10,000 calls/min is WeCom's published cap; we default to half) and a cap on calls in flight
per API (community reports 45033 beyond ~5-10 concurrent calls). Per process: N replicas
should each get 1/N of the budget (WECOM_HUB_WECOM_API_CALLS_PER_MINUTE)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class _Bucket:
    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)  # at most one second's worth in a burst
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.rate)
                self.updated = time.monotonic()
                self.tokens = 1
            self.tokens -= 1


class RateLimiter:
    def __init__(self, *, per_minute: float, concurrency: int) -> None:
        self._per_minute = per_minute
        self._concurrency = concurrency
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._slots: dict[tuple[str, str], asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def slot(self, corp_id: str, api: str) -> AsyncIterator[None]:
        key = (corp_id, api)
        bucket = self._buckets.setdefault(key, _Bucket(self._per_minute))
        semaphore = self._slots.setdefault(key, asyncio.Semaphore(self._concurrency))
        await bucket.take()
        async with semaphore:
            yield
