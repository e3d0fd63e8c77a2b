"""app/routers/body_deadlines.py: one timer cuts off every callback body read past its
deadline, and only those (tests/test_slow_clients.py drives it through uvicorn)."""

import asyncio
import time

import pytest

from app.routers.body_deadlines import BodyDeadlines
from tests.processing_helpers import wait_for

SECONDS = 0.2  # a tick is 0.02 s


async def _read(deadlines: BodyDeadlines, takes: float) -> float:
    """A read that takes `takes` seconds; how long it ran."""
    started = time.monotonic()
    with deadlines.within():
        await asyncio.sleep(takes)
    return time.monotonic() - started


async def test_a_read_past_its_deadline_is_cut_off_within_a_tick() -> None:
    deadlines = BodyDeadlines(SECONDS)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await _read(deadlines, 10)
    elapsed = time.monotonic() - started
    assert SECONDS <= elapsed < SECONDS + 0.5  # a tick, and a busy CI machine


async def test_reads_in_time_are_left_alone_and_the_timer_stops_with_them() -> None:
    deadlines = BodyDeadlines(SECONDS)
    took = await asyncio.gather(*(_read(deadlines, 0.01) for _ in range(50)))
    assert max(took) < SECONDS  # none was cut off

    async def idle() -> bool:  # no wake-ups while no body is being read
        return deadlines._timer is None

    await wait_for(idle, within=1)


async def test_reads_started_at_different_times_each_get_their_own_deadline() -> None:
    deadlines = BodyDeadlines(SECONDS)
    early = asyncio.create_task(_read(deadlines, 10))
    await asyncio.sleep(SECONDS / 2)
    late = asyncio.create_task(_read(deadlines, SECONDS * 0.75))  # ends before its deadline
    with pytest.raises(TimeoutError):
        await early
    assert await late >= SECONDS * 0.75


async def test_another_cancellation_stays_a_cancellation() -> None:
    """The server shutting down, or a client gone: not a 408."""
    deadlines = BodyDeadlines(SECONDS)
    task = asyncio.create_task(_read(deadlines, 10))
    await asyncio.sleep(0)  # the read has begun
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._reads


@pytest.mark.parametrize("also_cancelled", [False, True])
async def test_a_cancellation_that_comes_with_the_cut_off_stays_a_cancellation(
    also_cancelled: bool,
) -> None:
    """As with asyncio.timeout: when someone else asked too, before the task saw the cut-off,
    theirs wins."""
    deadlines = BodyDeadlines(SECONDS)
    task = asyncio.create_task(_read(deadlines, 10))
    await asyncio.sleep(0)  # the read has begun
    deadlines._reads[task] = 0.0  # and is past its deadline
    deadlines._sweep()  # the tick cuts it off …
    if also_cancelled:
        task.cancel()  # … and the shutdown asks too, before the task has run again
    with pytest.raises(asyncio.CancelledError if also_cancelled else TimeoutError):
        await task


def test_a_second_event_loop_gets_a_timer_of_its_own() -> None:
    """A loop that closed with the timer armed leaves a handle that never fires; the next
    loop must not take it for its own (tests and embedders run one app on several loops)."""
    deadlines = BodyDeadlines(SECONDS)
    assert asyncio.run(_read(deadlines, 0.01)) < SECONDS  # closes with the timer armed
    with pytest.raises(TimeoutError):
        asyncio.run(_read(deadlines, 10))
