"""Applying plans on a real server: every action, bulk and per-run, drift, faults, journals."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from runner.client import PrefectClient
from runner.errors import CheckpointError
from runner.executor import ApplyOptions, ApplyResult, Executor
from runner.journal import Journal, read_journal
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import Plan
from runner.retry import RetryPolicy
from runner.settings import ConnectionSettings
from tests.support.seed import Seeder, utcnow

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]


def playbook_for(flow: dict[str, Any], action: str, extra_select: str = "") -> Any:
    text = f"""
version: 1
name: test
guards: {{allow_active: true}}
steps:
  - name: act
    select: {{flows: {flow["name"]}{extra_select}}}
    action: {action}
"""
    return load_text(text, env={})


async def make_plan(settings: ConnectionSettings, playbook: Any) -> Plan:
    async with PrefectClient(settings, bulk=False) as client:
        return await plan_playbook(playbook, client)


async def execute(
    settings: ConnectionSettings,
    plan: Plan,
    journal_path: Path,
    *,
    options: ApplyOptions | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    bulk: bool | None = None,
    retry: RetryPolicy | None = None,
) -> ApplyResult:
    previous = read_journal(journal_path, plan_id=plan.id) if journal_path.exists() else None
    async with PrefectClient(settings, transport=transport, bulk=bulk, retry=retry) as client:
        with Journal(journal_path, plan_id=plan.id, plan_checksum="test") as journal:
            return await Executor(
                client, plan, journal, previous=previous, options=options or ApplyOptions()
            ).run()


def states(seeder: Seeder, flow: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["state_name"] for r in seeder.runs_of_flow(flow)}


@pytest.mark.parametrize("strategy", ["bulk", "per-run"])
async def test_delete(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, strategy: Any, is_prefect2: bool
) -> None:
    if strategy == "bulk" and is_prefect2:
        pytest.skip("Prefect 2.x has no bulk routes")
    flow = seeder.flow()
    seeder.runs(120, flow, "Completed")
    plan = await make_plan(settings, playbook_for(flow, "delete"))
    result = await execute(settings, plan, tmp_path / "j", options=ApplyOptions(strategy=strategy))
    assert result.complete
    assert result.count("done") == 120
    assert seeder.runs_of_flow(flow) == []
    if strategy == "bulk":
        # 3 bulk calls for 120 runs (50 + 50 + 20), each after a read-back of its batch,
        # against 120 deletes per run; the CSRF token request; one read of each run's state
        # history for the archive; and whatever the server asked to have sent again, which
        # costs the resend and, for a bulk delete, a read-back of its batch before it.
        assert result.requests - 2 * result.retries <= 3 + 3 + 1 + 120
    journal = read_journal(tmp_path / "j", plan_id=plan.id)
    assert {e.status for e in journal.entries.values()} == {"done"}
    assert len(journal.entries) == 120


@pytest.mark.parametrize("strategy", ["bulk", "per-run"])
async def test_cancel(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, strategy: Any, is_prefect2: bool
) -> None:
    if strategy == "bulk" and is_prefect2:
        pytest.skip("Prefect 2.x has no bulk routes")
    flow = seeder.flow()
    running = seeder.runs(3, flow, "Running")
    pending = seeder.runs(2, flow, "Pending")
    late = seeder.runs(3, flow, "Late")
    done = seeder.run(flow, "Completed")
    plan = await make_plan(settings, playbook_for(flow, "{cancel: {message: test cancel}}"))
    result = await execute(settings, plan, tmp_path / "j", options=ApplyOptions(strategy=strategy))
    assert result.complete, [o.detail for o in result.failed]
    now = states(seeder, flow)
    assert {now[r["id"]] for r in running + pending} == {"Cancelling"}
    assert {now[r["id"]] for r in late} == {"Cancelled"}
    assert now[done["id"]] == "Completed"
    run = seeder.read_run(running[0]["id"])
    assert run is not None and run["state"]["message"] == "test cancel"


async def test_set_state_reschedule_retry_resume_tag(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    failed = seeder.run(flow, "Failed", tags=["a"], deployment=seeder.deployment(flow))
    late = seeder.run(flow, "Late", tags=["b"])
    paused = seeder.run(flow, "Paused", tags=["c"])
    text = f"""
