"""Count the HTTP requests a benchmarked process sends, whatever library sends them.

Imported first by every benchmarked command (runner, the seed recipe, the ceiling): it wraps
``httpx.AsyncClient.send`` and ``httpx.Client.send`` and, at exit, writes the count to the file
named by ``BENCH_COUNT_FILE``. Prefect's SDK and runner both send through httpx. With
``BENCH_FIRST_FILE`` set, the wall-clock time (``time.time()``) of the first request is
written there as it is sent (what a resume spends before it asks the server anything); with
``BENCH_FIRST_WRITE_FILE``, that of the first write (a DELETE, or a bulk_delete/set_state
route).
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any

import httpx

_count = [0]
_async_send = httpx.AsyncClient.send
_sync_send = httpx.Client.send


_wrote = [False]
WRITES = ("bulk_delete", "set_state")


def _first(request: httpx.Request) -> None:
    if not _count[0]:
        _stamp("BENCH_FIRST_FILE")
    if not _wrote[0] and (request.method == "DELETE" or any(w in request.url.path for w in WRITES)):
        _wrote[0] = True
        _stamp("BENCH_FIRST_WRITE_FILE")


def _stamp(variable: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "w") as handle:
            handle.write(repr(time.time()))


async def _counted_async(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
    _first(request)
    _count[0] += 1
    return await _async_send(self, request, **kwargs)


def _counted_sync(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
    _first(request)
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
