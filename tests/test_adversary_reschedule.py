"""Adversary (19b): findings against 08c63c1 (reschedule: delay from the current scheduled
time, from: now, spread, allow_past; recreate carries name, parameters, tags, job variables
and work queue). Each test fails against 08c63c1; runner's code is left as it was."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from runner.client import PrefectClient
from runner.executor import ApplyResult, Executor, _proposed
from runner.journal import Journal
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import Observation, Plan, RunView, StepObservation
from runner.planfile import _checksum, plan_from_json, plan_to_json
from runner.planner import make_plan
from runner.render import to_text
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.seed import Seeder, utcnow

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]


def book(select: str, action: str) -> Any:
    text = (
        "version: 1\nname: adv\nsteps:\n  - name: push\n"
        f"    select: {select}\n    action: {action}\n"
    )
    return load_text(text, env={})


async def plan_for(settings: ConnectionSettings, playbook: Any, **kw: Any) -> Plan:
    async with PrefectClient(settings, bulk=False) as client:
        return await plan_playbook(playbook, client, **kw)


async def execute(settings: ConnectionSettings, plan: Plan, journal: Path) -> ApplyResult:
    async with PrefectClient(settings) as client:
        with Journal(journal, plan_id=plan.id, plan_checksum="test") as j:
            return await Executor(client, plan, j).run()


def scheduled_at(run: dict[str, Any]) -> datetime:
    assert run["state_type"] == "SCHEDULED", run
    return datetime.fromisoformat(run["state"]["state_details"]["scheduled_time"])


def close(a: datetime, b: datetime) -> bool:
    return abs((a - b).total_seconds()) < 1


# -- 1. a recreate that converges on an earlier plan's new run --------------------------------


async def test_a_recreate_converging_on_an_earlier_new_run_ends_at_this_plans_time(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """An apply of `at: now+10m` made the new run and died before deleting the old one. Two
    hours later the same playbook is planned anew (as `runner apply` does by itself once the
    unfinished plan is older than --max-plan-age): the plan says "new run, Scheduled at
    now+10m" and passes the past guard. The create carries the same idempotency key (old run
    id + state id), so Prefect returns the run the first apply made, still at *its* time, two
    hours in the past: it starts at once. runner deletes the old run and reports "done,
    recreated as <that run>", although the run is not where the reviewed plan put it."""
    flow = seeder.flow()
    dep = seeder.deployment(flow)
    seeder.run(flow, "Late", deployment=dep, scheduled=utcnow() - timedelta(hours=3))
    playbook = book(
        f"{{flows: {flow['name']}, state: {{type: SCHEDULED}}}}",
        "{reschedule: {at: now+10m, strategy: recreate}}",
    )
    first = await plan_for(settings, playbook, now=utcnow() - timedelta(hours=2))
    assert first.violations == ()
    [change] = first.pending
    assert change.state is not None and change.run.deployment_id is not None
    async with PrefectClient(settings) as client:  # the first half of the first apply
        made = await client.create_flow_run_from_deployment(
            change.run.deployment_id,
            state=_proposed(change.state),
            parameters=change.run.parameters,
            tags=change.tags,
            idempotency_key=change.idempotency_key,
            name=change.run.name,
            job_variables=change.run.job_variables,
        )

    fresh = await plan_for(settings, playbook)
    # The reviewed plan itself says it: the old run's recreate finishes with the run the
    # earlier apply made, at that run's time, which is in the past: the plan is refused.
    [change] = [c for c in fresh.changes if c.run.id != made.id]
    assert change.op == "recreate" and change.state is not None
    assert change.state.scheduled_time == scheduled_at(seeder.read_run(str(made.id)) or {})
    assert len(fresh.violations) == 1
    assert "would schedule 1 runs in the past" in fresh.violations[0]
    assert len(seeder.runs_of_flow(flow)) == 2  # nothing sent


