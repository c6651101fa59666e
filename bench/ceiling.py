"""The ceiling: the same REST calls runner makes, from a bare httpx.AsyncClient, no checks, no
journal. What the server can take at a given concurrency.

    python bench/ceiling.py OP --flow NAME --state STATE --concurrency N [--bulk] [--checked]

It finds its runs the way runner does (the flow's runs in STATE: a state name such as Late, or
a type such as COMPLETED; pages of 200, read concurrently), then acts on them.

OP: cancel (Late -> Cancelled), delete, reschedule (in place, +6h), recreate (create from
the deployment, then delete), plan (read every page of a flow's runs, pages concurrently).
Retries 429/502/503/504 and dropped connections (a busy SQLite server answers those) with a
short backoff, so the figure is what gets done, not what got refused.

``--checked``: the checked ceiling. Each write is sent right after a read of exactly what it
writes (a bulk write after one ``flow_runs/filter`` of its ids; a one-run write, and a
recreate's create, after ``GET flow_runs/{id}``), the least a tool that never writes over a
run it has not just seen must send. It judges nothing it reads: the read's cost alone.

``plan --keyset``: the keyset ceiling, what the server can serve a read by keyset at: the
flow's runs by expected start time, the span cut in equal slices of about eight pages (at
least one per request in flight), each paged after the last time read (the ids read at that
time left out), a slice ending on its first page shorter than asked. No parsing past the
JSON, nothing kept but the ids (``done`` counts each once). Beside the offset ceiling it
says where the server's own limit sits for a reader that does not page by offset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx

import bench.counting  # noqa: F401  (counts requests)

RETRY = {429, 502, 503, 504}
PAGE = 200
TICK = timedelta(microseconds=1)


async def send(client: httpx.AsyncClient, method: str, path: str, **kw: object) -> httpx.Response:
    # Patient: a SQLite server answers concurrent creates with 503s for many seconds at a
    # time, and a ceiling that gives up measures nothing (a 2,000-run recreate at 4 did).
    for attempt in range(60):
        try:
            response = await client.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.TransportError:
            await asyncio.sleep(0.05 * 2 ** min(attempt, 6))
            continue
        if response.status_code not in RETRY:
            return response
        await asyncio.sleep(0.05 * 2 ** min(attempt, 6))
    raise RuntimeError(f"{method} {path}: gave up")


def scheduled(run: dict[str, Any]) -> dict[str, Any]:
    """A Scheduled state at the run's expected start plus the workload's delay."""
    return {
        "type": "SCHEDULED",
        "name": "Scheduled",
        "state_details": {"scheduled_time": later(run["expected_start"])},
    }


def later(expected: str) -> str:
    when = datetime.fromisoformat(expected.replace("Z", "+00:00")) + timedelta(hours=6)
    return when.isoformat()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("op")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--bulk", action="store_true")
    parser.add_argument("--checked", action="store_true")
    parser.add_argument("--keyset", action="store_true")
    parser.add_argument("--flow", required=True)
    parser.add_argument("--state", default="")
    args = parser.parse_args()
    api = os.environ["PREFECT_API_URL"].rstrip("/") + "/"
    selection: dict[str, Any] = {"flows": {"name": {"any_": [args.flow]}}}
    if args.state.isupper():
        selection["flow_runs"] = {"state": {"type": {"any_": [args.state]}}}
    elif args.state:
        selection["flow_runs"] = {"state": {"name": {"any_": [args.state]}}}
    gate = asyncio.Semaphore(args.concurrency)
    done = 0
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=api, timeout=120, limits=limits) as client:

        async def one(run: dict[str, str]) -> None:
            nonlocal done
            async with gate:
                if args.checked:
                    await send(client, "GET", f"flow_runs/{run['id']}")
                if args.op == "cancel":
                    await send(
                        client,
                        "POST",
                        f"flow_runs/{run['id']}/set_state",
                        json={"state": {"type": "CANCELLED", "name": "Cancelled"}},
                    )
                elif args.op == "delete":
                    await send(client, "DELETE", f"flow_runs/{run['id']}")
                elif args.op == "reschedule":
                    state = scheduled(run)
                    await send(
                        client,
                        "POST",
                        f"flow_runs/{run['id']}/set_state",
                        json={"state": state, "force": False},
                    )
                elif args.op == "recreate":
                    state = scheduled(run)
                    await send(
                        client,
                        "POST",
                        f"deployments/{run['deployment_id']}/create_flow_run",
                        json={"state": state},
                    )
                    await send(client, "DELETE", f"flow_runs/{run['id']}")
                done += 1

        async def batch(chunk: list[dict[str, str]]) -> None:
            nonlocal done
            ids = [r["id"] for r in chunk]
            body: dict[str, object] = {"flow_runs": {"id": {"any_": ids}}, "limit": len(ids)}
            async with gate:
                if args.checked:
                    await send(client, "POST", "flow_runs/filter", json=body)
                if args.op == "delete":
                    await send(client, "POST", "flow_runs/bulk_delete", json=body)
                else:
                    body["state"] = {"type": "CANCELLED", "name": "Cancelled"}
                    await send(client, "POST", "flow_runs/bulk_set_state", json=body)
                done += len(chunk)

        async def page(offset: int) -> list[dict[str, Any]]:
            async with gate:
                response = await send(
                    client,
                    "POST",
                    "flow_runs/filter",
                    json={**selection, "sort": "ID_DESC", "limit": 200, "offset": offset},
                )
                found: list[dict[str, Any]] = response.json()
                return found

        if args.op == "plan" and args.keyset:
            print(
                json.dumps({"done": await keyset_read(client, selection, gate, args.concurrency)})
            )
            return
        count = int((await send(client, "POST", "flow_runs/count", json=selection)).json())
        pages = await asyncio.gather(*(page(o) for o in range(0, count, 200)))
        runs = [
            {
                "id": r["id"],
                "expected_start": r["expected_start_time"],
                "deployment_id": r["deployment_id"],
            }
            for found in pages
            for r in found
        ]
        if args.op == "plan":
            done = len(runs)
        elif args.bulk:
            await asyncio.gather(*(batch(runs[i : i + 50]) for i in range(0, len(runs), 50)))
        else:
            await asyncio.gather(*(one(r) for r in runs))
    print(json.dumps({"done": done}))


async def keyset_read(
    client: httpx.AsyncClient, selection: dict[str, Any], gate: asyncio.Semaphore, width: int
) -> int:
    """Every run of ``selection`` read by keyset (see the module's ``plan --keyset``): how
    many distinct runs were read."""

    async def page(runs: dict[str, Any], sort: str) -> list[dict[str, Any]]:
        body = {**selection, "flow_runs": {**selection.get("flow_runs", {}), **runs}}
        async with gate:
            response = await send(
                client, "POST", "flow_runs/filter", json={**body, "sort": sort, "limit": PAGE}
            )
        found: list[dict[str, Any]] = response.json()
        return found

    count = int((await send(client, "POST", "flow_runs/count", json=selection)).json())
    timed = {"expected_start_time": {"after_": "0001-01-01T00:00:00+00:00"}}
    first, last = await asyncio.gather(
        page(timed, "EXPECTED_START_TIME_ASC"), page(timed, "EXPECTED_START_TIME_DESC")
    )
    if not first:
        return 0
    low = datetime.fromisoformat(first[0]["expected_start_time"])
    high = datetime.fromisoformat(last[0]["expected_start_time"])
    parts = max(width, -(-count // (PAGE * 8)))
    cuts = [low + (high - low) * i / parts for i in range(parts + 1)]
    seen: set[str] = set()

    async def read_slice(index: int) -> None:
        after = cuts[index]
        ties: list[str] = []
        before = cuts[index + 1] - TICK if index < parts - 1 else None
        while True:
            window = {"after_": after.isoformat()}
            if before is not None:
                window["before_"] = before.isoformat()
            runs: dict[str, Any] = {"expected_start_time": window}
            if ties:
                runs["id"] = {"not_any_": ties}
            found = await page(runs, "EXPECTED_START_TIME_ASC")
            seen.update(run["id"] for run in found)
            if len(found) < PAGE:
                return
            stamp = found[-1]["expected_start_time"]
            at = datetime.fromisoformat(stamp)
            ties = (ties if at == after else []) + [
                run["id"] for run in found if run["expected_start_time"] == stamp
            ]
            after = at

    await asyncio.gather(*(read_slice(i) for i in range(parts)))
    if len(seen) != count:  # the server is quiet: a miss is the ceiling's own
        raise SystemExit(f"keyset ceiling: read {len(seen)} runs of {count}")
    return len(seen)


if __name__ == "__main__":
    asyncio.run(main())
