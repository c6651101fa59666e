"""runner in Prefect's event feed (runner.events), against a real server: an apply's events
read back through the server's events filter; --no-events sends none; a failing or hanging
events route never fails the apply and is counted; a resume sends nothing for changes made
before; a server without events (Prefect 2.x) is said once and skipped."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import httpx
import pytest
import yaml

from runner import events as events_module
from runner.apply import Applied, ApplyRequest, apply
from runner.client import PrefectClient
from runner.events import change_event_id
from runner.executor import ApplyOptions
from runner.plan import Plan
from runner.settings import ConnectionSettings, Secret
from tests.support.cli import run_cli
from tests.support.fault_proxy import FaultProxy
from tests.support.prefect_server import PrefectServer
from tests.support.seed import Seeder, unique, utcnow

KEY = "pnu_not-a-real-key-0123456789"
PAGE = 50  # events read by one request of read_events


def read_events(
    api_url: str, since: datetime, resource_id: str, expected: int, *, name: str | None = None
) -> list[Any]:
    """The events any of whose resources is ``resource_id``, oldest first: polled (bounded)
    until ``expected`` are readable (the server's persister writes them a moment later), or
    one called ``name``."""
    body = {
        "filter": {
            "occurred": {"since": since.isoformat()},
            "any_resource": {"id": [resource_id]},
            "order": "ASC",
        },
        "limit": PAGE,
    }
    deadline = time.monotonic() + 60  # a busy CI machine: the persister lags
    while True:
        page = httpx.post(f"{api_url}/events/filter", json=body, timeout=30).json()
        found = list(page["events"])
        named = any(e["event"] == name for e in found) if name else True
        if (len(found) >= expected and named) or time.monotonic() > deadline:
            # Not ``total``: the server counts in a query of its own, and the persister can
            # write between the two (a fresh-clone CI read total 1 beside 3 events).
            assert len(found) < PAGE, "a whole page: the test reads one"
            return found
        time.sleep(0.1)


def playbook(tmp: Path, flow: dict[str, Any], name: str, *, rate: float | None = None) -> Path:
    """Four steps over the runs of ``flow``, told apart by their tags."""
    defaults = f"defaults: {{rate_limit: {rate}}}\n" if rate else ""
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\n{defaults}guards: {{allow_active: true}}\nsteps:\n"
        f"  - name: drop old\n    select: {{flows: {flow['name']}, tags: {{all: [old]}}}}\n"
        "    action: delete\n"
        f"  - name: stop stuck\n    select: {{flows: {flow['name']}, tags: {{all: [stuck]}}}}\n"
        "    action: {cancel: {message: stuck}}\n"
        f"  - name: push late\n    select: {{flows: {flow['name']}, tags: {{all: [late]}}}}\n"
        "    action: {reschedule: {delay: 2h}}\n"
        f"  - name: mark\n    select: {{flows: {flow['name']}, tags: {{all: [mark]}}}}\n"
        "    action: {tag: {add: [seen]}}\n"
    )
    return path


def counts_of(applied: Applied) -> dict[str, Any]:
    assert applied.result is not None and applied.result.events is not None
    return applied.result.events.document()


@pytest.mark.anyio
async def test_an_apply_is_recorded_in_the_event_feed(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """Started, one event per change runner made (named for its action, the run as the
    resource, with its deployment, the plan, the playbook and the hosting flow run related,
    the state before and after), none for a drifted run, finished with the counts. No key in
    any of it, though the client sent one."""
    since = utcnow() - timedelta(seconds=1)
    flow = seeder.flow()
    deployment = seeder.deployment(flow)
    old = seeder.run(flow, "Completed", tags=["old"], deployment=deployment)
    stuck = seeder.run(flow, "Running", tags=["stuck"])
    moved = seeder.run(flow, "Running", tags=["stuck"])
    late = seeder.run(flow, "Late", tags=["late"])
    mark = seeder.run(flow, "Completed", tags=["mark"])
    host = seeder.run(seeder.flow(), "Running")
    name = unique("events")
    settings = ConnectionSettings(api_url=api_url, api_key=Secret(KEY), request_timeout=30)

    def confirm(plan: Plan) -> bool:  # someone moves a run after the review
        seeder.set_state(moved["id"], "COMPLETED", "Completed")
        return True

    applied = await apply(
        ApplyRequest(
            target=str(playbook(tmp_path, flow, name)),
            settings=settings,
            state_dir=tmp_path / "s",
            host_flow_run=UUID(host["id"]),
        ),
        out=io.StringIO(),
        err=(err := io.StringIO()),
        confirm=confirm,
    )
    assert applied.code == 0, err.getvalue()
    assert applied.plan is not None
    plan_id = applied.plan.id
    assert counts_of(applied) == {"sent": 6, "dropped": 0, "error": None, "unsupported": False}
    assert err.getvalue() == ""

    found = read_events(api_url, since, f"runner.plan.{plan_id}", 6)
    assert KEY not in json.dumps(found)
    by_name = {e["event"]: e for e in found}
    assert sorted(by_name) == [
        "runner.apply.finished",
        "runner.apply.started",
        "runner.flow-run.cancelled",
        "runner.flow-run.deleted",
        "runner.flow-run.rescheduled",
        "runner.flow-run.tagged",
    ]
    assert len(found) == 6  # none for the drifted run
    plan_related = [
        {
            "prefect.resource.id": f"runner.plan.{plan_id}",
            "prefect.resource.role": "plan",
            "prefect.resource.name": name,
        },
        {
            "prefect.resource.id": f"runner.playbook.{name}",
            "prefect.resource.role": "playbook",
            "prefect.resource.name": name,
            "runner.playbook.path": str(tmp_path / f"{name}.yaml"),
        },
        {
            "prefect.resource.id": f"prefect.flow-run.{host['id']}",
            "prefect.resource.role": "flow-run",
        },
    ]

    started = by_name["runner.apply.started"]
    assert started["resource"] == {
        "prefect.resource.id": f"runner.plan.{plan_id}",
        "prefect.resource.name": name,
        "runner.playbook": name,
    }
    assert started["related"] == plan_related[1:]
    assert started["payload"] == {
        "plan_id": plan_id,
        "playbook": name,
        "playbook_path": str(tmp_path / f"{name}.yaml"),
        "changes": 5,
        "resumed": False,
    }
    finished = by_name["runner.apply.finished"]
    assert finished["payload"]["counts"] == {
        "done": 4,
        "drifted": 1,
        "raced": 0,
        "failed": 0,
        "pending": 0,
    }

    deleted = by_name["runner.flow-run.deleted"]
    assert deleted["id"] == str(change_event_id(plan_id, f"0:{old['id']}"))
    assert deleted["resource"] == {
        "prefect.resource.id": f"prefect.flow-run.{old['id']}",
        "prefect.resource.name": old["name"],
        "runner.flow": flow["name"],
    }
    assert deleted["related"] == [
        {
            "prefect.resource.id": f"prefect.deployment.{deployment['id']}",
            "prefect.resource.role": "deployment",
            "prefect.resource.name": deployment["name"],
        },
        *plan_related,
    ]
    assert deleted["payload"] == {
        "action": "delete",
        "op": "delete",
        "outcome": "done",
        "detail": "deleted",
        "before": {
            "state_type": "COMPLETED",
            "state_name": "Completed",
            "scheduled_time": None,
            "tags": ["old"],
        },
        "after": {"deleted": True},
        "plan_id": plan_id,
        "playbook": name,
        "step": {"index": 1, "name": "drop old"},
    }

    cancelled = by_name["runner.flow-run.cancelled"]
    assert cancelled["resource"]["prefect.resource.id"] == f"prefect.flow-run.{stuck['id']}"
    assert cancelled["related"] == plan_related  # a run without a deployment
    assert cancelled["payload"]["before"]["state_name"] == "Running"
    assert cancelled["payload"]["after"] == {
        "state_type": "CANCELLING",
        "state_name": "Cancelling",
        "scheduled_time": None,
        "tags": ["stuck"],
        "message": "stuck",
    }

    rescheduled = by_name["runner.flow-run.rescheduled"]["payload"]
    before_time = datetime.fromisoformat(rescheduled["before"]["scheduled_time"])
    after_time = datetime.fromisoformat(rescheduled["after"]["scheduled_time"])
    assert rescheduled["before"]["state_name"] == "Late"
    assert rescheduled["after"]["state_name"] == "Scheduled"
    assert after_time - before_time == timedelta(hours=2)
    assert (
        by_name["runner.flow-run.rescheduled"]["resource"]["prefect.resource.name"]
        == (late["name"])
    )

    tagged = by_name["runner.flow-run.tagged"]["payload"]
    assert tagged["before"]["tags"] == ["mark"]
    assert tagged["after"] == {"tags": ["mark", "seen"]}
    assert by_name["runner.flow-run.tagged"]["resource"]["prefect.resource.id"] == (
        f"prefect.flow-run.{mark['id']}"
    )


class Recording(FaultProxy):
    """Forwards everything, remembering each request's method and path."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, seed=0, rate=0.0)
        self.seen: list[str] = []

    def _pick(self, method: str, target: str) -> str | None:
        self.seen.append(f"{method} {target.split('?')[0]}")
        return super()._pick(method, target)


def test_no_events_sends_none(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(2, flow, "Running", tags=["stuck"])
    path = playbook(tmp_path, flow, unique("quiet"))
    args = ("apply", str(path), "--yes", "--state-dir", str(tmp_path / "s"))
    proxy = Recording(prefect_server.api_url)
    with proxy:
        quiet = run_cli(*args, "--no-events", api_url=proxy.api_url, cwd=tmp_path)
        assert quiet.returncode == 0, quiet.stderr
        assert "POST /api/events" not in proxy.seen
        assert any(s.startswith("POST /api/flow_runs") for s in proxy.seen)  # it did write
    assert {(seeder.read_run(r["id"]) or {})["state_name"] for r in runs} == {"Cancelling"}


@pytest.mark.anyio
async def test_a_failing_events_route_does_not_fail_the_apply_and_is_counted(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path
) -> None:
    """Every events request answered 503: after its few retries the feed ends, said once;
    the apply goes on, exits 0, and the summary and the report count the events not sent."""
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running", tags=["stuck"])
    with FaultProxy(
        prefect_server.api_url, seed=1, rate=1.0, kinds=("503",), only=r"^POST /api/events$"
    ) as proxy:
        settings = ConnectionSettings(api_url=proxy.api_url, request_timeout=30)
        out, err = io.StringIO(), io.StringIO()
        applied = await apply(
            ApplyRequest(
                target=str(playbook(tmp_path, flow, unique("faulty"))),
                settings=settings,
                state_dir=tmp_path / "s",
                report=str(tmp_path / "report.json"),
            ),
            out=out,
            err=err,
        )
        assert proxy.injected["503"] == 3  # the started event's request, three attempts
    assert applied.code == 0, err.getvalue()
    assert {(seeder.read_run(r["id"]) or {})["state_name"] for r in runs} == {"Cancelling"}
    url = f"{proxy.api_url}/events"
    reason = f"POST {url}: HTTP 503 after 3 attempts: injected by the fault proxy"
    assert err.getvalue() == (
        f"runner: Prefect's event feed did not take runner's events ({reason}): the apply goes"
        " on without them; the events not sent are counted in the summary\n"
    )
    assert f"Events: 5 of 5 events not recorded in Prefect's event feed ({reason}).\n" in (
        out.getvalue()
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["events"] == {"sent": 0, "dropped": 5, "error": reason, "unsupported": False}


@pytest.mark.anyio
async def test_events_the_server_does_not_take_in_time_are_dropped_within_the_bound(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An events request that never ends (a hung proxy: what a real server cannot be made to
    do on demand) holds the apply's end up no longer than the bound, and is counted."""
    monkeypatch.setattr(events_module, "CLOSE_SECONDS", 0.5)

    async def hang(self: PrefectClient, events: Any) -> None:
        await anyio.sleep(3600)

    monkeypatch.setattr(PrefectClient, "emit_events", hang)
    flow = seeder.flow()
    seeder.runs(2, flow, "Running", tags=["stuck"])
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    applied = await apply(
        ApplyRequest(
            target=str(playbook(tmp_path, flow, unique("hung"))),
            settings=settings,
            state_dir=tmp_path / "s",
        ),
        out=out,
        err=err,
    )
    assert time.monotonic() - started < 20
    assert applied.code == 0, err.getvalue()
    assert err.getvalue() == (
        "runner: 4 events not sent to Prefect's event feed within 0.5s of the apply's end:"
        " dropped\n"
    )
    assert counts_of(applied) == {
        "sent": 0,
        "dropped": 4,
        "error": "not sent within 0.5s of the apply's end",
        "unsupported": False,
    }
    assert (
        "Events: 4 of 4 events not recorded in Prefect's event feed (not sent within 0.5s of"
        " the apply's end).\n"
    ) in out.getvalue()


def journal_records(state_dir: Path) -> int:
    return sum(
        max(0, len(f.read_bytes().splitlines()) - 1) for f in state_dir.glob("*/checkpoint.jsonl")
    )


@pytest.mark.anyio
async def test_a_resume_sends_nothing_for_changes_made_before(
    api_url: str,
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An apply stopped after two changes sends their events and runner.apply.failed; its
    resume sends runner.apply.started (resumed), the other changes' events and finished,
    none for the two made before. The server holds one event per run."""
    sent: list[dict[str, Any]] = []
    emit = PrefectClient.emit_events

    async def spy(self: PrefectClient, events: Any) -> None:
        sent.extend(events)
        await emit(self, events)

    monkeypatch.setattr(PrefectClient, "emit_events", spy)
    since = utcnow() - timedelta(seconds=1)
    flow = seeder.flow()
    runs = seeder.runs(6, flow, "Running", tags=["stuck"])
    path = playbook(tmp_path, flow, unique("resume"), rate=2)
    request = ApplyRequest(
        target=str(path),
        settings=settings,
        state_dir=tmp_path / "s",
        options=ApplyOptions(strategy="per-run", concurrency=1),
    )
    stop = anyio.Event()
    applied: list[Applied] = []

    async def first() -> None:
        applied.append(await apply(request, out=io.StringIO(), err=io.StringIO(), stop=stop))

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        with anyio.fail_after(60):
            while journal_records(tmp_path / "s") < 2:
                await anyio.sleep(0.02)
        stop.set()
    (stopped,) = applied
    assert stopped.code == 130 and stopped.plan is not None
    done_first = {
        o.change.run.id
        for o in (stopped.result.outcomes.values() if stopped.result else ())
        if o.status == "done"
    }
    assert 2 <= len(done_first) < 6
    first_sent = [e["event"] for e in sent]
    assert first_sent[0] == "runner.apply.started" and first_sent[-1] == "runner.apply.failed"
    assert sent[-1]["payload"]["stopped"] == "interrupted"
    sent.clear()

    resumed = await apply(request, out=io.StringIO(), err=io.StringIO())
    assert resumed.code == 0
    assert sent[0]["event"] == "runner.apply.started"
    assert sent[0]["payload"]["resumed"] is True
    assert sent[0]["payload"]["changes"] == 6 - len(done_first)
    assert sent[-1]["event"] == "runner.apply.finished"
    again = {
        UUID(e["resource"]["prefect.resource.id"].removeprefix("prefect.flow-run."))
        for e in sent[1:-1]
    }
    assert again == {UUID(r["id"]) for r in runs} - done_first

    plan_id = stopped.plan.id
    found = read_events(api_url, since, f"runner.plan.{plan_id}", 6 + 4)
    changes = [e for e in found if e["event"] == "runner.flow-run.cancelled"]
    assert sorted(e["resource"]["prefect.resource.id"] for e in changes) == sorted(
        f"prefect.flow-run.{r['id']}" for r in runs
    )
    assert [e["event"] for e in found if e["event"].startswith("runner.apply.")] == [
        "runner.apply.started",
        "runner.apply.failed",
        "runner.apply.started",
        "runner.apply.finished",
    ]


@pytest.mark.prefect2
def test_a_server_without_events_is_said_once_and_skipped(
    api_url: str, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    if not is_prefect2:
        pytest.skip("this server takes events (RUNNER_TEST_PREFECT=2 runs this test)")
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running", tags=["stuck"])
    path = playbook(tmp_path, flow, unique("old"))
    report = tmp_path / "report.json"
    result = run_cli(
        "apply",
        str(path),
        "--yes",
        "--state-dir",
        str(tmp_path / "s"),
        "--report",
        str(report),
        api_url=api_url,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    reason = (
        f"POST {api_url}/events: HTTP 404: Events are not enabled. Please enable the"
        " PREFECT_EXPERIMENTAL_EVENTS setting."
    )
    said = (
        f"runner: the server takes no events ({reason}): this apply is not recorded in"
        " Prefect's event feed\n"
    )
    assert result.stderr.count(said) == 1, result.stderr
    assert "Events:" not in result.stdout
    assert {(seeder.read_run(r["id"]) or {})["state_name"] for r in runs} == {"Cancelling"}
    assert json.loads(report.read_text())["events"] == {
        "sent": 0,
        "dropped": 5,
        "error": reason,
        "unsupported": True,
    }
    assert re.search(r"Applied: 3 done", result.stdout)


def documented_automation() -> dict[str, Any]:
    """The automation of docs/events.md, as written there."""
    text = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    (block,) = re.findall(r"```yaml\n(# runner-apply-failed\.yaml\n.*?)```", text, re.S)
    return dict(yaml.safe_load(block))


@pytest.mark.anyio
async def test_the_documented_automation_fires_on_a_failed_apply(
    api_url: str, settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The trigger of docs/events.md's automation (narrowed to this test's playbook, with an
    action that does nothing in place of its notification) fires when an apply stops."""
    automation = documented_automation()
    assert automation["actions"][0]["type"] == "send-notification"
    name = unique("fails")
    automation["trigger"]["match"]["runner.playbook"] = name
    automation["actions"] = [{"type": "do-nothing"}]
    http = httpx.Client(base_url=api_url + "/", timeout=30)
    created = http.post("automations/", json=automation)
    assert created.status_code == 201, created.text
    automation_id = created.json()["id"]
    try:
        since = utcnow() - timedelta(seconds=1)
        flow = seeder.flow()
        seeder.runs(2, flow, "Running", tags=["stuck"])
        stop = anyio.Event()

        def confirm(plan: Plan) -> bool:  # stopped at once: everything stays pending
            stop.set()
            return True

        applied = await apply(
            ApplyRequest(
                target=str(playbook(tmp_path, flow, name)),
                settings=settings,
                state_dir=tmp_path / "s",
            ),
            out=io.StringIO(),
            err=io.StringIO(),
            confirm=confirm,
            stop=stop,
        )
        assert applied.code == 130
        fired = read_events(
            api_url,
            since,
            f"prefect.automation.{automation_id}",
            1,
            name="prefect.automation.triggered",
        )
        triggered = [e for e in fired if e["event"] == "prefect.automation.triggered"]
        assert triggered, [e["event"] for e in fired]
        cause = triggered[0]["payload"]["triggering_event"]
        assert cause["event"] == "runner.apply.failed"
        assert cause["payload"]["stopped"] == "interrupted"
    finally:
        http.delete(f"automations/{automation_id}")
        http.close()


def test_a_paused_work_queue_is_an_event_of_its_own(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """A step with a target sends one event per object it paused, the object as the
    resource (``prefect.work-queue.<id>``, as Prefect's own events name it)."""
    since = utcnow() - timedelta(seconds=1)
    pool = seeder.work_pool()
    queue = seeder.work_queue(pool["name"])
    path = tmp_path / "pause.yaml"
    path.write_text(
        "version: 1\nsteps:\n  - name: hold\n    target: work_queues\n"
        f"    select: {{work_pools: [{pool['name']}], names: [{queue['name']}]}}\n"
        "    action: pause\n"
    )
    result = run_cli("apply", str(path), "--yes", api_url=api_url)
    assert result.returncode == 0, result.stderr
    resource = f"prefect.work-queue.{queue['id']}"
    found = read_events(api_url, since, resource, 1, name="runner.work-queue.paused")
    # Prefect sends its own (prefect.work-queue.paused, a status change) beside runner's.
    ours = [e for e in found if e["event"].startswith("runner.")]
    # Said in full when it fails: what the server holds, and what the apply said of events.
    assert len(ours) == 1, ([e["event"] for e in found], result.stderr[-600:])
    (event,) = ours
    assert event["event"] == "runner.work-queue.paused"
    assert event["resource"] == {
        "prefect.resource.id": resource,
        "prefect.resource.name": queue["name"],
    }
    assert event["payload"]["before"] == {"paused": False}
    assert event["payload"]["after"] == {"paused": True}
    assert event["payload"]["outcome"] == "done"
