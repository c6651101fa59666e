"""Steps on deployments, work pools and work queues, on a real server: the incident example
playbooks end to end, drift by what the plan saw, guards, a resumed partial apply, names
checked, and a server without a paused flag refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from runner.client import PrefectClient
from runner.errors import PlaybookError, SelectionError
from runner.executor import ApplyResult, Executor
from runner.journal import Journal, read_journal
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import Plan
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.retry import BUSY_SERVER
from tests.support.seed import Seeder, unique

ROOT = Path(__file__).parent.parent
pytestmark = [pytest.mark.prefect2]

#: One schedule on, one off: a resume must bring back exactly these.
SCHEDULES = [
    {"schedule": {"interval": 3600}, "active": True},
    {"schedule": {"cron": "0 0 * * *"}, "active": False},
]


def _deployment(seeder: Seeder, deployment_id: str) -> dict[str, Any]:
    return dict(seeder._call("GET", f"deployments/{deployment_id}"))


def _schedules(seeder: Seeder, deployment_id: str) -> dict[str, bool]:
    return {
        str(s["id"]): bool(s["active"]) for s in _deployment(seeder, deployment_id)["schedules"]
    }


def _queues(seeder: Seeder, pool: str) -> dict[str, bool]:
    queues = seeder._call("POST", f"work_pools/{pool}/queues/filter", json={})
    return {q["name"]: q["is_paused"] for q in queues}


def _state(seeder: Seeder, run: dict[str, Any]) -> str:
    found = seeder.read_run(run["id"])
    assert found is not None
    return str(found["state"]["name"])


@pytest.fixture
def incident(seeder: Seeder) -> Iterator[dict[str, Any]]:
    """Pool P (queues default and q) with a live deployment, one paused before the incident
    (tagged keep-paused) and Late runs; pool O beside it, which nothing may touch."""
    pool, other = seeder.work_pool()["name"], seeder.work_pool()["name"]
    seeder.work_queue(pool, "q")
    seeder.work_queue(other, "q")
    flow = seeder.flow()
    live = seeder.deployment(flow, work_pool=pool, work_queue="q", schedules=SCHEDULES)
    kept = seeder.deployment(flow, work_pool=pool, tags=["keep-paused"], paused=True)
    elsewhere = seeder.deployment(flow, work_pool=other, schedules=SCHEDULES)
    # The scheduler's own runs (its min_runs, 3), made now: its loop, whenever it runs, makes
    # no more, so none appears between a plan and its apply (the pause would then be drift).
    for deployment in (live, elsewhere):
        seeder.schedule_runs(deployment)
    yield {
        "pool": pool,
        "other": other,
        "flow": flow,
        "live": live,
        "kept": kept,
        "elsewhere": elsewhere,
        "late": [seeder.run(flow, "Late", deployment=live) for _ in range(2)],
        "late_elsewhere": seeder.run(flow, "Late", deployment=elsewhere),
        "running": seeder.run(flow, "Running", deployment=live),
    }


def test_incident_pause_then_resume_examples(
    api_url: str, seeder: Seeder, incident: dict[str, Any], tmp_path: Path
) -> None:
    pool, flow, live = incident["pool"], incident["flow"], incident["live"]
    before = _schedules(seeder, live["id"])
    assert sorted(before.values()) == [False, True]
    pause = str(ROOT / "playbooks" / "incident-pause.yaml")
    state = ["--state-dir", str(tmp_path)]
    dry = run_cli("apply", pause, "--dry-run", "--var", f"pool={pool}", api_url=api_url)
    assert dry.returncode == 0, dry.stderr
    out = dry.stdout
    assert "Summary: 5 to change (3 pause, 2 cancel), 1 unchanged" in out
    assert re.search(r"\n  default\s+" + re.escape(pool) + r"\s+ready\s+-> paused\n", out)
    assert re.search(
        rf"\n  {flow['name']}/{live['name']}\s+{pool}\s+q\s+-\s+cron 0 0 \* \* \* \(off\),"
        r" every 3600s UTC \(on\)\s+active\s+-> paused"
        # the runs the scheduler made by now, which the server deletes with the pause
        r"(; the server deletes its \d+ scheduled runs?: [^\n]+)?\n",
        out,
    ), out
    assert re.search(
        rf"\n  {flow['name']}/{incident['kept']['name']}\s+.*keep-paused.*\s+paused\s+"
        r"-> unchanged: already paused\n",
        out,
    ), out
    assert incident["elsewhere"]["name"] not in out
    listed = run_cli("ls", pause, "--var", f"pool={pool}", api_url=api_url)
    assert listed.returncode == 0, listed.stderr
    assert "Step 1" not in listed.stdout and "Step 2" not in listed.stdout  # runs only
    assert "Step 3: cancel the pool's late runs\n" in listed.stdout

    applied = run_cli("apply", pause, "--yes", "--var", f"pool={pool}", *state, api_url=api_url)
    assert applied.returncode == 0, applied.stderr
    assert "Applied: 5 done, 0 drifted (left alone), 0 failed, 0 pending" in applied.stdout
    assert _queues(seeder, pool) == {"default": True, "q": True}
    assert _queues(seeder, incident["other"]) == {"default": False, "q": False}
    assert _deployment(seeder, live["id"])["paused"] is True
    assert _schedules(seeder, live["id"]) == before  # the schedules' own flags: untouched
    assert _deployment(seeder, incident["kept"]["id"])["paused"] is True
    assert _deployment(seeder, incident["elsewhere"]["id"])["paused"] is False
    assert [_state(seeder, r) for r in incident["late"]] == ["Cancelled", "Cancelled"]
    assert _state(seeder, incident["late_elsewhere"]) == "Late"
    assert _state(seeder, incident["running"]) == "Running"

    resume = str(ROOT / "playbooks" / "incident-resume.yaml")
    dry = run_cli("apply", resume, "--dry-run", "--var", f"pool={pool}", api_url=api_url)
    assert dry.returncode == 0, dry.stderr
    assert "Summary: 3 to change (3 resume), 0 unchanged" in dry.stdout
    assert incident["kept"]["name"] not in dry.stdout  # paused for another reason: not selected
    applied = run_cli("apply", resume, "--yes", "--var", f"pool={pool}", *state, api_url=api_url)
    assert applied.returncode == 0, applied.stderr
    assert "Applied: 3 done, 0 drifted (left alone), 0 failed, 0 pending" in applied.stdout
    assert _queues(seeder, pool) == {"default": False, "q": False}
    assert _deployment(seeder, live["id"])["paused"] is False
    assert _schedules(seeder, live["id"]) == before  # the inactive schedule stays inactive
    assert _deployment(seeder, incident["kept"]["id"])["paused"] is True


def _targets_playbook(pool: str, extra: str = "") -> Any:
    return load_text(
        f"""
