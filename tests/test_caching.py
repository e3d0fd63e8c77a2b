"""The callback path's caches (app/caching.py): a burst of requests never loads a key more
than once at a time, and an entry that just ran out is answered while it is reloaded."""

import asyncio

import pytest

from app.caching import Refreshing


class Loads:
    """A load that counts its calls and finishes only when told to."""

    def __init__(self) -> None:
        self.calls = 0
        self.value: str | None = "v1"
        self.release = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self, key: str) -> str | None:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _loaded(cache: Refreshing[str, str], loads: Loads) -> None:
    loads.release.set()
    assert await cache.get("k") == loads.value
    loads.release.clear()


async def test_a_burst_for_a_missing_key_is_one_load() -> None:
    loads = Loads()
    cache: Refreshing[str, str] = Refreshing(loads, ttl=10, clock=Clock())
    waiting = [asyncio.create_task(cache.get("k")) for _ in range(50)]
    await asyncio.sleep(0)
    loads.release.set()
    assert await asyncio.gather(*waiting) == ["v1"] * 50
    assert loads.calls == 1


async def test_an_entry_near_its_end_is_answered_while_one_load_renews_it() -> None:
    loads, clock = Loads(), Clock()
    cache: Refreshing[str, str] = Refreshing(loads, ttl=10, clock=clock)
    await _loaded(cache, loads)
    clock.now = 9  # in the last fifth of its ttl
    loads.value = "v2"
    # The load is held: every answer comes from the entry, at once, with one load.
    answers = await asyncio.wait_for(asyncio.gather(*(cache.get("k") for _ in range(50))), 1)
    assert answers == ["v1"] * 50
    assert loads.calls == 2
    loads.release.set()
    for _ in range(100):
        if await cache.get("k") == "v2":
            break
        await asyncio.sleep(0)
    assert await cache.get("k") == "v2"
    assert loads.calls == 2


async def test_an_entry_past_its_ttl_is_never_answered_from() -> None:
    """A removed app, rotated keys: what was cached holds `ttl` at most."""
    loads, clock = Loads(), Clock()
    cache: Refreshing[str, str] = Refreshing(loads, ttl=10, clock=clock)
    await _loaded(cache, loads)
    clock.now = 10.5
    loads.value = "v2"
    waiting = [asyncio.create_task(cache.get("k")) for _ in range(50)]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in waiting)
    loads.release.set()
    assert await asyncio.gather(*waiting) == ["v2"] * 50
    assert loads.calls == 2, "the callers waited for one load"


async def test_none_is_not_cached_and_drops_the_entry() -> None:
    loads, clock = Loads(), Clock()
    cache: Refreshing[str, str] = Refreshing(loads, ttl=10, clock=clock)
    await _loaded(cache, loads)
    loads.value = None
    clock.now = 25
    loads.release.set()
    assert await cache.get("k") is None
    assert "k" not in cache
    assert await cache.get("k") is None
    assert loads.calls == 3, "nothing to answer from: each get looks again"


async def test_a_failed_load_reaches_its_callers_and_the_next_get_tries_again() -> None:
    loads = Loads()
    cache: Refreshing[str, str] = Refreshing(loads, ttl=10, clock=Clock())
    loads.error = ConnectionError("postgres away")
    loads.release.set()
    with pytest.raises(ConnectionError):
        await cache.get("k")
    loads.error = None
    assert await cache.get("k") == "v1"
    assert loads.calls == 2


async def test_a_caller_that_gives_up_leaves_the_load_to_the_others() -> None:
    loads = Loads()
    cache: Refreshing[str, str] = Refreshing(loads, ttl=10, clock=Clock())
    impatient = asyncio.create_task(cache.get("k"))
    patient = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    impatient.cancel()
    loads.release.set()
    assert await patient == "v1"
    assert loads.calls == 1
