"""Stay under WeCom's limits before WeCom says 45009/45033 (PROTOCOL.md §5.11): per corp and
API, 10,000 calls a minute and 150,000 an hour; and a cap on calls in flight per API
(community reports 45033 beyond ~5-10 concurrent calls).

The budgets are sliding windows, not a steady rate: WeCom counts calls per minute and per
hour, so a burst of new customers may use the minute's whole budget at once; smoothing it to
an even rate would make welcomes queue behind a limit WeCom does not have. Per process: N
replicas should each get 1/N of the budget (WECOM_HUB_WECOM_API_CALLS_PER_MINUTE, _PER_HOUR).
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator


class Window:
    """At most `limit` calls in any `seconds`-long window: the times of the calls made."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self._calls: deque[float] = deque()

    def wait(self, now: float) -> float:
        """How long until one more call fits (0: now)."""
        while self._calls and self._calls[0] <= now - self.seconds:
            self._calls.popleft()
        if len(self._calls) < self.limit:
            return 0.0
        return self._calls[len(self._calls) - self.limit] + self.seconds - now

    def take(self, now: float) -> None:
        self._calls.append(now)


class _Budget:
    def __init__(self, per_minute: int, per_hour: int) -> None:
        self.windows = (Window(per_minute, 60.0), Window(per_hour, 3600.0))
        self.lock = asyncio.Lock()

    async def take(self) -> None:
        async with self.lock:  # first come, first served
            # Under the lock nobody else takes from the windows: one wait is enough.
            wait = max(window.wait(time.monotonic()) for window in self.windows)
            if wait > 0:
                await asyncio.sleep(wait)
            now = time.monotonic()
            for window in self.windows:
                window.take(now)


class NoSlotInTime(Exception):
    """Our own limits would hold the call past its deadline (a welcome's 20 s)."""


class RateLimiter:
    def __init__(self, *, per_minute: int, per_hour: int, concurrency: int) -> None:
        self._per_minute = per_minute
        self._per_hour = per_hour
        self._concurrency = concurrency
        self._budgets: dict[tuple[str, str], _Budget] = {}
        self._slots: dict[tuple[str, str], asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def slot(
        self, corp_id: str, api: str, *, deadline: float | None = None
    ) -> AsyncIterator[None]:
        """deadline: a time.monotonic() instant; waiting for a slot never goes past it."""
        key = (corp_id, api)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _Budget(self._per_minute, self._per_hour)
            self._slots[key] = asyncio.Semaphore(self._concurrency)
        slots = self._slots[key]
        try:
            async with asyncio.timeout_at(deadline):  # the loop's clock is time.monotonic()
                await budget.take()
                await slots.acquire()
        except TimeoutError:
            raise NoSlotInTime(f"no call slot for {api} before the deadline") from None
        try:
            yield
        finally:
            slots.release()