version: 1
name: targets
defaults: {{retry: {{max_attempts: 6, backoff: 1s, max_backoff: 2s}}}}
steps:
  - name: pause queues
    target: work_queues
    select: {{work_pools: {pool}}}
    action: pause{extra}
  - name: pause deployments
    target: deployments
    select: {{work_pools: {pool}}}
    action: pause
""",
        env={},
    )


async def _plan(settings: ConnectionSettings, playbook: Any) -> Plan:
    async with PrefectClient(settings) as client:
        return await plan_playbook(playbook, client)


async def _execute(
    settings: ConnectionSettings,
    plan: Plan,
    journal_path: Path,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ApplyResult:
    previous = read_journal(journal_path, plan_id=plan.id) if journal_path.exists() else None
    retry = BUSY_SERVER
    async with PrefectClient(settings, transport=transport, retry=retry) as client:
        with Journal(journal_path, plan_id=plan.id, plan_checksum="test") as journal:
            return await Executor(client, plan, journal, previous=previous, retry=retry).run()


@pytest.mark.anyio
async def test_a_paused_flag_or_schedule_changed_after_the_plan_is_drift(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    pool = seeder.work_pool()["name"]
    flow = seeder.flow()
    by_hand = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES)
    toggled = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES)
    untouched = seeder.deployment(flow, work_pool=pool, schedules=SCHEDULES)
    # The scheduler's own runs (its min_runs, 3), made now: the same whether or not its loop
    # ran meanwhile, so none appears between the plan and the apply (that would be drift).
    seeder.schedule_runs(untouched)
    plan = await _plan(settings, _targets_playbook(pool))
    assert [c.op for c in plan.pending_objects] == ["pause"] * 4
    (deleted,) = [
        c.object.scheduled_runs
        for c in plan.pending_objects
        if c.object.id == UUID(untouched["id"])
    ]
    # After the plan: one deployment paused by hand, a schedule of another switched off, and
    # the pool's queue edited in a way that moves only its `updated` (not drift).
    seeder._call("PATCH", f"deployments/{by_hand['id']}", json={"paused": True})
    schedule = next(s for s in _deployment(seeder, toggled["id"])["schedules"] if s["active"])
    seeder._call(
        "PATCH", f"deployments/{toggled['id']}/schedules/{schedule['id']}", json={"active": False}
    )
    seeder._call("PATCH", f"work_pools/{pool}/queues/default", json={"description": "edited"})
    result = await _execute(settings, plan, tmp_path / "checkpoint.jsonl")
    outcomes = {
        o.change.run.name.rpartition("/")[2]: (o.status, o.detail) for o in result.outcomes.values()
    }
    assert outcomes == {
        "default": ("done", "paused (was ready)"),
        by_hand["name"]: (
            "drifted",
            "paused since the plan (by someone else, or an earlier attempt whose answer was"
            " lost): nothing sent",
        ),
        toggled["name"]: ("drifted", "its schedules changed since the plan"),
        untouched["name"]: (
            "done",
            "paused (was active); the server deleted its 3 scheduled runs: "
            + ", ".join(sorted(r.name for r in deleted)),
        ),
    }
    assert result.complete
    assert _deployment(seeder, toggled["id"])["paused"] is False  # left alone
    assert _deployment(seeder, untouched["id"])["paused"] is True


def test_a_guard_refuses_the_plan_and_nothing_is_sent(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    pool = seeder.work_pool()["name"]
    seeder.work_queue(pool, "q")
    playbook = tmp_path / "guarded.yaml"
    playbook.write_text(
        f"""version: 1
