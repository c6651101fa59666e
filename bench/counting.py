"""Count the HTTP requests a benchmarked process sends, whatever library sends them.

Imported first by every benchmarked command (runner, the seed recipe, the ceiling): it wraps
``httpx.AsyncClient.send`` and ``httpx.Client.send`` and, at exit, writes the count to the file
named by ``BENCH_COUNT_FILE``. Prefect's SDK and runner both send through httpx.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import httpx

_count = [0]
_async_send = httpx.AsyncClient.send
_sync_send = httpx.Client.send


async def _counted_async(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
    _count[0] += 1
    return await _async_send(self, request, **kwargs)


def _counted_sync(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
    _count[0] += 1
    return _sync_send(self, request, **kwargs)


httpx.AsyncClient.send = _counted_async  # type: ignore[method-assign]
httpx.Client.send = _counted_sync  # type: ignore[method-assign]


@atexit.register
def _write() -> None:
    path = os.environ.get("BENCH_COUNT_FILE")
    if path:
        with open(path, "w") as handle:
            handle.write(str(_count[0]))
