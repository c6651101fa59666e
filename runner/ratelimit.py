"""A request-rate limit shared by every task that sends through one client."""

from __future__ import annotations

import time

import anyio


class RateLimiter:
    """Spaces requests so that no more than ``rate`` start in any second (after a burst)."""

    def __init__(self, rate: float, *, burst: int = 1) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self._interval = 1.0 / rate
        self._burst_span = (burst - 1) * self._interval
        self._next = 0.0
        self._lock = anyio.Lock()

    async def acquire(self) -> None:
        """Wait for the next free slot."""
        async with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self._burst_span)
            self._next = start + self._interval
            delay = start - now
        if delay > 0:
            await anyio.sleep(delay)