async def test_a_create_returning_an_earlier_new_run_elsewhere_is_not_done(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The executor's own check, where the plan could not see the earlier new run (its
    selection leaves it out): the create returns it, elsewhere than the plan says; the
    change fails with the reason and the old run is not deleted."""
    flow = seeder.flow()
    dep = seeder.deployment(flow)
    old = seeder.run(flow, "Late", deployment=dep, scheduled=utcnow() - timedelta(hours=3))
    cut = (utcnow() - timedelta(minutes=150)).isoformat()
    playbook = book(
        f"{{flows: {flow['name']}, state: {{type: SCHEDULED}}, expected_start: {{before: '{cut}'}}}}",
        "{reschedule: {at: now+10m, strategy: recreate}}",
    )
    first = await plan_for(settings, playbook, now=utcnow() - timedelta(hours=2))
    [change] = first.pending
    assert change.state is not None and change.run.deployment_id is not None
    async with PrefectClient(settings) as client:
        made = await client.create_flow_run_from_deployment(
            change.run.deployment_id,
            state=_proposed(change.state),
            idempotency_key=change.idempotency_key,
            name=change.run.name,
        )
    fresh = await plan_for(settings, playbook)
    assert made.id not in {c.run.id for c in fresh.changes}  # out of the selection
    result = await execute(settings, fresh, tmp_path / "j")
    [outcome] = result.outcomes.values()
    assert outcome.status == "failed"
    assert (outcome.detail or "").startswith(
        f"Prefect returned run {made.name} ({made.id}), made for this change by an earlier"
        " apply and scheduled at "
    )
    assert {r["id"] for r in seeder.runs_of_flow(flow)} == {old["id"], str(made.id)}


# -- 2. a reviewed plan applied after its target time ----------------------------------------


def test_a_saved_plan_applied_after_its_target_time_does_not_schedule_into_the_past(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """`at: now+5s` passes the past guard when planned; the saved plan is applied a few
    seconds later, well inside the default --max-plan-age (1h): the run is written to a time
    already past and starts at once, with no refusal and no word of it. (The same holds for
    `--resume`, for the confirm prompt left open, and for the runner[prefect] flow, which
    resumes unfinished plans of any age: max_plan_age=None.)"""
    flow = seeder.flow()
    run = seeder.run(flow, "Late", scheduled=utcnow() - timedelta(hours=2))
    before = seeder.read_run(run["id"]) or {}
    path = tmp_path / "p.yaml"
    path.write_text(
        f"version: 1\nsteps:\n  - name: push\n    select: {{flows: {flow['name']}}}\n"
        "    action: {reschedule: {at: now+5s}}\n"
    )
    saved = tmp_path / "plan.json"
    planned = run_cli("plan", str(path), "-o", str(saved), api_url=api_url)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    time.sleep(7)
    started = utcnow()
    applied = run_cli(
        "apply", str(saved), "--yes", "--state-dir", str(tmp_path / "s"), api_url=api_url
    )
    after = seeder.read_run(run["id"]) or {}
    moved = after["state"]["id"] != before["state"]["id"]
    assert not moved or scheduled_at(after) >= started, (
        f"apply exited {applied.returncode} and wrote {scheduled_at(after)}, before the apply"
        f" started ({started}):\n{applied.stdout}{applied.stderr}"
    )


# -- 3. the work queue is carried by name into the deployment's current pool ----------------


async def test_a_recreate_does_not_make_a_work_queue_or_move_the_run_to_another_pool(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The plan saw the run in pool A, queue `critical`, and says its new run carries the
    work queue. The deployment is moved to pool B (before or after the plan: the old run
    does not change, so nothing drifts). The create sends work_queue_name=critical; the
    server looks it up in the deployment's pool B and *creates* it there: a work queue no
    plan mentions appears in pool B, and the new run lands in pool B, not where the plan
    showed the run."""
    flow = seeder.flow()
    pool_a, pool_b = seeder.work_pool()["name"], seeder.work_pool()["name"]
    seeder.work_queue(pool_a, "critical")
    dep = seeder.deployment(flow, work_pool=pool_a)
    seeder.run(flow, "Late", deployment=dep, work_queue="critical")
    plan = await plan_for(
        settings,
        book(f"{{flows: {flow['name']}}}", "{reschedule: {delay: 6h, strategy: recreate}}"),
    )
    [change] = plan.pending
    assert change.carry is not None and "work_queue" in change.carry
    assert (change.run.work_pool, change.run.work_queue) == (pool_a, "critical")
    seeder._call("PATCH", f"deployments/{dep['id']}", json={"work_pool_name": pool_b})
    await execute(settings, plan, tmp_path / "j")
    queues_b = [q["name"] for q in seeder._call("POST", f"work_pools/{pool_b}/queues/filter")]
    pools = sorted({r["work_pool_name"] for r in seeder.runs_of_flow(flow)})
    assert "critical" not in queues_b, queues_b
    assert pools == [pool_a], pools


# -- 4. job variables compared with Python's ==, not as JSON --------------------------------


