"""What Prefect's server spends to take runner's events: server CPU and time to persist.

    .venv/bin/python bench/event_cost.py [--events 2000] [--backends sqlite,postgresql]

For each backend, one local Prefect server (the test suite's version; PostgreSQL started as
the harness starts it) with nothing else to do. Three shapes of event, ``--events`` of each,
posted in batches of runner's size (``runner.events.BATCH``) the way an apply posts them:

- ``runner``: the change events of a bulk delete, built by runner's own
  :meth:`runner.events.EventFeed.change_event` (a run with a deployment: the run as resource;
  the deployment, the plan and the playbook related; the payload's before and after);
- ``no-related``: the same events without their related resources;
- ``bare``: a resource and an event name, nothing else.

Measured per shape: the time the POSTs took, the time until the server's events filter shows
every event (Prefect persists them in a service of its own, after the POST is answered), and
the server's CPU seconds over that time and 2 s more (every process of the server's group,
from /proc). The server is the bottleneck of an apply on one machine: its CPU per event is
what runner's events add to an apply's wall time. Writes bench/results/event_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.postgres import Postgres, start_postgres  # noqa: E402
from runner.client import PrefectClient  # noqa: E402
from runner.events import BATCH, EventFeed  # noqa: E402
from runner.plan import Change, Plan, RunView, StepPlan  # noqa: E402
from runner.settings import ConnectionSettings  # noqa: E402
from tests.support.prefect_server import PrefectServer, start_server  # noqa: E402

SHAPES = ("runner", "no-related", "bare")


def server_cpu_s(pgid: int) -> float:
    """CPU seconds (user and system) of every live process of the process group ``pgid``."""
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def delete_plan(count: int) -> Plan:
    """A plan of ``count`` deletes of runs with a deployment, as a bulk delete step plans them."""
    deployment = uuid.uuid4()
    changes = tuple(
        Change(
            step=0,
            run=RunView(
                id=uuid.uuid4(),
                name=f"bench-run-{i}",
                flow="bench-flow",
                state_type="COMPLETED",
                state_name="Completed",
                deployment_id=deployment,
                deployment="bench-flow/bench-deployment",
                tags=("nightly", "etl"),
            ),
            op="delete",
        )
        for i in range(count)
    )
    step = StepPlan(
        index=0,
        name="drop old",
        action="delete",
        selected=count,
        changes=changes,
        concurrency=4,
        rate_limit=None,
        max_attempts=10,
    )
    return Plan(
        id=uuid.uuid4().hex[:12],
        created_at=datetime.now(timezone.utc),
        playbook_name="bench-events",
        playbook_path="playbooks/bench-events.yaml",
        playbook_digest="sha256:0",
        variables={},
        server_url="http://127.0.0.1/api",
        server_version="3.9.1",
        steps=(step,),
    )


def events_of(shape: str, plan: Plan, feed: EventFeed) -> list[dict[str, Any]]:
    events = []
    for change in plan.steps[0].changes:
        event = feed.change_event(plan, change, "done", "deleted", None)
        if shape != "runner":
            event["related"] = []
        if shape == "bare":
            event["resource"] = {"prefect.resource.id": event["resource"]["prefect.resource.id"]}
            event.pop("payload")
        events.append(event)
    return events


def persisted(client: httpx.Client, name: str, since: str) -> int:
    """How many events called ``name`` the server's filter shows since ``since`` (the shapes
    are measured one after the other, each once the last is persisted)."""
    body = {
        "filter": {"occurred": {"since": since}, "event": {"name": [name]}},
        "limit": 1,
    }
    answer = client.post("events/filter", json=body)
    answer.raise_for_status()
    return int(answer.json()["total"])


def measure(server: PrefectServer, shape: str, count: int) -> dict[str, Any]:
    assert server.process is not None
    plan = delete_plan(count)

    async def build() -> list[dict[str, Any]]:
        settings = ConnectionSettings(api_url=server.api_url)
        async with PrefectClient(settings) as api:
            return events_of(shape, plan, EventFeed(api, err=sys.stderr))

    since = datetime.now(timezone.utc).isoformat()  # before the events' `occurred`
    events = anyio.run(build)
    name = events[0]["event"]
    with httpx.Client(base_url=server.api_url + "/", timeout=120) as client:
        cpu_before = server_cpu_s(server.process.pid)
        started = time.perf_counter()
        posting = 0.0
        for start in range(0, count, BATCH):
            sent = time.perf_counter()
            answer = client.post("events", json=events[start : start + BATCH])
            posting += time.perf_counter() - sent
            answer.raise_for_status()
        deadline = started + 300
        while (seen := persisted(client, name, since)) < count:
            if time.perf_counter() > deadline:
                raise SystemExit(f"{shape}: {seen} of {count} events persisted after 300 s")
            time.sleep(0.1)
        persist_s = time.perf_counter() - started
        time.sleep(2.0)  # what the server's services still do with them
        cpu = server_cpu_s(server.process.pid) - cpu_before
    size = len(json.dumps(events[0]))
    return {
        "shape": shape,
        "events": count,
        "bytes_per_event": size,
        "post_s": round(posting, 2),
        "persisted_s": round(persist_s, 2),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_event": round(1000 * cpu / count, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    results = []
    for backend in args.backends.split(","):
        pg: Postgres | None = None
        extra = {}
        if backend == "postgresql":
            pg = start_postgres()
            extra["PREFECT_API_DATABASE_CONNECTION_URL"] = pg.url
        server = start_server(extra_env=extra)
        try:
            version = httpx.get(f"{server.api_url}/admin/version", timeout=30).json()
            time.sleep(5)  # the server's services start after it answers: let them settle
            idle_before = server_cpu_s(server.process.pid) if server.process else 0.0
            time.sleep(5)
            idle = (server_cpu_s(server.process.pid) if server.process else 0.0) - idle_before
            for shape in SHAPES:
                row = {
                    "backend": backend,
                    "prefect": version,
                    **measure(server, shape, args.events),
                }
                row["server_idle_cpu_s_per_s"] = round(idle / 5, 3)
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
            shutil.rmtree(server.home, ignore_errors=True)
            if pg is not None:
                pg.stop()
    out = ROOT / "bench" / "results" / "event_cost.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
