"""bounded_gather: order kept, never more than the limit in flight, the first error raised."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentloop.application.gather import bounded_gather


def jobs_for(delays: list[float], log: dict[str, int]) -> list[Callable[[], Awaitable[int]]]:
    def make(index: int, delay: float) -> Callable[[], Awaitable[int]]:
        async def job() -> int:
            log["now"] += 1
            log["peak"] = max(log["peak"], log["now"])
            await asyncio.sleep(delay)
            log["now"] -= 1
            return index

        return job

    return [make(i, d) for i, d in enumerate(delays)]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.001, 0.003]), max_size=8), st.integers(min_value=1, max_value=5))
def test_results_keep_their_order_and_the_limit_holds(delays: list[float], limit: int) -> None:
    log = {"now": 0, "peak": 0}
    results = asyncio.run(bounded_gather(jobs_for(delays, log), limit))
    assert results == list(range(len(delays)))
    assert log["peak"] <= max(1, min(limit, len(delays)))


async def test_jobs_overlap_when_allowed() -> None:
    log = {"now": 0, "peak": 0}
    assert await bounded_gather(jobs_for([0.01] * 4, log), 2) == [0, 1, 2, 3]
    assert log["peak"] == 2


async def test_the_first_error_is_raised() -> None:
    async def fails() -> int:
        raise ValueError("boom")

    async def fine() -> int:
        return 1

    with pytest.raises(ValueError, match="boom"):
        await bounded_gather([fine, fails], 1)
    log = {"now": 0, "peak": 0}
    slow = jobs_for([5.0], log)[0]
    with pytest.raises(ValueError, match="boom"):
        await bounded_gather([slow, fails, fine], 3)
    assert log["now"] == 1  # the slow job was cancelled, not awaited to its end
