"""How many requests may be in flight: the level the server answers fastest at.

Measured on a local Prefect 3.8 server (2 cores), the best level depends on the backend and
the operation, and latency alone cannot find it: the server's single event loop makes every
request slower as more wait, yet PostgreSQL still completes more of them (per-run cancels: 35
runs/s one at a time, 61/s four at a time), while SQLite completes fewer (recreating runs:
16.5/s at 1, 13.2/s at 4, 4.3/s at 64). So the limit climbs on throughput, measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

#: The most requests a step may have in flight (``concurrency`` in a playbook, ``--concurrency``).
MAX_CONCURRENCY = 256
#: Connections an apply's client may open besides its steps' requests: the read-ahead of
#: one-run writes, the event feed, the server lock's renewals.
CONNECTIONS_BESIDES = 16
#: A level must complete this much more than the one below it to be worth its extra load.
GAIN = 1.1
#: Completions a window needs before its throughput counts (at least twice the level).
MIN_WINDOW = 8
#: At the chosen level, every this many windows one is spent trying a neighbouring level:
#: the server's best level moves as its load does.
PROBE_EVERY = 8


def ladder(maximum: int) -> list[int]:
    """The levels tried: 1, 2, 4, ... and ``maximum``."""
    levels = [1]
    while levels[-1] * 2 < maximum:
        levels.append(levels[-1] * 2)
    if levels[-1] != maximum:
        levels.append(maximum)
    return levels


class AdaptiveLimit:
    """How many requests may be in flight, adapted to what the server shows.

    - Throughput: completions are counted in windows of at least ``MIN_WINDOW`` (and twice the
      level), cut short once a window has lasted as long as the best level needs for a whole
      one. Starting at one, the limit doubles while each level completes at least
      ``GAIN`` times as many a second as the one below it, then settles on the fewest in
      flight that complete within ``GAIN`` of the best level measured (each level's estimate
      averages its windows, newest weighted half). Every ``PROBE_EVERY`` windows it spends
      one on a neighbouring level, up and down in turn, so a server whose best level moves
      is followed.
    - "Busy" answers (429, 503, dropped connections) halve the limit (at most once a second),
      and for ``cool_off`` seconds no level at or above the one that drew them is used.
      Without that it would climb straight back: a SQLite server takes one write at a time,
      and an apply that keeps meeting 503s spends its time in backoffs (2,000 per-run
      deletes: 117 503s, 23 runs/s against 30/s one at a time).
    """

    def __init__(
        self,
        initial: int,
        maximum: int,
        *,
        cool_off: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = max(1, maximum)
        self.levels = ladder(self.maximum)
        start = max(1, min(initial, self.maximum))
        self.limit = max(level for level in self.levels if level <= start)
        self.in_flight = 0
        self.cool_off = cool_off
        self._clock = clock
        self._last_cut = -math.inf
        self._cap = self.maximum
        self._cap_until = -math.inf
        self._changed = anyio.Condition()
        self._rate: dict[int, float] = {}
        self._climbing = True
        self._window_start: float | None = None
        self._window_done = 0
        self._windows = 0
        self._probe_up = True

    async def acquire(self) -> None:
        async with self._changed:
            while self.in_flight >= self.limit:
                await self._changed.wait()
            self.in_flight += 1

    async def release(self, seconds: float | None = None) -> None:
        async with self._changed:
            self.in_flight -= 1
            if seconds is not None and seconds > 0:
                self._observe(seconds)
            self._changed.notify_all()

    def _observe(self, seconds: float) -> None:
        now = self._clock()
        if self._window_start is None:
            self._window_start = now - seconds
        self._window_done += 1
        elapsed = now - self._window_start
        if elapsed <= 0:
            return
        wanted = max(MIN_WINDOW, 2 * self.limit)
        if self._window_done < wanted and elapsed < self._budget(wanted):
            return
        rate = self._window_done / elapsed
        self._window_start, self._window_done = now, 0
        old = self._rate.get(self.limit)
        self._rate[self.limit] = rate if old is None else (old + rate) / 2
        self._decide()

    def _budget(self, wanted: int) -> float:
        """How long a window may last: as long as the best level measured takes for a whole
        one. A level far slower than the best is judged on its first completions, not on a
        full window: SQLite bulk-deletes 274 runs a second one batch at a time and 49 four at
        a time, so a full window of 50-run batches at two and at four cost a quarter of a
        2,000-run apply."""
        if not self._rate:
            return math.inf
        return wanted / max(self._rate.values())

    def _allowed(self) -> list[int]:
        capped = self._clock() < self._cap_until
        return [level for level in self.levels if not capped or level <= self._cap]

    def _decide(self) -> None:
        allowed = self._allowed()
        level = self.limit
        if self._climbing:
            below = [lv for lv in allowed if lv < level]
            above = [lv for lv in allowed if lv > level]
            if above and (not below or self._rate[level] >= GAIN * self._rate[below[-1]]):
                self.limit = above[0]
                return
            self._climbing = False
        self.limit = self._preferred(allowed)
        self._windows += 1
        if self._windows % PROBE_EVERY == 0:
            index = allowed.index(self.limit)
            step = 1 if self._probe_up else -1
            self._probe_up = not self._probe_up
            if 0 <= index + step < len(allowed):
                self.limit = allowed[index + step]

    def _preferred(self, allowed: list[int]) -> int:
        """The fewest in flight that complete within ``GAIN`` of the best measured level: more
        load on the server only where it pays."""
        measured = [lv for lv in allowed if lv in self._rate]
        if not measured:
            return allowed[0]
        best = max(self._rate[lv] for lv in measured)
        return min(lv for lv in measured if self._rate[lv] * GAIN >= best)

    def busy(self) -> None:
        # At most one cut a second: one burst of 503s is one signal, not ten.
        now = self._clock()
        if now - self._last_cut >= 1.0:
            drew = self.limit
            self._cap = max(1, drew // 2)
            self._cap_until = now + self.cool_off
            self.limit = max(level for level in self.levels if level <= self._cap)
            self._rate.pop(drew, None)
            self._climbing = False
            self._window_start, self._window_done = None, 0
            self._last_cut = now
