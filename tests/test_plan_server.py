"""Planning against a real server: the seed scenario, dry runs that send no write, guards,
saved plans. Runs on Prefect 3.x and (marker prefect2) 2.x."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from runner import spool
from runner.apply import ApplyRequest, apply
from runner.client import PrefectClient
from runner.errors import PlanFileError, PlaybookError
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import Plan
from runner.planfile import check_applicable, read_plan, write_plan
from runner.settings import ConnectionSettings
from runner.spool import is_spooled
from tests.support.cli import run_cli
from tests.support.seed import Seeder, unique

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]
ROOT = Path(__file__).parent.parent


def seed_scenario(seeder: Seeder) -> dict[str, Any]:
    flow = seeder.flow(unique("healthcheck"))
    pool = seeder.work_pool()
    dep = seeder.deployment(flow, "healthcheck-storage-test", work_pool=pool["name"])
    late = seeder.late_runs(12, flow, deployment=dep)  # newest first
    running = seeder.run(flow, "Running", deployment=dep)
    other = seeder.deployment(flow, unique("other"), work_pool=pool["name"])
    other_late = seeder.late_runs(2, flow, deployment=other)
    return {"flow": flow, "dep": dep, "late": late, "running": running, "other_late": other_late}


def reschedule_playbook(deployment: str) -> str:
    text = (ROOT / "playbooks" / "reschedule-late.yaml").read_text()
    return text.replace("healthcheck/healthcheck-storage-test", deployment)


def snapshot(seeder: Seeder, flow: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (r["id"], r["state"]["id"], r["updated"], tuple(r["tags"]))
        for r in seeder.runs_of_flow(flow)
    )


class Recorder(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)


async def test_seed_scenario_plan(settings: ConnectionSettings, seeder: Seeder) -> None:
    s = seed_scenario(seeder)
    name = f"{s['flow']['name']}/healthcheck-storage-test"
    playbook = load_text(reschedule_playbook(name), name="reschedule-late.yaml", env={})
    before = snapshot(seeder, s["flow"])
    recorder = Recorder()
    async with PrefectClient(settings, transport=recorder, bulk=False) as client:
        plan = await plan_playbook(playbook, client)
    first, second = plan.steps
    assert [c.run.id for c in first.changes] == [
        __import__("uuid").UUID(r["id"]) for r in s["late"][:3]
    ]
    assert {c.op for c in first.changes} == {"set_state"}
    for change, run in zip(first.changes, s["late"][:3], strict=True):
        assert change.state is not None and change.state.scheduled_time is not None
        expected = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
        assert change.state.scheduled_time == expected + timedelta(hours=6)
    assert sorted(str(c.run.id) for c in second.changes) == sorted(r["id"] for r in s["late"][3:])
    assert {c.op for c in second.changes} == {"delete"}
    assert plan.violations == ()
    # Nothing written: the server is as it was, and only reads were sent.
    assert snapshot(seeder, s["flow"]) == before
    writes = [
        (m, p) for m, p in recorder.requests if m != "GET" and not p.endswith(("/filter", "/count"))
    ]
    assert writes == []


def test_dry_run_cli_changes_nothing(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    s = seed_scenario(seeder)
    path = tmp_path / "reschedule-late.yaml"
    path.write_text(reschedule_playbook(f"{s['flow']['name']}/healthcheck-storage-test"))
    before = snapshot(seeder, s["flow"])
    result = run_cli("apply", str(path), "--dry-run", "--detailed-exitcode", api_url=api_url)
    assert result.returncode == 2, result.stderr
    assert (
        "Step 1: reschedule the 3 most recent late runs [reschedule]: 3 selected, 3 to change, 0 unchanged"
        in result.stdout
    )
    assert (
        "Step 2: delete the remaining late runs [delete]: 9 selected, 9 to change, 0 unchanged"
        in result.stdout
    )
    assert "Summary: 12 to change (3 reschedule, 9 delete), 0 unchanged" in result.stdout
    plain = run_cli("apply", str(path), "--dry-run", api_url=api_url)
    assert plain.returncode == 0
    md = run_cli("plan", str(path), "--format", "markdown", api_url=api_url)
    assert md.stdout.startswith("### runner plan: reschedule-late\n")
    assert "| 2. delete the remaining late runs | `delete` | 9 | 9 | 0 |" in md.stdout
    assert snapshot(seeder, s["flow"]) == before


def test_nothing_to_do_exits_0_even_with_detailed_exitcode(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()  # a flow without runs
    path = tmp_path / "none.yaml"
    path.write_text(
        f"version: 1\nsteps:\n  - name: none\n    select: {{flows: {flow['name']}}}\n    action: delete\n"
    )
    result = run_cli("plan", str(path), "--detailed-exitcode", api_url=api_url)
    assert result.returncode == 0, result.stderr
    assert "Summary: 0 to change, 0 unchanged" in result.stdout


def test_guard_refuses_deleting_running_runs(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    flow = seeder.flow()
    seeder.run(flow, "Running")
    seeder.run(flow, "Completed")
    path = tmp_path / "rm.yaml"
    path.write_text(
        f"version: 1\nsteps:\n  - name: rm all\n    select: {{flows: {flow['name']}}}\n    action: delete\n"
    )
    result = run_cli("plan", str(path), api_url=api_url)
    assert result.returncode == 1
    assert (
        "Refused: step 1 ('rm all') would delete 1 active runs (Running) whose infrastructure"
        " may still run; cancel them first, or set guards.allow_active: true"
    ) in result.stdout


def test_unknown_deployment_is_named(api_url: str, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "version: 1\nsteps:\n  - name: x\n    select: {deployments: [nope/nada]}\n    action: delete\n"
    )
    result = run_cli("plan", str(path), api_url=api_url)
    assert result.returncode == 1
    assert result.stderr == (
        f"{path}:4:28: steps[0].select.deployments[0]: no deployment 'nope/nada' on {api_url}\n"
    )


async def test_saved_plan_round_trip_and_refusals(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    s = seed_scenario(seeder)
    playbook = load_text(
        reschedule_playbook(f"{s['flow']['name']}/healthcheck-storage-test"), name="p.yaml", env={}
    )
    async with PrefectClient(settings, bulk=False) as client:
        plan = await plan_playbook(playbook, client)
    path = tmp_path / "plan.json"
    write_plan(plan, path)
    assert read_plan(path) == plan
    document = json.loads(path.read_text())
    assert document["format"] == "runner-plan" and document["version"] == 1
    assert document["server"]["url"] == settings.api_url
    assert document["playbook"]["digest"] == playbook.digest
    check_applicable(plan, server_url=settings.api_url, now=plan.created_at, max_age_seconds=3600)
    with pytest.raises(PlanFileError, match="the plan was made against"):
        check_applicable(
            plan, server_url="http://elsewhere/api", now=plan.created_at, max_age_seconds=None
        )
    later = plan.created_at + timedelta(hours=2)
    with pytest.raises(PlanFileError) as info:
        check_applicable(plan, server_url=settings.api_url, now=later, max_age_seconds=3600)
    assert str(info.value) == (
        "the plan is 120 minutes old (the limit is 60): make a new plan, or pass --max-plan-age"
        " to allow it"
    )
    document["steps"][1]["changes"][0]["op"] = "noop"
    path.write_text(json.dumps(document))
    with pytest.raises(PlanFileError) as info:
        read_plan(path)
    assert str(info.value) == f"{path}: checksum mismatch: the plan was changed after it was made"
    document["version"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(PlanFileError, match="plan format version 99; this runner reads version 1"):
        read_plan(path)


async def test_missing_deployment_raises(settings: ConnectionSettings) -> None:
    playbook = load_text(
        "version: 1\nsteps:\n  - name: x\n    select: {deployments: a/b}\n    action: delete\n",
        env={},
    )
    async with PrefectClient(settings, bulk=False) as client:
        with pytest.raises(PlaybookError) as info:
            await plan_playbook(playbook, client)
    assert str(info.value).startswith(
        f"<string>:4:27: steps[0].select.deployments: no deployment 'a/b' on {settings.api_url}"
    )


async def test_filters_the_server_lacks_are_applied_locally(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    flow = seeder.flow()
    a = seeder.run(flow, "Late", tags=["a"])
    b = seeder.run(flow, "Scheduled", tags=["b"])
    seeder.run(flow, "AwaitingRetry", tags=["c"])
    playbook = load_text(
        f"""
