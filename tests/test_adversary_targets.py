"""Adversarial review of steps with a target (deployments, work pools, work queues): each test
asserts what runner promises (nothing outside the reviewed plan changes; nothing changes
unless it is in the state the reviewer saw; a saved plan is checked field by field), on a real
server. A test that fails shows a hole; see the report of the adversarial review."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from runner.client import PrefectClient
from runner.errors import PlanFileError
from runner.executor import ApplyResult, Executor
from runner.journal import Journal, read_journal
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import Plan
from runner.planfile import plan_from_json, plan_to_json
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.retry import BUSY_SERVER
from tests.support.seed import Seeder, unique

SCHEDULES = [{"schedule": {"interval": 3600}, "active": True}]


async def _plan(settings: ConnectionSettings, text: str) -> Plan:
    async with PrefectClient(settings) as client:
        return await plan_playbook(load_text(text, env={}), client)


async def _execute(settings: ConnectionSettings, plan: Plan, journal_path: Path) -> ApplyResult:
    previous = read_journal(journal_path, plan_id=plan.id) if journal_path.exists() else None
    retry = BUSY_SERVER
    async with PrefectClient(settings, retry=retry) as client:
        with Journal(journal_path, plan_id=plan.id, plan_checksum="test") as journal:
            return await Executor(client, plan, journal, previous=previous, retry=retry).run()


def _deployment(seeder: Seeder, deployment_id: str) -> dict[str, Any]:
    return dict(seeder._call("GET", f"deployments/{deployment_id}"))


def _pool(seeder: Seeder, name: str) -> dict[str, Any]:
    return dict(seeder._call("GET", f"work_pools/{quote(name, safe='')}"))


# -- names the server and fnmatch read differently ----------------------------------------


@pytest.mark.anyio
async def test_a_literal_name_with_brackets_selects_that_object_not_a_lookalike(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    """A pool named ``<base>[1]`` (Prefect takes brackets in a pool's name) and its lookalike
    ``<base>1``: ``names: ["<base>[1]"]`` is read as a glob, so the plan pauses the lookalike,
    and the pool the playbook names is not selected and its name never checked."""
    base = unique("br")
    literal = seeder.work_pool(f"{base}[1]")["name"]
    lookalike = seeder.work_pool(f"{base}1")["name"]
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: pause one pool
    target: work_pools
    select: {{names: ["{literal}"]}}
    action: pause
""",
    )
    names = [c.object.name for c in plan.pending_objects]
    assert lookalike not in names
    assert names == [literal]


# -- an object changed between plan and apply ---------------------------------------------


@pytest.mark.prefect2
@pytest.mark.anyio
async def test_a_schedule_edited_in_place_after_the_plan_is_drift(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The reviewer saw a paused deployment with one schedule, every 3600s, and approved its
    resume. After the plan someone edits that schedule in place (same id, same ``active``) to
    every 5s: the resume must not bring back a deployment that now runs every 5 seconds."""
    pool = seeder.work_pool()["name"]
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES, paused=True)
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: resume
    target: deployments
    select: {{work_pools: {pool}}}
    action: resume
""",
    )
    (change,) = plan.pending_objects
    assert [s.schedule for s in change.object.schedules] == ["every 3600s"]
    (schedule,) = _deployment(seeder, dep["id"])["schedules"]
    seeder._call(
        "PATCH",
        f"deployments/{dep['id']}/schedules/{schedule['id']}",
        json={"schedule": {"interval": 5}},
    )
    assert _deployment(seeder, dep["id"])["schedules"][0]["id"] == schedule["id"]
    result = await _execute(settings, plan, tmp_path / "checkpoint.jsonl")
    outcome = result.outcomes[change.key]
    assert (outcome.status, outcome.detail) == (
        "drifted",
        "its schedules changed since the plan",
    )
    assert _deployment(seeder, dep["id"])["paused"] is True


@pytest.mark.anyio
async def test_a_pool_deleted_and_made_anew_under_its_name_is_left_alone(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """Regression (held): a pool is read and written by name; one made anew under the name
    after the plan is not the one the reviewer saw."""
    name = seeder.work_pool()["name"]
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: pause the pool
    target: work_pools
    select: {{names: {name}}}
    action: pause
""",
    )
    seeder._call("DELETE", f"work_pools/{name}")
    seeder.work_pool(name)
    result = await _execute(settings, plan, tmp_path / "checkpoint.jsonl")
    ((_, outcome),) = result.outcomes.items()
    assert (outcome.status, outcome.detail) == ("drifted", "the work pool is gone since the plan")
    assert _pool(seeder, name)["is_paused"] is False


@pytest.mark.anyio
async def test_a_deployment_moved_to_another_pool_or_retagged_is_left_alone(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """Regression (held): moved to another pool, or its tags changed, after the plan."""
    pool, other = seeder.work_pool()["name"], seeder.work_pool()["name"]
    flow = seeder.flow()
    moved = seeder.deployment(flow, work_pool=pool)
    tagged = seeder.deployment(flow, work_pool=pool, tags=["a"])
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: pause
    target: deployments
    select: {{work_pools: {pool}}}
    action: pause
""",
    )
    seeder._call("PATCH", f"deployments/{moved['id']}", json={"work_pool_name": other})
    seeder._call("PATCH", f"deployments/{tagged['id']}", json={"tags": ["a", "keep-paused"]})
    result = await _execute(settings, plan, tmp_path / "checkpoint.jsonl")
    statuses = {o.change.run.id: o.status for o in result.outcomes.values()}
    assert set(statuses.values()) == {"drifted"}
    assert _deployment(seeder, moved["id"])["paused"] is False
    assert _deployment(seeder, tagged["id"])["paused"] is False