async def test_a_job_variable_edited_from_1_to_true_is_drift(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """Docs: "a run whose parameters or job variables changed since is left alone as
    drifted (its edit would otherwise be undone)". Parameters are compared as JSON
    (`json_equal`: true != 1); job variables with `!=`, where True == 1: the edit is not seen,
    and the new run is made with the plan's `1`, undoing it."""
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=seeder.work_pool()["name"])
    old = seeder.run(flow, "Late", deployment=dep, job_variables={"stream_output": 1})
    plan = await plan_for(
        settings,
        book(f"{{flows: {flow['name']}}}", "{reschedule: {delay: 6h, strategy: recreate}}"),
    )
    seeder._call("PATCH", f"flow_runs/{old['id']}", json={"job_variables": {"stream_output": True}})
    result = await execute(settings, plan, tmp_path / "j")
    [outcome] = result.outcomes.values()
    assert (outcome.status, outcome.detail) == (
        "drifted",
        "its job variables changed since the plan",
    ), [r["job_variables"] for r in seeder.runs_of_flow(flow)]


# -- 5. spread: a run the step leaves alone takes a place ------------------------------------


async def test_a_run_a_recreate_leaves_alone_takes_no_place_in_the_spread(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    """Docs: "the first run the step can give a new time gets it ... A run the step leaves
    alone takes no place". A Scheduled run without a deployment is left alone by a recreate
    ("not a deployment run"), yet it takes slot 0: the only run recreated goes to t+10m."""
    flow = seeder.flow()
    dep = seeder.deployment(flow)
    base = utcnow() - timedelta(hours=1)
    seeder.run(flow, "Late", scheduled=base - timedelta(hours=2))  # no deployment, oldest
    seeder.run(flow, "Late", deployment=dep, scheduled=base - timedelta(hours=1))
    plan = await plan_for(
        settings,
        book(
            f"{{flows: {flow['name']}}}",
            "{reschedule: {at: now+1h, spread: 10m, strategy: recreate}}",
        ),
    )
    assert [c.reason for c in plan.changes if c.is_noop] == [
        "not a deployment run: nothing to recreate it from"
    ]
    [change] = plan.pending
    assert change.state is not None and change.state.scheduled_time is not None
    assert change.state.scheduled_time - plan.created_at == timedelta(hours=1)


# -- 6. a fixed-time recreate is never done -------------------------------------------------


async def test_planning_again_after_a_fixed_time_recreate_finds_nothing_to_change(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """Docs (spread): "planning again after an apply with a fixed `at` finds nothing to
    change". In place it does (`already scheduled at ...`); with `strategy: recreate` the
    new run, already at that time, is recreated again on every apply (deleted and made
    anew: a playbook applied on a schedule by the runner[prefect] flow churns it forever)."""
    flow = seeder.flow()
    dep = seeder.deployment(flow)
    seeder.run(flow, "Late", deployment=dep)
    playbook = book(
        f"{{flows: {flow['name']}}}",
        "{reschedule: {at: '2031-01-01T00:00:00Z', spread: 2m, strategy: recreate}}",
    )
    first = await plan_for(settings, playbook)
    result = await execute(settings, first, tmp_path / "j")
    assert result.complete
    again = await plan_for(settings, playbook)
    assert [(c.op, c.reason) for c in again.changes if not c.is_noop] == []


# -- 7. the text diff -----------------------------------------------------------------------

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _run(when: datetime, **kw: Any) -> RunView:
    return RunView(
        id=uuid.uuid4(),
        name="r",
        flow="f",
        state_type="SCHEDULED",
        state_name="Scheduled",
        state_id=uuid.uuid4(),
        expected_start=when,
        next_scheduled_start=when,
        deployment_id=uuid.uuid4(),
        deployment="f/d",
        **kw,
    )


def _plan(action: str, *runs: RunView) -> Plan:
    observation = Observation(NOW, "http://x/api", "3.9.1", (StepObservation(tuple(runs)),))
    return make_plan(book("{flows: f}", action), observation, plan_id="p")


def test_the_diff_names_an_unchanged_runs_time_in_utc() -> None:
    """Every time in the diff is UTC (`2030-01-01 01:00:00Z`), but a run already at an `at`
    written with an offset is listed as `already scheduled at 2030-01-01T03:00:00+02:00`."""
    plan = _plan("{reschedule: {at: '2030-01-01T03:00:00+02:00'}}", _run(NOW + timedelta(hours=1)))
    text = to_text(plan)
    assert "+02:00" not in text, text


def test_a_recreate_that_carries_nothing_says_so() -> None:
    """A plan whose recreates carry nothing (`carry: []`, a valid document) is shown as
    "New runs carry the old runs' ; not their id, ...": the reviewer is not told the new
    run gets none of the old run's name, parameters or tags."""
    plan = _plan("{reschedule: {delay: 1h, strategy: recreate}}", _run(NOW, parameters={}))
    data = plan_to_json(plan)
    data["steps"][0]["changes"][0]["carry"] = []
    data["checksum"] = _checksum({k: v for k, v in data.items() if k != "checksum"})
    text = to_text(plan_from_json(data))
    assert "carry the old runs' ;" not in text, text