steps:
  - name: pause queues
    target: work_queues
    select: {{work_pools: {pool}}}
    action: pause
    guards: {{max_affected: 1}}
"""
    )
    applied = run_cli(
        "apply", str(playbook), "--yes", "--state-dir", str(tmp_path), api_url=api_url
    )
    assert applied.returncode == 1
    assert (
        "Refused: step 1 ('pause queues') would pause 2 work queues, more than its"
        " max_affected (1)\n" in applied.stdout
    )
    assert _queues(seeder, pool) == {"default": False, "q": False}


class FailOnePatch(httpx.AsyncBaseTransport):
    """In front of the real server: the PATCH of one path answers 500 (its change fails and
    stays to be resumed); every PATCH is counted with the status it was answered with (a
    busy SQLite server answers 503 now and then, and runner asks again)."""

    def __init__(self, path: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.path = path
        self.patches: list[tuple[str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH" and request.url.path.endswith(self.path):
            response = httpx.Response(500, json={"detail": "boom"}, request=request)
        else:
            response = await self.inner.handle_async_request(request)
        if request.method == "PATCH":
            self.patches.append((request.url.path, response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_a_resume_finishes_a_partial_apply_and_sends_nothing_twice(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    pool = seeder.work_pool()["name"]
    for name in ("a", "b"):
        seeder.work_queue(pool, name)
    plan = await _plan(settings, _targets_playbook(pool))
    journal = tmp_path / "checkpoint.jsonl"
    b = next(c for c in plan.pending_objects if c.object.name == "b")
    first = FailOnePatch(f"/work_queues/{b.object.id}")
    result = await _execute(settings, plan, journal, first)
    assert (result.count("done"), result.count("failed")) == (2, 1)
    assert result.outcomes[b.key].detail is not None
    assert _queues(seeder, pool) == {"default": True, "a": True, "b": False}
    again = FailOnePatch("/nothing")
    result = await _execute(settings, plan, journal, again)
    assert result.complete and result.count("done") == 3
    # Only what was left is sent, and it is done once (a 503 asked again is not a change).
    assert {path for path, _ in again.patches} == {f"/api/work_queues/{b.object.id}"}
    assert [status for _, status in again.patches if status < 300] == [204]
    assert _queues(seeder, pool) == {"default": True, "a": True, "b": True}
    state = read_journal(journal, plan_id=plan.id)
    assert {k: state.status(k) for k in (c.key for c in plan.pending_objects)} == {
        c.key: "done" for c in plan.pending_objects
    }


@pytest.mark.anyio
async def test_selection_is_checked_by_runner_and_names_against_the_server(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    pool = seeder.work_pool()["name"]
    flow, other_flow = seeder.flow(), seeder.flow()
    prod = seeder.deployment(flow, unique("etl"), work_pool=pool, tags=["prod"])
    seeder.deployment(flow, unique("etl"), work_pool=pool, tags=["dev"])
    seeder.deployment(flow, unique("report"), work_pool=pool, tags=["prod"])
    seeder.deployment(other_flow, unique("etl"), work_pool=pool, tags=["prod"])
    playbook = load_text(
        f"""
