"""In-memory caches in front of Postgres on the callback path (an app's keys, its reply
rules), that never make a burst of callbacks wait for them.

A plain cache with a ttl lets every request that comes while an entry is being reloaded do
the reload itself: at 1,900 callbacks a second, each time the app's entry ran out (every
10 s) some hundred requests opened a session each, opened the app's sealed keys each, and
waited together 50-190 ms; that was the ingest p99 (ADR 0008). Here, per key:

- one load at a time, however many ask (the others await the same one);
- in the last fifth of an entry's ttl, a request is answered from it at once and one load
  replaces it behind the answer: under steady traffic an entry is renewed before it runs
  out, and nobody waits;
- an entry is never answered from after its ttl (a removed app, rotated keys: at most `ttl`
  old); then, or with none, the caller waits for the load.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Refreshing(Generic[K, V]):
    """`load(key)` returns the value, or None where there is none: None is never cached
    (the caller decides how long "there is none" holds) and drops the key's entry. With a
    ttl of 0 nothing is kept, and a caller may share a load that began just before it."""

    def __init__(
        self,
        load: Callable[[K], Awaitable[V | None]],
        *,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[K, tuple[float, float, V]] = {}  # renew after, expires, value
        self._loading: dict[K, asyncio.Future[V | None]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    async def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is not None:
            renew_after, expires, value = entry
            now = self._clock()
            if now < expires:
                if now >= renew_after:
                    self._loaded(key)  # behind this answer
                return value
        # Shielded: a caller that gives up (its client went away) leaves the load to the
        # others waiting for it.
        return await asyncio.shield(self._loaded(key))

    def _loaded(self, key: K) -> "asyncio.Future[V | None]":
        """The load of `key` under way, or a new one."""
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load_into(key))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._done(key, done))
        return loading

    async def _load_into(self, key: K) -> V | None:
        asked = self._clock()  # the value is as old as the question, not the answer
        value = await self._load(key)
        if value is None:
            self._entries.pop(key, None)
        elif self._ttl > 0:
            self._entries[key] = (asked + self._ttl * 0.8, asked + self._ttl, value)
        return value

    def _done(self, key: K, done: "asyncio.Future[V | None]") -> None:
        self._loading.pop(key, None)
        # A load nobody awaited (a refresh behind an answer) that failed, with Postgres
        # away, is simply tried again by the next request; callers that awaited it got
        # the error themselves.
        if not done.cancelled():
            done.exception()
