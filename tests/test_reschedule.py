"""Rescheduling on a real server: what a delay counts from, `from: now`, `spread`, targets in
the past (refused unless allowed), and what a recreate carries to the new run (issue 19)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from runner.client import PrefectClient, ProposedState
from runner.executor import ApplyResult, Executor
from runner.journal import Journal
from runner.loader import load_text
from runner.models import StateType
from runner.observe import plan_playbook
from runner.plan import Plan
from runner.render import to_text
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.seed import Seeder, utcnow

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]


def playbook(flow: dict[str, Any], action: str, sort: str = "") -> Any:
    select = f"{{flows: {flow['name']}{', sort: ' + sort if sort else ''}}}"
    text = (
        f"version: 1\nname: t\nsteps:\n  - name: push\n    select: {select}\n    action: {action}\n"
    )
    return load_text(text, env={})


async def plan_for(settings: ConnectionSettings, book: Any) -> Plan:
    async with PrefectClient(settings, bulk=False) as client:
        return await plan_playbook(book, client)


async def execute(settings: ConnectionSettings, plan: Plan, journal: Path) -> ApplyResult:
    async with PrefectClient(settings) as client:
        with Journal(journal, plan_id=plan.id, plan_checksum="test") as j:
            result = await Executor(client, plan, j).run()
    assert result.complete, [o.detail for o in result.failed]
    return result


def scheduled_at(seeder: Seeder, run_id: str) -> datetime:
    run = seeder.read_run(run_id)
    assert run is not None and run["state_type"] == "SCHEDULED", run
    return datetime.fromisoformat(run["state"]["state_details"]["scheduled_time"])


def close(a: datetime, b: datetime) -> bool:
    return abs((a - b).total_seconds()) < 1


def hms(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z"


async def test_a_delay_counts_from_the_time_a_rescheduled_run_has_now(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The bug: a run already rescheduled in place to tomorrow, given `delay: 1h`, landed an
    hour after its first expected start (today, in the past), not tomorrow + 1h."""
    flow = seeder.flow()
    run = seeder.run(flow, "Late", scheduled=utcnow() - timedelta(hours=5))
    tomorrow = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    async with PrefectClient(settings) as client:
        moved = await client.set_flow_run_state(
            UUID(run["id"]),
            ProposedState(StateType.SCHEDULED, "Scheduled", scheduled_time=tomorrow),
        )
    assert moved.accepted
    plan = await plan_for(settings, playbook(flow, "{reschedule: {delay: 1h}}"))
    await execute(settings, plan, tmp_path / "j")
    assert close(scheduled_at(seeder, run["id"]), tomorrow + timedelta(hours=1))
    # The diff shows the time the run has now, and how far it moves from there.
    [change] = plan.pending
    assert change.run.expected_start is not None and change.run.expected_start < utcnow()
    assert (
        f"  Scheduled at {hms(tomorrow)}  {hms(change.run.expected_start)}  -> Scheduled at"
        f" {hms(tomorrow + timedelta(hours=1))} (+1h)\n"
    ) in to_text(plan)
    # Prefect keeps the state's time in next_scheduled_start_time: the plan needs no copy.
    assert change.run.next_scheduled_start == tomorrow and change.run.state_scheduled_time is None