# -- a saved plan edited by hand, its checksum recomputed ---------------------------------


def _resign(data: dict[str, Any]) -> dict[str, Any]:
    from runner.planfile import _checksum

    body = {k: v for k, v in data.items() if k != "checksum"}
    return {**body, "checksum": _checksum(body)}


@pytest.mark.anyio
async def test_a_saved_plan_with_one_object_in_two_steps_is_refused(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The planner never puts an object in two steps (an earlier step claims it). A plan edited
    so that queue q1 is paused by step 1 and resumed by step 2 (step 2's copy claiming q1 was
    paused, which no read ever saw) is read without complaint, and its apply pauses q1 and then
    resumes it."""
    pool = seeder.work_pool()["name"]
    q1 = seeder.work_queue(pool, unique("q1"))
    q2 = seeder.work_queue(pool, unique("q2"))
    seeder._call("PATCH", f"work_queues/{q2['id']}", json={"is_paused": True})
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: pause q1
    target: work_queues
    select: {{names: {q1["name"]}}}
    action: pause
  - name: resume q2
    target: work_queues
    select: {{names: {q2["name"]}}}
    action: resume
""",
    )
    data = json.loads(json.dumps(plan_to_json(plan)))
    change = data["steps"][1]["changes"][0]
    change["object"]["id"] = q1["id"]
    change["object"]["name"] = q1["name"]
    change["key"] = f"1:{q1['id']}"
    with pytest.raises(PlanFileError) as info:
        plan_from_json(_resign(data))
    assert q1["name"] in str(info.value)


# -- a retried write ----------------------------------------------------------------------


class ChangedWhileFailing(httpx.AsyncBaseTransport):
    """In front of the real server: the first PATCH answers 503 and is not forwarded, and
    while it fails someone else changes the object (``meanwhile``): what a busy server and an
    operator at the UI do together. Every PATCH that reaches the server is counted."""

    def __init__(self, meanwhile: Any) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.meanwhile = meanwhile
        self.failed = False
        self.forwarded: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            if not self.failed:
                self.failed = True
                self.meanwhile()
                return httpx.Response(503, json={"detail": "busy"}, request=request)
            self.forwarded.append(request.url.path)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.prefect2