version: 1
name: several
defaults: {{message: "runner test: {{step}}"}}
steps:
  - name: retry failed
    select: {{flows: {flow["name"]}, state: {{type: FAILED}}}}
    action: retry
  - name: push late
    select: {{flows: {flow["name"]}, state: {{name: Late}}}}
    action: {{reschedule: {{at: now+2h}}}}
  - name: resume paused
    select: {{flows: {flow["name"]}, state: {{type: PAUSED}}}}
    action: resume
  - name: tag the rest
    select: {{flows: {flow["name"]}}}
    action: {{tag: {{add: [touched], remove: [a]}}}}
"""
    plan = await make_plan(settings, load_text(text, env={}))
    result = await execute(settings, plan, tmp_path / "j")
    assert result.complete, [o.detail for o in result.failed]
    got_failed = seeder.read_run(failed["id"]) or {}
    assert got_failed["state_name"] == "AwaitingRetry"
    assert got_failed["state"]["message"] == "runner test: retry failed"
    got_late = seeder.read_run(late["id"]) or {}
    assert got_late["state_name"] == "Scheduled"
    when = got_late["state"]["state_details"]["scheduled_time"]
    assert (
        abs(
            (utcnow() + timedelta(hours=2)).timestamp()
            - __import__("datetime").datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
        )
        < 120
    )
    assert (seeder.read_run(paused["id"]) or {})["state_type"] != "PAUSED"
    # Every run was claimed by the first three steps: the tag step selected nothing.
    assert plan.steps[3].selected == 0


async def test_tag_action(settings: ConnectionSettings, seeder: Seeder, tmp_path: Path) -> None:
    flow = seeder.flow()
    run = seeder.run(flow, "Completed", tags=["a", "keep"])
    plan = await make_plan(settings, playbook_for(flow, "{tag: {add: [touched], remove: [a]}}"))
    result = await execute(settings, plan, tmp_path / "j")
    assert result.complete
    assert (seeder.read_run(run["id"]) or {})["tags"] == ["keep", "touched"]


async def test_recreate_reschedule(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=seeder.work_pool()["name"], parameters={"x": 1})
    late = seeder.late_runs(4, flow, deployment=dep, tags=["t"])
    plan = await make_plan(
        settings, playbook_for(flow, "{reschedule: {delay: 6h, strategy: recreate}}")
    )
    result = await execute(settings, plan, tmp_path / "j")
    assert result.complete, [o.detail for o in result.failed]
    now_runs = seeder.runs_of_flow(flow)
    assert len(now_runs) == 4
    assert not {r["id"] for r in late} & {r["id"] for r in now_runs}
    new_ids = {o.new_run_id for o in result.outcomes.values()}
    assert new_ids == {r["id"] for r in now_runs}
    for r in now_runs:
        assert r["state_name"] == "Scheduled"
        assert r["tags"] == ["t"]
        assert r["deployment_id"] == dep["id"]
    journal = read_journal(tmp_path / "j", plan_id=plan.id)
    assert {e.status for e in journal.entries.values()} == {"done"}
    assert {e.new_run_id for e in journal.entries.values()} == new_ids


async def test_drifted_runs_are_left_alone(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(6, flow, "Completed")
    late = seeder.runs(4, flow, "Late")
    plan = await make_plan(settings, playbook_for(flow, "delete", ", state: {type: COMPLETED}"))
    cancel_plan = await make_plan(settings, playbook_for(flow, "cancel", ", state: {name: Late}"))
    # Between plan and apply: one planned run is retried by someone, one is deleted.
    seeder._call(
        "POST",
        f"flow_runs/{runs[0]['id']}/set_state",
        json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True},
    )
    seeder._call("DELETE", f"flow_runs/{runs[1]['id']}")
    seeder._call(
        "POST",
        f"flow_runs/{late[0]['id']}/set_state",
        json={"state": {"type": "RUNNING", "name": "Running"}, "force": True},
    )
    strategies: list[Any] = ["per-run"] if is_prefect2 else ["bulk", "per-run"]
    for strategy in strategies:
        journal = tmp_path / f"j-{strategy}"
        result = await execute(settings, plan, journal, options=ApplyOptions(strategy=strategy))
        outcome = {o.change.run.id: o for o in result.outcomes.values()}
        assert outcome[UUID(runs[0]["id"])].status == "drifted"
        assert outcome[UUID(runs[0]["id"])].detail == "now AwaitingRetry, planned from Completed"
        assert outcome[UUID(runs[1]["id"])].status == "done"
    result = await execute(settings, cancel_plan, tmp_path / "j-cancel")
    outcome = {o.change.run.id: o for o in result.outcomes.values()}
    assert outcome[UUID(late[0]["id"])].status == "drifted"
    left = states(seeder, flow)
    assert left[runs[0]["id"]] == "AwaitingRetry"  # not deleted
    assert left[late[0]["id"]] == "Running"  # not cancelled
    assert {left[r["id"]] for r in late[1:]} == {"Cancelled"}
    assert set(left) == {runs[0]["id"], *(r["id"] for r in late)}


async def test_resume_skips_what_is_done(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    flow = seeder.flow()
    seeder.runs(10, flow, "Running")
    plan = await make_plan(settings, playbook_for(flow, "cancel"))
    journal = tmp_path / "j"
    keys = [c.key for c in plan.pending]
    # A previous apply finished the first four (and journaled them) before it died.
    async with PrefectClient(settings) as client:
        with Journal(journal, plan_id=plan.id, plan_checksum="test") as j:
            ex = Executor(client, plan, j)
            ex.outcomes = {
                c.key: __import__("runner.executor", fromlist=["Outcome"]).Outcome(c, "pending")
                for c in plan.pending
            }
            ex.progress = __import__("runner.executor", fromlist=["Progress"]).Progress(total=10)
            for change in plan.pending[:4]:
                await ex._set_state_one(change)
    result = await execute(settings, plan, journal)
    assert result.complete
    assert result.count("done") == 10
    state = read_journal(journal, plan_id=plan.id)
    assert [k for k in keys if state.status(k) == "done"] == keys
    # Only the six others were sent (and the CSRF token asked for): on the bulk routes a
    # read-back of them and one state change; per run, a read-back and a change each; and
    # each change's history read (is the state it replaced the one the plan saw?).
    sent = 1 + (6 * 2 if is_prefect2 else 2) + 6
    assert result.requests - result.retries <= sent
    for change in plan.pending:
        history = seeder._call(
            "GET", "flow_run_states/", params={"flow_run_id": str(change.run.id)}
        )
        assert [s["name"] for s in history] == ["Running", "Cancelling"]


async def test_two_applies_of_one_plan_cannot_run_at_once(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    with (
        Journal(path, plan_id="p1", plan_checksum="c"),
        pytest.raises(CheckpointError) as info,
        Journal(path, plan_id="p1", plan_checksum="c"),
    ):
        pass
    assert str(info.value).startswith("another apply of plan p1 is running (pid ")
    with Journal(path, plan_id="p1", plan_checksum="c"):
        pass  # free again once the first is closed
    with (
        pytest.raises(CheckpointError, match="belongs to plan p1, not p2"),
        Journal(path, plan_id="p2", plan_checksum="c"),
    ):
        pass


class Faults(httpx.AsyncBaseTransport):
    """In front of the real server: 503s and 429s before it, dropped answers after it."""

    def __init__(self, seed: int, rate: float) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.random = random.Random(seed)
        self.rate = rate
        self.injected: dict[str, int] = {"503": 0, "429": 0, "drop-before": 0, "drop-after": 0}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        roll = self.random.random()
        if roll < self.rate:
            kind = self.random.choice(["503", "429", "drop-before", "drop-after"])
            self.injected[kind] += 1
            if kind == "503":
                return httpx.Response(503, json={"detail": "injected"})
            if kind == "429":
                return httpx.Response(
                    429, headers={"Retry-After": "0.05"}, json={"detail": "injected"}
                )
            if kind == "drop-before":
                raise httpx.ConnectError("injected: refused", request=request)
            response = await self.inner.handle_async_request(request)
            await response.aread()
            await response.aclose()
            raise httpx.RemoteProtocolError("injected: lost the answer", request=request)
        return await self.inner.handle_async_request(request)


FAST = RetryPolicy(max_attempts=6, initial_backoff=0.01, max_backoff=0.2, jitter=0.02)


@pytest.mark.parametrize(
    ("action", "state", "strategy"),
    [
        ("delete", "Completed", "bulk"),
        ("delete", "Completed", "per-run"),
        ("cancel", "Running", "bulk"),
        ("cancel", "Running", "per-run"),
        ("{reschedule: {delay: 2h, strategy: recreate}}", "Late", "per-run"),
    ],
)
async def test_faults_end_with_every_change_done_once(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    action: str,
    state: str,
    strategy: Any,
    is_prefect2: bool,
) -> None:
    if strategy == "bulk" and is_prefect2:
        pytest.skip("Prefect 2.x has no bulk routes")
    flow = seeder.flow()
    dep = seeder.deployment(flow) if "recreate" in action else None
    runs = seeder.runs(60, flow, state, deployment=dep)
    plan = await make_plan(settings, playbook_for(flow, action))
    faults = Faults(seed=7, rate=0.25)
    result = await execute(
        settings,
        plan,
        tmp_path / "j",
        transport=faults,
        options=ApplyOptions(strategy=strategy),
        retry=FAST,
    )
    # Bulk sends few requests (60 runs: 2 batches), so fewer faults land there.
    assert sum(faults.injected.values()) >= (3 if strategy == "bulk" else 10)
    assert result.complete, (faults.injected, [o.detail for o in result.failed])
    left = seeder.runs_of_flow(flow)
    if action == "delete":
        assert left == []
    elif action == "cancel":
        assert {r["state_name"] for r in left} == {"Cancelling"}
        for r in runs:
            history = seeder._call("GET", "flow_run_states/", params={"flow_run_id": r["id"]})
            assert [s["name"] for s in history] == ["Running", "Cancelling"], (
                "a change applied twice"
            )
    else:
        assert len(left) == 60, "a recreate duplicated or lost a run"
        assert {r["state_name"] for r in left} == {"Scheduled"}
        assert not {r["id"] for r in runs} & {r["id"] for r in left}


@pytest.mark.parametrize(
    ("action", "state", "rate", "expected"),
    [
        ("cancel", "Running", 10, "bulk"),  # one target state: batches of 50, 50x fewer requests
        ("cancel", "Late", None, "bulk"),  # faster than per run too, without a budget
        ("{set_state: {type: FAILED}}", "Running", None, "bulk"),
        ("{reschedule: {delay: 6h}}", "Late", 10, "per-run"),  # a time per run: batches of one
        ("{set_state: {type: SCHEDULED}}", "Failed", 10, "per-run"),  # bulk Scheduled is slow
    ],
)
async def test_auto_strategy(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    action: str,
    state: str,
    rate: float | None,
    expected: str,
    is_prefect2: bool,
) -> None:
    flow = seeder.flow()
    # The server only reschedules runs of a deployment.
    seeder.runs(6, flow, state, deployment=seeder.deployment(flow))
    plan = await make_plan(settings, playbook_for(flow, action))
    result = await execute(settings, plan, tmp_path / "j", options=ApplyOptions(rate_limit=rate))
    assert result.complete, [o.detail for o in result.failed]
    assert result.strategies == {0: "per-run" if is_prefect2 else expected}