async def test_from_now_counts_the_delay_from_when_the_plan_is_made(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    run = seeder.run(flow, "Late", scheduled=utcnow() - timedelta(hours=2))
    plan = await plan_for(settings, playbook(flow, "{reschedule: {delay: 45m, from: now}}"))
    assert plan.violations == ()
    await execute(settings, plan, tmp_path / "j")
    assert close(scheduled_at(seeder, run["id"]), plan.created_at + timedelta(minutes=45))


async def test_spread_staggers_the_runs_in_the_steps_order(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    base = utcnow() - timedelta(hours=1)
    oldest, middle, newest = (
        seeder.run(flow, "Late", scheduled=base - timedelta(hours=i)) for i in (3, 2, 1)
    )
    plan = await plan_for(
        settings,
        playbook(flow, "{reschedule: {at: now+1h, spread: 2m}}", sort="EXPECTED_START_TIME_DESC"),
    )
    target = plan.created_at + timedelta(hours=1)
    await execute(settings, plan, tmp_path / "j")
    got = [scheduled_at(seeder, r["id"]) for r in (newest, middle, oldest)]
    want = [target + timedelta(minutes=m) for m in (0, 2, 4)]
    assert all(close(g, w) for g, w in zip(got, want, strict=True)), (got, want)


def test_a_time_in_the_past_is_refused_unless_allowed(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """A run 2h late given `delay: 45m` would land in the past, and start at once: the plan
    is refused and nothing is sent; `allow_past: true` lets it through."""
    flow = seeder.flow()
    when = (utcnow() - timedelta(hours=2)).replace(microsecond=0)
    run = seeder.run(flow, "Late", scheduled=when)
    before = seeder.read_run(run["id"]) or {}
    path = tmp_path / "p.yaml"
    step = f"  - name: push\n    select: {{flows: {flow['name']}}}\n    action:\n"
    path.write_text(f"version: 1\nsteps:\n{step}      reschedule: {{delay: 45m}}\n")
    state = str(tmp_path / "state")
    refused = run_cli("apply", str(path), "--yes", "--state-dir", state, api_url=api_url)
    assert refused.returncode == 1, refused.stderr
    made = refused.stdout.split(", made ", 1)[1].split("\n", 1)[0]
    assert (
        f"Refused: step 1 ('push') would schedule 1 runs in the past (earliest"
        f" {hms(when + timedelta(minutes=45))}; the plan was made at {made}), so they would"
        " start at once; count the delay from now (from: now), or set allow_past: true\n"
    ) in refused.stdout
    assert f"Late at {hms(when)}" in refused.stdout
    after = seeder.read_run(run["id"]) or {}
    assert (after["state"]["id"], after["updated"]) == (before["state"]["id"], before["updated"])
    assert not Path(state).exists()

    path.write_text(
        f"version: 1\nsteps:\n{step}      reschedule: {{delay: 45m, allow_past: true}}\n"
    )
    allowed = run_cli("apply", str(path), "--yes", "--state-dir", state, api_url=api_url)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert close(scheduled_at(seeder, run["id"]), when + timedelta(minutes=45))


async def test_recreate_carries_what_a_new_run_can_take(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    """The bug: a Late run in queue `critical` with job variables and a name of its own was
    recreated in the deployment's default queue, without job variables, under a new name."""
    flow = seeder.flow()
    pool = seeder.work_pool()["name"]
    seeder.work_queue(pool, "critical")
    dep = seeder.deployment(
        flow, work_pool=pool, tags=["nightly"], parameters={"region": "us", "n": 1}
    )
    old = seeder.run(
        flow,
        "Late",
        deployment=dep,
        name="backfill-eu-7",
        tags=["eu"],
        parameters={"region": "eu"},
        work_queue="critical",
        job_variables={"env": {"REGION": "eu"}},
    )
    assert old["work_queue_name"] == "critical"
    plan = await plan_for(settings, playbook(flow, "{reschedule: {delay: 6h, strategy: recreate}}"))
    result = await execute(settings, plan, tmp_path / "j")
    [outcome] = result.outcomes.values()
    assert outcome.new_run_id is not None and outcome.new_run_id != old["id"]
    assert seeder.read_run(old["id"]) is None
    new = seeder.read_run(outcome.new_run_id)
    assert new is not None
    assert new["name"] == "backfill-eu-7"
    assert new["parameters"] == {"region": "eu", "n": 1}
    assert sorted(new["tags"]) == ["eu", "nightly"]
    assert new["work_queue_name"] == "critical"
    assert new["work_pool_name"] == pool
    assert new["job_variables"] == {"env": {"REGION": "eu"}}
    assert new["deployment_id"] == dep["id"]
    # The plan lists what it carries.
    [change] = plan.pending
    assert change.carry == ("name", "parameters", "tags", "job_variables", "work_queue")
    assert (
        "  New runs carry the old runs' name, parameters, tags, job variables, work queue; not"
        " their id, state history, logs, task runs or artifacts.\n"
    ) in to_text(plan)
    was = change.run.scheduled_time
    assert was is not None
    assert close(scheduled_at(seeder, new["id"]), was + timedelta(hours=6))


@pytest.mark.parametrize("field", ["parameters", "job_variables"])
async def test_a_recreate_is_left_alone_when_what_it_carries_changed(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, field: str
) -> None:
    """The new run is made with what the plan saw: a run edited since the plan is drifted,
    not recreated with the old values (which would undo the edit)."""
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=seeder.work_pool()["name"])
    old = seeder.run(flow, "Late", deployment=dep, parameters={"n": 1}, job_variables={"a": 1})
    plan = await plan_for(settings, playbook(flow, "{reschedule: {delay: 6h, strategy: recreate}}"))
    seeder._call("PATCH", f"flow_runs/{old['id']}", json={field: {"n": 2, "a": 2}})
    async with PrefectClient(settings) as client:
        with Journal(tmp_path / "j", plan_id=plan.id, plan_checksum="test") as j:
            result = await Executor(client, plan, j).run()
    [outcome] = result.outcomes.values()
    what = field.replace("_", " ")
    assert (outcome.status, outcome.detail) == ("drifted", f"its {what} changed since the plan")
    assert [r["id"] for r in seeder.runs_of_flow(flow)] == [old["id"]]