@pytest.mark.anyio
async def test_a_retried_pause_reads_the_object_again_before_resending(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """runner reads the deployment, sends its PATCH; the server answers 503; an operator moves
    the deployment to another pool; runner's retry (after its backoff, seconds in a real
    apply) resends the PATCH without reading the deployment again, and pauses a deployment
    that is no longer what the plan saw. The window the docs promise ("a few milliseconds")
    becomes the whole retry backoff."""
    pool, other = seeder.work_pool()["name"], seeder.work_pool()["name"]
    dep = seeder.deployment(seeder.flow(), work_pool=pool)
    plan = await _plan(
        settings,
        f"""
version: 1
defaults: {{retry: {{max_attempts: 2, backoff: 0s, max_backoff: 0s}}}}
steps:
  - name: pause
    target: deployments
    select: {{work_pools: {pool}}}
    action: pause
""",
    )
    (change,) = plan.pending_objects
    transport = ChangedWhileFailing(
        lambda: seeder._call("PATCH", f"deployments/{dep['id']}", json={"work_pool_name": other})
    )
    previous = None
    journal_path = tmp_path / "checkpoint.jsonl"
    async with PrefectClient(settings, transport=transport) as client:
        with Journal(journal_path, plan_id=plan.id, plan_checksum="test") as journal:
            result = await Executor(client, plan, journal, previous=previous).run()
    assert _deployment(seeder, dep["id"])["paused"] is False
    assert transport.forwarded == []
    assert result.outcomes[change.key].status == "drifted"


# -- what an unattended apply may do -------------------------------------------------------


def test_an_unattended_apply_without_yes_does_not_pause_a_pool(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """Without a terminal and without --yes runner refuses deletes, cancels and state changes
    of runs, but pauses a production work pool (or resumes deployments) with no one having
    seen the plan: ``is_destructive`` looks at runs' changes only."""
    pool = seeder.work_pool()["name"]
    playbook = tmp_path / "pause.yaml"
    playbook.write_text(
        f"""version: 1
steps:
  - name: pause the pool
    target: work_pools
    select: {{names: {pool}}}
    action: pause
"""
    )
    applied = run_cli("apply", str(playbook), "--state-dir", str(tmp_path), api_url=api_url)
    assert applied.returncode != 0
    assert applied.stderr.endswith(
        "runner: not a terminal: pass --yes to apply changes that pause or resume deployments,"
        " work pools or work queues\n"
    ), applied.stderr
    assert _pool(seeder, pool)["is_paused"] is False


# -- what the server does beside the write ------------------------------------------------


def _runs_of(seeder: Seeder, deployment_id: str) -> list[str]:
    runs = seeder._call(
        "POST", "flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}}
    )
    return sorted(str(r["id"]) for r in runs)


def _auto_scheduled(seeder: Seeder, deployment_id: str) -> list[str]:
    runs = seeder._call(
        "POST", "flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}}
    )
    return sorted(str(r["id"]) for r in runs if r.get("auto_scheduled"))


@pytest.mark.prefect2
@pytest.mark.anyio
async def test_pausing_a_deployment_lists_archives_and_reports_the_runs_the_server_deletes(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """On 3.9.1 and 2.20 alike the server deletes a deployment's auto-scheduled runs when its
    ``paused`` is set. (Changed from the adversary's "runs already scheduled stay": the docs
    now say what the server does.) The plan lists them under the deployment and counts them
    against max_affected; the apply archives them before the write and reports them; a run
    made by hand stays."""
    pool = seeder.work_pool()["name"]
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES)
    seeder.schedule_runs(dep)
    by_hand = seeder.run(flow, "Scheduled", deployment=dep)  # not by the scheduler
    auto = _auto_scheduled(seeder, dep["id"])
    assert len(auto) >= 2
    text = f"""
version: 1
steps:
  - name: pause
    target: deployments
    select: {{work_pools: {pool}}}
    action: pause
"""
    plan = await _plan(settings, text)
    (change,) = plan.pending_objects
    assert sorted(str(r.id) for r in change.object.scheduled_runs) == auto
    assert str(by_hand["id"]) not in {str(r.id) for r in change.object.scheduled_runs}
    assert not plan.pending  # the plan changes no run itself
    assert plan_from_json(json.loads(json.dumps(plan_to_json(plan)))).pending_objects == (change,)
    guarded = await _plan(
        settings, text.replace("action: pause", "action: pause\n    guards: {max_affected: 2}")
    )
    assert guarded.violations == (
        f"step 1 ('pause') would pause 1 deployment (and the server deletes"
        f" {len(auto)} scheduled runs), more than its max_affected (2)",
    )
    result = await _execute(settings, plan, tmp_path / "checkpoint.jsonl")
    outcome = result.outcomes[change.key]
    names = ", ".join(sorted(r.name for r in change.object.scheduled_runs))
    assert (outcome.status, outcome.detail) == (
        "done",
        f"paused (was active); the server deleted its {len(auto)} scheduled runs: {names}",
    )
    # The runs the server deleted are gone; the run made by hand stays. Prefect 2.x's scheduler
    # loop, having read the deployment before the pause, can make its runs anew just after it
    # (seen in a fresh-clone CI): new runs, the server's own, after runner's write.
    left = _runs_of(seeder, dep["id"])
    assert str(by_hand["id"]) in left and not set(auto) & set(left)
    assert set(left) - {str(by_hand["id"])} <= set(_auto_scheduled(seeder, dep["id"]))
    assert result.archive is not None
    from runner.archive import read_archive

    archived = [
        r["run"]["id"] for b in read_archive(result.archive.path).batches() for r in b.records
    ]
    assert sorted(archived) == auto


@pytest.mark.prefect2
@pytest.mark.anyio
async def test_a_scheduled_run_made_after_the_plan_leaves_the_deployment_alone(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The scheduler made a run after the plan: the pause would have the server delete a run
    the reviewer never saw listed, so the deployment is drifted and nothing is deleted."""
    pool = seeder.work_pool()["name"]
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES)
    # The scheduler's own 3 (its min_runs): the same runs whether or not it ran meanwhile.
    seeder.schedule_runs(dep)
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: pause
    target: deployments
    select: {{work_pools: {pool}}}
    action: pause
""",
    )
    (change,) = plan.pending_objects
    planned = {str(r.id) for r in change.object.scheduled_runs}
    assert len(planned) == 3
    seeder.schedule_runs(dep, max_runs=4, min_runs=4)
    before = _runs_of(seeder, dep["id"])
    assert len(before) == 4
    (made,) = [
        r
        for r in seeder._call(
            "POST", "flow_runs/filter", json={"flow_runs": {"id": {"any_": before}}}
        )
        if r["id"] not in planned
    ]
    result = await _execute(settings, plan, tmp_path / "checkpoint.jsonl")
    outcome = result.outcomes[change.key]
    assert (outcome.status, outcome.detail) == (
        "drifted",
        "the server would also delete 1 scheduled run the plan did not list (made since the"
        f" plan): {made['name']}",
    )
    assert _deployment(seeder, dep["id"])["paused"] is False
    assert _runs_of(seeder, dep["id"]) == before


# -- attacks that held (kept as cheap regression tests) -----------------------------------


class CountPatches(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.patches: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            self.patches.append(request.url.path)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_a_plan_applied_twice_from_two_state_dirs_sends_nothing_the_second_time(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """Held: the second apply (its own checkpoint) finds every object already as the change
    would make it, sends nothing and claims nothing as done. Also held: a pool name with a
    space, ``#``, ``+`` and ``é`` is read and written by its quoted name."""
    pool = seeder.work_pool(unique("sp ace#é+x"))["name"]
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES)
    # The scheduler's own 3 runs, made now: none appears between the plan and the apply.
    seeder.schedule_runs(dep)
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: pause the pool
    target: work_pools
    select: {{names: ["{pool}"]}}
    action: pause
  - name: pause its deployments
    target: deployments
    select: {{work_pools: ["{pool}"]}}
    action: pause
""",
    )
    assert len(plan.pending_objects) == 2
    first = await _execute(settings, plan, tmp_path / "a.jsonl")
    assert first.count("done") == 2
    counting = CountPatches()
    retry = BUSY_SERVER
    async with PrefectClient(settings, transport=counting, retry=retry) as client:
        with Journal(tmp_path / "b.jsonl", plan_id=plan.id, plan_checksum="test") as journal:
            second = await Executor(client, plan, journal, retry=retry).run()
    assert counting.patches == []
    assert second.count("drifted") == 2 and second.count("done") == 0
    assert _pool(seeder, pool)["is_paused"] is True
    assert _deployment(seeder, dep["id"])["paused"] is True


@pytest.mark.prefect2
@pytest.mark.anyio
async def test_a_schedule_added_or_the_deployment_made_anew_is_left_alone(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """Held: a schedule added after the plan, and a deployment deleted and made again under
    the same flow and name (a new id), are drift; nothing is written to either."""
    pool = seeder.work_pool()["name"]
    flow = seeder.flow()
    added = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES)
    remade = seeder.deployment(flow, work_pool=pool)
    plan = await _plan(
        settings,
        f"""
version: 1
steps:
  - name: pause
    target: deployments
    select: {{work_pools: {pool}}}
    action: pause
""",
    )
    seeder._call(
        "POST",
        f"deployments/{added['id']}/schedules",
        json=[{"schedule": {"interval": 60}, "active": True}],
    )
    seeder._call("DELETE", f"deployments/{remade['id']}")
    again = seeder.deployment(flow, remade["name"], work_pool=pool)
    result = await _execute(settings, plan, tmp_path / "checkpoint.jsonl")
    details = sorted((o.status, o.detail) for o in result.outcomes.values())
    assert details == [
        ("drifted", "its schedules changed since the plan"),
        ("drifted", "the deployment is gone since the plan"),
    ]
    assert _deployment(seeder, added["id"])["paused"] is False
    assert _deployment(seeder, again["id"])["paused"] is False


def test_a_drifted_object_name_is_escaped_in_the_apply_summary(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """The plan's table escapes control characters in a name (render._printable); the apply
    summary's drifted / failed lines print the object's name and the drift detail raw, so a
    work queue named with an escape sequence rewrites the operator's terminal."""
    pool = seeder.work_pool()["name"]
    queue = seeder.work_queue(pool, unique("q") + "\x1b[2K\x1b[1Ainjected")
    playbook = tmp_path / "pause.yaml"
    playbook.write_text(
        f"""version: 1
steps:
  - name: pause queues
    target: work_queues
    select: {{work_pools: {pool}, exclude: [default]}}
    action: pause
"""
    )
    saved = tmp_path / "plan.json"
    planned = run_cli("plan", str(playbook), "-o", str(saved), api_url=api_url)
    assert planned.returncode == 0, planned.stderr
    assert "\x1b" not in planned.stdout
    seeder._call("PATCH", f"work_queues/{queue['id']}", json={"is_paused": True})
    state = str(tmp_path / "state")
    applied = run_cli("apply", str(saved), "--yes", "--state-dir", state, api_url=api_url)
    assert "drifted: " in applied.stdout, applied.stdout + applied.stderr
    assert "\x1b" not in applied.stdout
