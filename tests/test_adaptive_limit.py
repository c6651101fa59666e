"""The executor's concurrency limit: it settles where the server completes the most."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from runner.concurrency import MIN_WINDOW, PROBE_EVERY, AdaptiveLimit, ladder


class Server:
    """A server that completes ``rate(level)`` units a second at a given level in flight."""

    def __init__(self, rate: Callable[[int], float]) -> None:
        self.rate = rate
        self.now = 100.0
        self.levels: list[int] = []

    def clock(self) -> float:
        return self.now

    async def complete(self, limit: AdaptiveLimit, times: int) -> None:
        for _ in range(times):
            level = limit.limit
            self.levels.append(level)
            await limit.acquire()
            self.now += 1 / self.rate(level)
            await limit.release(level / self.rate(level))


def settled(levels: list[int]) -> int:
    """The level used most over the last 400 completions."""
    tail = levels[-400:]
    return max(set(tail), key=tail.count)


def test_the_levels_double_up_to_the_maximum() -> None:
    assert ladder(1) == [1]
    assert ladder(8) == [1, 2, 4, 8]
    assert ladder(12) == [1, 2, 4, 8, 12]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        # A server that gains from every level gets the maximum.
        ({1: 20.0, 2: 40.0, 4: 80.0, 8: 160.0}, 8),
        # SQLite: twice as many in flight, each takes twice as long; nothing gained.
        ({1: 25.0, 2: 25.0, 4: 25.0, 8: 25.0}, 1),
        # Measured: recreating runs on SQLite, 16.5/s at 1, 13.2/s at 4, 4.3/s at 64.
        ({1: 16.5, 2: 15.0, 4: 13.2, 8: 11.0}, 1),
        # Measured: per-run cancels on PostgreSQL, 35/s at 1, 61/s at 4, 46/s at 16.
        ({1: 35.0, 2: 48.0, 4: 61.0, 8: 50.0}, 4),
    ],
    ids=["gains", "serialising", "slowed", "best-between"],
)
async def test_it_settles_where_the_server_completes_the_most(
    rates: dict[int, float], expected: int
) -> None:
    server = Server(lambda level: rates[level])
    limit = AdaptiveLimit(1, 8, clock=server.clock)
    await server.complete(limit, 1000)
    assert settled(server.levels) == expected
    # Probes aside, it stays there: one window in eight at a neighbouring level.
    tail = server.levels[-400:]
    assert tail.count(expected) > 0.75 * len(tail)


@pytest.mark.anyio
async def test_it_follows_a_server_whose_best_level_moves() -> None:
    best = [1]
    server = Server(lambda level: 40.0 if level == best[0] else 20.0)
    limit = AdaptiveLimit(1, 8, clock=server.clock)
    await server.complete(limit, 600)
    assert settled(server.levels) == 1
    best[0] = 2
    # Probes go up and down in turn, one window every PROBE_EVERY.
    await server.complete(limit, 4 * PROBE_EVERY * MIN_WINDOW + 400)
    assert settled(server.levels) == 2


@pytest.mark.anyio
async def test_busy_halves_at_most_once_a_second() -> None:
    limit = AdaptiveLimit(8, 8)
    limit.busy()
    limit.busy()
    assert limit.limit == 4


@pytest.mark.anyio
async def test_after_busy_it_stays_below_the_level_that_drew_it_until_the_cool_off_ends() -> None:
    server = Server(lambda level: 20.0 * level)
    limit = AdaptiveLimit(1, 8, cool_off=30.0, clock=server.clock)
    await server.complete(limit, 300)
    assert limit.limit == 8
    limit.busy()  # eight in flight drew a 503
    start = len(server.levels)
    await server.complete(limit, 200)  # ~2.5 s of the 30 s cool-off
    assert max(server.levels[start:]) <= 4
    server.now += 31.0
    await server.complete(limit, 1000)
    assert settled(server.levels) == 8


def test_bounds() -> None:
    assert AdaptiveLimit(0, 0).limit == 1
    assert AdaptiveLimit(9, 4).limit == 4
    assert AdaptiveLimit(3, 8).limit == 2  # the levels are 1, 2, 4, 8


@pytest.mark.anyio
async def test_a_level_far_slower_than_the_best_is_left_after_its_first_completions() -> None:
    # Measured: bulk deletes on SQLite, 50-run batches: 274 runs/s one at a time, 49 at four.
    rates = {1: 274 / 50, 2: 120 / 50, 4: 49 / 50, 8: 30 / 50}
    server = Server(lambda level: rates[level])
    limit = AdaptiveLimit(1, 8, clock=server.clock)
    await server.complete(limit, 40)  # 2,000 runs
    assert server.levels[:MIN_WINDOW] == [1] * MIN_WINDOW
    # A full window at two would be MIN_WINDOW batches; the best level's time for one is enough.
    assert server.levels[MIN_WINDOW:].count(2) == 4
    assert set(server.levels[MIN_WINDOW:]) == {1, 2}