version: 1
steps:
  - name: pause prod etl
    target: deployments
    select:
      names: "{flow["name"]}/etl-*"
      tags: {{any: [prod]}}
      work_pools: {pool}
      paused: false
      exclude: ["*/nightly"]
    action: pause
""",
        env={},
    )
    plan = await _plan(settings, playbook)
    assert [c.object.name for c in plan.pending_objects] == [f"{flow['name']}/{prod['name']}"]
    assert plan.notes == (
        "step 'pause prod etl': select.exclude '*/nightly' matched none of the selected"
        " deployments",
    )
    typo = load_text(
        f"""
version: 1
steps:
  - name: pause a pool
    target: work_pools
    select: {{names: {pool}x}}
    action: pause
""",
        env={},
        name="typo.yaml",
    )
    with pytest.raises(PlaybookError) as info:
        await _plan(settings, typo)
    assert str(info.value) == (
        f"typo.yaml:6:21: steps[0].select.names: no work pool '{pool}x' on"
        f" {settings.display_url}; did you mean '{pool}'?"
    )


class NoPausedFlag(httpx.AsyncBaseTransport):
    """A server older than any runner supports (before 2.20): deployments without ``paused``.
    Every real server runner is tested against has the flag, so it is taken out here."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/deployments/filter"):
            return response
        await response.aread()
        items = [{k: v for k, v in d.items() if k != "paused"} for d in response.json()]
        return httpx.Response(200, json=items, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_a_server_without_a_paused_flag_is_refused_at_plan_time(
    settings: ConnectionSettings, seeder: Seeder, server_version: str
) -> None:
    pool = seeder.work_pool()["name"]
    seeder.deployment(seeder.flow(), work_pool=pool)
    async with PrefectClient(settings, transport=NoPausedFlag()) as client:
        with pytest.raises(SelectionError) as info:
            await plan_playbook(_targets_playbook(pool), client)
    assert str(info.value) == (
        f"steps[1] ('pause deployments'): the server (Prefect {server_version}) gives its"
        " deployments no paused flag: it cannot pause or resume them (runner needs Prefect"
        " 2.20 or later). Nothing was planned and nothing was sent."
    )


def test_a_saved_plan_applies_and_status_and_report_carry_before_and_after(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    pool = seeder.work_pool()["name"]
    playbook = tmp_path / "pause.yaml"
    playbook.write_text(
        f"""version: 1
steps:
  - name: pause queues
    target: work_queues
    select: {{work_pools: {pool}}}
    action: pause
"""
    )
    saved = tmp_path / "plan.json"
    planned = run_cli("plan", str(playbook), "-o", str(saved), api_url=api_url)
    assert planned.returncode == 0, planned.stderr
    report = tmp_path / "report.json"
    state = str(tmp_path / "state")
    args = ("--yes", "--state-dir", state, "--report", str(report))
    applied = run_cli("apply", str(saved), *args, api_url=api_url)
    assert applied.returncode == 0, applied.stderr
    (entry,) = json.loads(report.read_text())["runs"]
    assert {k: entry[k] for k in ("run_name", "op", "status", "kind", "before", "after")} == {
        "run_name": "default",
        "op": "pause",
        "status": "done",
        "kind": "work_queue",
        "before": {"paused": False},
        "after": {"paused": True},
    }
    plan_id = json.loads(saved.read_text())["id"]
    status = run_cli("status", f"{state}/{plan_id}", api_url=api_url)
    assert status.returncode == 0, status.stderr
    assert "done 1, drifted 0, failed 0, pending 0" in status.stdout
    assert _queues(seeder, pool) == {"default": True}
