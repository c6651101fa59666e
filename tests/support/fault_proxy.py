"""A fault-injecting reverse proxy for the tests: loopback only, in front of the real server.

Every request is forwarded to the real Prefect server, except that on a seeded random
schedule the proxy instead:

- ``500``, ``502``, ``503``: answers with that status without forwarding;
- ``401`` (from ``unauthorized_after`` requests on): credentials revoked mid-apply;
- ``429``: answers 429 with ``Retry-After`` without forwarding;
- ``reset-before``: drops the connection before forwarding (the server never saw it);
- ``reset-after``: forwards, lets the server handle it, then drops the connection instead of
  answering (the dangerous case: the change happened, the answer was lost);
- ``slow``: forwards, then holds the answer past the client's timeout before dropping it
  (the change happened; the client gave up waiting);
- ``garbage``: forwards, then answers 200 with a body cut off mid-JSON (the change happened;
  the answer is unreadable);
- ``extra-fields``: forwards and answers, with fields no Prefect version has added to every
  JSON object of the server's own (a newer server: must be ignored); the user's data inside
  (parameters, job variables) is left as it is.

The schedule depends only on the seed and the order of requests, and ``injected`` counts what
was done, so a failing scenario can be replayed. Runs its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx

KINDS = ("500", "502", "503", "429", "reset-before", "reset-after", "slow", "garbage")
HOSTILE = ("garbage", "extra-fields")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
}


class FaultProxy:
    def __init__(
        self,
        upstream_api_url: str,
        *,
        seed: int,
        rate: float,
        kinds: Sequence[str] = KINDS,
        slow_seconds: float = 2.5,
        retry_after: str = "0.1",
        only: str | None = None,
    ) -> None:
        self.upstream = upstream_api_url.rstrip("/")
        self.random = random.Random(seed)
        self.rate = rate
        self.kinds = tuple(kinds)
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.only = re.compile(only) if only else None  # faults only where "METHOD path" matches
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.upstream_errors = 0
        self.enabled = True
        self.unauthorized_after: int | None = None  # from then on every answer is a 401
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        base = self.upstream.removesuffix("/api")
        self._client = httpx.AsyncClient(base_url=base, timeout=120)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            # Connections still being served (a "slow" fault sleeping past the client's
            # timeout) end here, not when the loop is torn down under them.
            serving = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)
            if self._client is not None:
                await self._client.aclose()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    # -- serving -----------------------------------------------------------------------------

    def _pick(self, method: str, target: str) -> str | None:
        self.requests += 1
        if self.only is not None and not self.only.search(f"{method} {target}"):
            return None
        if self.unauthorized_after is not None and self.requests > self.unauthorized_after:
            return "401"
        if not self.enabled or self.random.random() >= self.rate:
            return None
        return self.random.choice(self.kinds)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, target, headers, body = request
                kind = self._pick(method, target)
                if kind is not None:
                    self.injected[kind] += 1
                if kind in ("401", "500", "502", "503", "429"):
                    extra = {"Retry-After": self.retry_after} if kind == "429" else {}
                    await _write_response(
                        writer,
                        int(kind),
                        {"content-type": "application/json", **extra},
                        b'{"detail": "injected by the fault proxy"}',
                    )
                    continue
                if kind == "reset-before":
                    writer.transport.abort()
                    return
                status, out_headers, content = await self._forward(method, target, headers, body)
                if kind == "reset-after":
                    writer.transport.abort()
                    return
                if kind == "slow":
                    await asyncio.sleep(self.slow_seconds)
                    writer.transport.abort()
                    return
                if kind == "garbage" and content:
                    content = content[: max(1, len(content) // 2)]
                    status = 200
                if kind == "extra-fields" and content:
                    content = _with_extra_fields(content)
                await _write_response(writer, status, out_headers, content)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._client is not None
        forwarded = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        forwarded.append(("accept-encoding", "identity"))
        try:
            response = await self._client.request(method, target, headers=forwarded, content=body)
        except httpx.TransportError as exc:
            # The real server dropped the connection (SQLite under load does): answer as a
            # reverse proxy does, 502.
            self.upstream_errors += 1
            detail = f'{{"detail": "upstream: {type(exc).__name__}"}}'.encode()
            return 502, {"content-type": "application/json"}, detail
        out = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        return response.status_code, out, response.content


def _with_extra_fields(content: bytes) -> bytes:
    import json

    # A newer server adds fields to its own objects, never inside the user's data (a run's
    # parameters, job variables, a state's data): those are left as they are.
    user_data = {"parameters", "job_variables", "data", "labels"}

    def add(value: Any) -> Any:
        if isinstance(value, dict):
            fields = {k: v if k in user_data else add(v) for k, v in value.items()}
            return {**fields, "x_future_field": {"nested": [1]}}
        if isinstance(value, list):
            return [add(v) for v in value]
        return value

    try:
        return json.dumps(add(json.loads(content))).encode()
    except ValueError:
        return content


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    body = await reader.readexactly(length) if length else b""
    return method, target, headers, body


async def _write_response(
    writer: asyncio.StreamWriter, status: int, headers: dict[str, Any], body: bytes
) -> None:
    reason = {200: "OK", 201: "Created", 204: "No Content", 429: "Too Many Requests"}.get(
        status, "Status"
    )
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
