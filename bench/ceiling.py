"""The ceiling: the same REST calls runner makes, from a bare httpx.AsyncClient, no reads, no
checks, no journal. What the server can take at a given concurrency.

    python bench/ceiling.py OP RUNS.json --concurrency N [--bulk]

OP: cancel (Late -> Cancelled), delete, reschedule (in place, +6h), recreate (create from
the deployment, then delete), plan (read every page of a flow's runs, pages concurrently).
Retries 429/502/503/504 and dropped connections (a busy SQLite server answers those) with a
short backoff, so the figure is what gets done, not what got refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx

import bench.counting  # noqa: F401  (counts requests)

RETRY = {429, 502, 503, 504}


async def send(client: httpx.AsyncClient, method: str, path: str, **kw: object) -> httpx.Response:
    for attempt in range(12):
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
    parser.add_argument("runs")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--bulk", action="store_true")
    parser.add_argument("--flow", default="")
    args = parser.parse_args()
    api = os.environ["PREFECT_API_URL"].rstrip("/") + "/"
    runs = json.loads(Path(args.runs).read_text()) if args.op != "plan" else []
    gate = asyncio.Semaphore(args.concurrency)
    done = 0
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=api, timeout=120, limits=limits) as client:

        async def one(run: dict[str, str]) -> None:
            nonlocal done
            async with gate:
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
                if args.op == "delete":
                    await send(client, "POST", "flow_runs/bulk_delete", json=body)
                else:
                    body["state"] = {"type": "CANCELLED", "name": "Cancelled"}
                    await send(client, "POST", "flow_runs/bulk_set_state", json=body)
                done += len(chunk)

        async def page(offset: int) -> int:
            async with gate:
                response = await send(
                    client,
                    "POST",
                    "flow_runs/filter",
                    json={
                        "flows": {"name": {"any_": [args.flow]}},
                        "sort": "ID_DESC",
                        "limit": 200,
                        "offset": offset,
                    },
                )
                return len(response.json())

        if args.op == "plan":
            count = int(
                (
                    await send(
                        client,
                        "POST",
                        "flow_runs/count",
                        json={"flows": {"name": {"any_": [args.flow]}}},
                    )
                ).json()
            )
            sizes = await asyncio.gather(*(page(o) for o in range(0, count, 200)))
            done = sum(sizes)
        elif args.bulk:
            await asyncio.gather(*(batch(runs[i : i + 50]) for i in range(0, len(runs), 50)))
        else:
            await asyncio.gather(*(one(r) for r in runs))
    print(json.dumps({"done": done}))


if __name__ == "__main__":
    asyncio.run(main())
