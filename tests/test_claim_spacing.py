"""Claims are spaced while work keeps coming (more rows per statement), never after a quiet
spell or a full batch (no latency added where nothing is gained)."""

import asyncio
import itertools
import time

from app.notify import ClaimSpacing

INTERVAL = 0.05


async def _claims(spacing: ClaimSpacing, fulls: list[bool]) -> list[float]:
    """When each claim began, the previous one having been full or not as given."""
    began = []
    for full in fulls:
        await spacing.wait()
        began.append(time.monotonic())
        spacing.claimed(full=full)
    return began


async def test_claims_that_were_not_full_are_spaced_by_the_interval() -> None:
    began = await _claims(ClaimSpacing(INTERVAL), [False] * 4)
    gaps = [b - a for a, b in itertools.pairwise(began)]
    assert all(gap >= INTERVAL * 0.95 for gap in gaps), gaps


async def test_the_claim_after_a_full_batch_goes_at_once() -> None:
    spacing = ClaimSpacing(INTERVAL)
    began = await _claims(spacing, [True, True, True])
    assert began[-1] - began[0] < INTERVAL, "a backlog is drained without waiting"


async def test_the_first_claim_and_the_one_after_a_quiet_spell_go_at_once() -> None:
    spacing = ClaimSpacing(INTERVAL)
    start = time.monotonic()
    await spacing.wait()
    assert time.monotonic() - start < INTERVAL / 2
    spacing.claimed(full=False)
    await asyncio.sleep(INTERVAL * 1.5)  # a quiet spell longer than the interval
    start = time.monotonic()
    await spacing.wait()
    assert time.monotonic() - start < INTERVAL / 2