version: 1
steps:
  - name: pick
    select:
      flows: {flow["name"]}
      tags: {{any: [a, b]}}
      state: {{type: SCHEDULED, not_name: AwaitingRetry}}
    action: {{tag: {{add: [picked]}}}}
""",
        env={},
    )
    async with PrefectClient(settings, bulk=False) as client:
        plan = await plan_playbook(playbook, client)
    assert sorted(str(c.run.id) for c in plan.changes) == sorted([a["id"], b["id"]])


def _rows(plan: Plan) -> list[list[tuple[str, str, object]]]:
    return [
        [(c.key, c.op, c.state and c.state.scheduled_time) for c in step.changes]
        for step in plan.steps
    ]


async def test_a_plan_held_on_disk_is_the_plan_held_in_memory_and_applies_as_reviewed(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large plan's runs go through spools on disk (runner.spool): made here with every
    spool on disk from its first run, two runs a chunk, so the reads, the claims between the
    steps, the descending sort (merged on disk from runs of three) and the limit all take the
    large-plan path. The plan is the one made in memory, and its apply does exactly it."""
    s = seed_scenario(seeder)
    name = f"{s['flow']['name']}/healthcheck-storage-test"
    text = reschedule_playbook(name)
    playbook = load_text(text, name="reschedule-late.yaml", env={})
    async with PrefectClient(settings, bulk=False) as client:
        held = await plan_playbook(playbook, client, now=datetime.now(timezone.utc))
        monkeypatch.setattr(spool, "SPILL_AT", 0)
        monkeypatch.setattr(spool, "CHUNK", 2)
        monkeypatch.setattr(spool, "SORT_RUN", 3)
        spooled = await plan_playbook(playbook, client, now=held.created_at)
    assert [is_spooled(step.changes) for step in spooled.steps] == [True, True]
    assert not any(is_spooled(step.changes) for step in held.steps)
    assert _rows(spooled) == _rows(held)
    assert [c.run.id for c in spooled.steps[0].changes] == [UUID(r["id"]) for r in s["late"][:3]]
    assert (spooled.violations, spooled.notes) == (held.violations, held.notes)
    assert spooled.counts() == held.counts() == {"reschedule": 3, "delete": 9, "unchanged": 0}

    path = tmp_path / "reschedule-late.yaml"
    path.write_text(text)
    untouched = {s["running"]["id"], *(r["id"] for r in s["other_late"])}
    before = {r["id"]: r for r in seeder.runs_of_flow(s["flow"]) if r["id"] in untouched}
    applied = await apply(
        ApplyRequest(target=str(path), settings=settings, state_dir=tmp_path / "state"),
        out=io.StringIO(),
        err=(err := io.StringIO()),
    )
    assert applied.code == 0, err.getvalue()
    # The apply read its plan from the spools once: each change is one object wherever the
    # apply holds it (the executor keeps them all), not a new copy for every read.
    assert applied.plan is not None and not is_spooled(applied.plan.steps[1].changes)
    assert all(a is b for a, b in zip(applied.plan.work, applied.plan.work, strict=True))
    after = {r["id"]: r for r in seeder.runs_of_flow(s["flow"])}
    for run in s["late"][:3]:
        expected = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
        moved = after[run["id"]]
        assert moved["state"]["name"] == "Scheduled"
        when = datetime.fromisoformat(moved["next_scheduled_start_time"].replace("Z", "+00:00"))
        assert when == expected + timedelta(hours=6)
    assert not {r["id"] for r in s["late"][3:]} & set(after)
    assert {i: after[i]["state"]["id"] for i in untouched} == {
        i: before[i]["state"]["id"] for i in untouched
    }
