"""The seed recipes, as Prefect's docs give them (../shared/seeds/000_*.txt), run with the
official ``prefect`` SDK in the Prefect server's own venv.

The functions are the docs' code, reformatted, unchanged in what they send. What is added is
only the driver a user has to write around them: the docs' functions read one page (the
server's default limit, 200 runs; asking for more is a 422 on Prefect 3), so the driver calls
them again until nothing is left. Deleting and reading history have no recipe of their own;
they follow the docs' pagination recipe (limit/offset pages, then one call per run).
"""

from __future__ import annotations

PRELUDE = """
import asyncio, sys, json
from datetime import datetime, timedelta, timezone
from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter, FlowFilter, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Scheduled
"""

# "Reschedule late flow runs" (the docs' recipe, verbatim in what it sends).
RESCHEDULE = (
    PRELUDE
    + """
async def reschedule_late_flow_runs(
    deployment_name: str,
    delay: timedelta,
    most_recent_n: int,
    delete_remaining: bool = True,
    states: list[str] | None = None,
) -> list[FlowRun]:
    states = states or ["Late"]
    async with get_client() as client:
        flow_runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=dict(name=dict(any_=states)),
                expected_start_time=dict(before_=datetime.now(timezone.utc)),
            ),
            deployment_filter=DeploymentFilter(name={'like_': deployment_name}),
            sort=FlowRunSort.START_TIME_DESC,
            limit=most_recent_n if not delete_remaining else None,
        )
        rescheduled_flow_runs: list[FlowRun] = []
        for i, run in enumerate(flow_runs):
            await client.delete_flow_run(flow_run_id=run.id)
            if i < most_recent_n:
                new_run = await client.create_flow_run_from_deployment(
                    deployment_id=run.deployment_id,
                    state=Scheduled(scheduled_time=run.expected_start_time + delay),
                )
                rescheduled_flow_runs.append(new_run)
        return rescheduled_flow_runs

async def main():
    deployment, delay = sys.argv[1], timedelta(seconds=float(sys.argv[2]))
    done = 0
    while True:
        runs = await reschedule_late_flow_runs(deployment, delay, most_recent_n=10**9)
        if not runs:
            break
        done += len(runs)
    print(json.dumps({"done": done}))

asyncio.run(main())
"""
)

# "Cancel flow runs" (the docs' recipe: list by state name, then set Cancelled with force).
CANCEL = (
    PRELUDE
    + """
async def list_flow_runs_with_states(states: list[str]) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=states))
            )
        )

async def cancel_flow_runs(flow_runs: list[FlowRun]):
    async with get_client() as client:
        for flow_run in flow_runs:
            state = flow_run.state.copy(update={"name": "Cancelled", "type": StateType.CANCELLED})
            await client.set_flow_run_state(flow_run.id, state, force=True)

async def main():
    done = 0
    while True:
        runs = await list_flow_runs_with_states(["Late"])
        if not runs:
            break
        await cancel_flow_runs(runs)
        done += len(runs)
    print(json.dumps({"done": done}))

asyncio.run(main())
"""
)

# Deleting history: the docs' pagination pattern, then delete_flow_run one by one.
DELETE = (
    PRELUDE
    + """
async def main():
    flow_name = sys.argv[1]
    done = 0
    async with get_client() as client:
        while True:
            page = await client.read_flow_runs(
                flow_filter=FlowFilter(name={"any_": [flow_name]}),
                flow_run_filter=FlowRunFilter(state={"type": {"any_": ["COMPLETED"]}}),
                limit=200,
            )
            if not page:
                break
            for run in page:
                await client.delete_flow_run(flow_run_id=run.id)
            done += len(page)
    print(json.dumps({"done": done}))

asyncio.run(main())
"""
)

# Reading every run a selection matches: the docs' pagination recipe (limit/offset).
READ = (
    PRELUDE
    + """
async def read_all(flow_name: str, page_size: int = 200):
    found = []
    offset = 0
    async with get_client() as client:
        while True:
            page = await client.read_flow_runs(
                flow_filter=FlowFilter(name={"any_": [flow_name]}),
                limit=page_size,
                offset=offset,
            )
            if not page:
                break
            found.extend(page)
            if len(page) < page_size:
                break
            offset += page_size
    return found

print(json.dumps({"done": len(asyncio.run(read_all(sys.argv[1])))}))
"""
)

SCRIPTS = {
    "reschedule": RESCHEDULE,
    "recreate": RESCHEDULE,
    "cancel": CANCEL,
    "delete": DELETE,
    "plan": READ,
}
