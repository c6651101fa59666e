"""The executor's concurrency limit: grows while the server keeps up, shrinks when it queues."""

from __future__ import annotations

import pytest

from runner.executor import AdaptiveLimit


async def complete(limit: AdaptiveLimit, seconds: float, times: int) -> None:
    for _ in range(times):
        await limit.acquire()
        await limit.release(seconds)


@pytest.mark.anyio
async def test_flat_latency_grows_to_the_maximum() -> None:
    limit = AdaptiveLimit(1, 8)
    await complete(limit, 0.05, 100)
    assert limit.limit == 8


@pytest.mark.anyio
async def test_queueing_latency_shrinks_to_one() -> None:
    limit = AdaptiveLimit(8, 8)
    await complete(limit, 0.05, 8)  # the server's service time
    await complete(limit, 0.40, 100)  # requests now wait inside the server
    assert limit.limit == 1


@pytest.mark.anyio
async def test_latency_between_the_bounds_holds_the_limit() -> None:
    limit = AdaptiveLimit(4, 8)
    await complete(limit, 0.05, 1)
    await complete(limit, 0.09, 40)  # 1.8x the fastest: neither queueing nor spare capacity
    assert limit.limit == 4


@pytest.mark.anyio
async def test_busy_halves_at_most_once_a_second() -> None:
    limit = AdaptiveLimit(8, 8)
    limit.busy()
    limit.busy()
    assert limit.limit == 4


@pytest.mark.anyio
async def test_after_busy_it_stays_below_the_limit_that_drew_it_until_the_cool_off_ends() -> None:
    now = [100.0]
    limit = AdaptiveLimit(1, 8, cool_off=30.0, clock=lambda: now[0])
    await complete(limit, 0.05, 2)
    assert limit.limit == 2
    limit.busy()  # two in flight drew a 503
    await complete(limit, 0.05, 100)
    assert limit.limit == 1
    now[0] += 31.0
    await complete(limit, 0.05, 100)
    assert limit.limit == 8


def test_bounds() -> None:
    assert AdaptiveLimit(0, 0).limit == 1
    assert AdaptiveLimit(9, 4).limit == 4
