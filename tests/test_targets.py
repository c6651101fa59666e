"""Steps with a target, without a server: the schema and the models agree, the planner's
before -> after and guards, the plan document (round trip, what an undo reads, tampering
refused, older plans), the diff's rows, runner's own check of a selection."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from runner import loader
from runner.errors import PlanFileError
from runner.plan import ObjectView, Observation, ScheduledRun, ScheduleView, StepObservation
from runner.planfile import _checksum, dumps, plan_from_json, read_plan
from runner.planner import make_plan
from runner.playbook import ObjectSelect, Pause, TagSelect, Unpause
from runner.render import to_text
from runner.targets import deleted_with_write, drift, failed_keys, literal_names, server_filter

NOW = datetime(2026, 11, 30, 4, 0, tzinfo=timezone.utc)


def test_the_target_selections_are_the_models_fields() -> None:
    defs = loader.schema()["$defs"]
    keys = set()
    for name in ("deployment_select", "work_pool_select", "work_queue_select"):
        keys |= set(defs[name]["properties"])
    assert keys == {f.name for f in dataclasses.fields(ObjectSelect)}
    actions = defs["object_action"]["oneOf"]
    assert set(actions[0]["enum"]) == set(actions[1]["properties"]) == {"pause", "resume"}
    assert (Pause.kind, Unpause.kind) == ("pause", "resume")


def _deployment(name: str, paused: bool, **kw: object) -> ObjectView:
    return ObjectView(
        kind="deployment",
        id=uuid4(),
        name=name,
        paused=paused,
        updated=NOW,
        flow=name.partition("/")[0],
        tags=("prod",),
        work_pool="k8s-prod",
        work_queue="critical",
        schedules=(
            ScheduleView(id=UUID(int=1), active=True, schedule="every 3600s"),
            ScheduleView(id=UUID(int=2), active=False, schedule="cron 0 0 * * *"),
        ),
        **kw,  # type: ignore[arg-type]
    )


PLAYBOOK = """
version: 1
name: incident
guards: {max_affected: 10}
steps:
  - name: pause deployments
    target: deployments
    select: {work_pools: k8s-prod}
    action: pause
  - name: resume deployments
    target: deployments
    select: {work_pools: k8s-prod}
    action: resume
"""


def _plan(views: list[ObjectView], text: str = PLAYBOOK) -> object:
    playbook = loader.load_text(text, env={})
    observation = Observation(
        now=NOW,
        server_url="http://server/api",
        server_version="3.9.1",
        steps=tuple(StepObservation(runs=(), objects=tuple(views)) for _ in playbook.steps),
    )
    return make_plan(playbook, observation, plan_id="p1")


def test_the_plan_shows_before_and_after_and_an_earlier_step_claims_the_object() -> None:
    live, paused = _deployment("etl/nightly", False), _deployment("etl/backfill", True)
    plan = _plan([live, paused])
    first, second = plan.steps  # type: ignore[attr-defined]
    assert [(c.object.name, c.op, c.reason) for c in first.objects] == [
        ("etl/nightly", "pause", None),
        ("etl/backfill", "noop", "already paused"),
    ]
    assert second.objects == ()  # both claimed by step 1
    text = to_text(plan)  # type: ignore[arg-type]
    assert (
        "Step 1: pause deployments [pause deployments]: 2 selected, 1 to change, 1 unchanged\n"
        "  deployment    work pool  work queue  tags  schedules (kept)"
        "                        before  after\n"
        "  etl/nightly   k8s-prod   critical    prod  every 3600s (on), cron 0 0 * * * (off)"
        "  active  -> paused\n"
        "  etl/backfill  k8s-prod   critical    prod  every 3600s (on), cron 0 0 * * * (off)"
        "  paused  -> unchanged: already paused\n"
    ) in text
    assert "Summary: 1 to change (1 pause), 1 unchanged" in text


def test_guards_count_objects() -> None:
    views = [_deployment(f"etl/d{i}", False) for i in range(3)]
    guarded = PLAYBOOK.replace("guards: {max_affected: 10}", "guards: {max_affected: 2}")
    plan = _plan(views, guarded)
    assert plan.violations == (  # type: ignore[attr-defined]
        "the playbook would change 3 objects, more than its max_affected (2)",
    )
    step_guard = PLAYBOOK.replace(
        "    action: pause\n",
        "    action: pause\n    guards: {max_affected: 1, expect: non_empty}\n",
    )
    assert _plan(views, step_guard).violations == (  # type: ignore[attr-defined]
        "step 1 ('pause deployments') would pause 3 deployments, more than its max_affected (1)",
    )
    assert _plan([], step_guard).violations == (  # type: ignore[attr-defined]
        "step 1 ('pause deployments') selected no deployments, and its guards expect some"
        " (expect: non_empty)",
    )


def test_an_exclusion_that_left_out_nothing_is_flagged_and_can_be_required() -> None:
    playbook = loader.load_text(
        PLAYBOOK.replace(
            "select: {work_pools: k8s-prod}\n    action: pause",
            (
                "select: {work_pools: k8s-prod, exclude: [etl/backfil]}\n    action: pause\n"
                "    guards: {expect: exclusions_match}"
            ),
            1,
        ),
        env={},
    )
    seen = StepObservation(
        runs=(), objects=(_deployment("etl/nightly", False),), exclusions=(("etl/backfil", 0),)
    )
    observation = Observation(
        now=NOW, server_url="u", server_version="3.9.1", steps=(seen, StepObservation(runs=()))
    )
    plan = make_plan(playbook, observation, plan_id="p2")
    assert plan.notes == (
        "step 'pause deployments': select.exclude 'etl/backfil' matched none of the selected"
        " deployments",
    )
    assert plan.violations == (
        "step 1 ('pause deployments'): select.exclude 'etl/backfil' matched none of the"
        " selected deployments, and its guards expect every exclusion to match"
        " (expect: exclusions_match)",
    )


def test_the_plan_document_keeps_before_and_after_and_refuses_a_tampered_one(
    tmp_path: Path,
) -> None:
    plan = _plan([_deployment("etl/nightly", False), _deployment("etl/backfill", True)])
    text = dumps(plan)  # type: ignore[arg-type]
    document = json.loads(text)
    assert document["steps"][0]["target"] == "deployments"
    change = document["steps"][0]["changes"][0]
    assert (change["op"], change["before"], change["after"]) == (
        "pause",
        {"paused": False},
        {"paused": True},
    )
    assert [s["active"] for s in change["object"]["schedules"]] == [True, False]
    path = tmp_path / "plan.json"
    path.write_text(text)
    assert read_plan(path) == plan
    # A plan edited and signed again is still checked field by field.
    edits: dict[str, Callable[[dict[str, Any]], None]] = {
        "plan: steps[0].changes[1].op: a pause of an object the plan saw paused": (
            lambda d: d["steps"][0]["changes"][1].__setitem__("op", "pause")
        ),
        "plan: steps[0].changes[0].after.paused: expected true (a pause of an object the plan"
        " saw not paused), got false": (
            lambda d: d["steps"][0]["changes"][0].__setitem__("after", {"paused": False})
        ),
        'plan: steps[0].action: expected one of pause, resume; got "delete"': (
            lambda d: d["steps"][0].__setitem__("action", "delete")
        ),
    }
    for message, edit in edits.items():
        edited = json.loads(text)
        del edited["checksum"]
        edit(edited)
        edited["checksum"] = _checksum(edited)
        with pytest.raises(PlanFileError) as info:
            plan_from_json(edited)
        assert str(info.value) == message


def test_runner_checks_every_object_against_the_selection() -> None:
    view = _deployment("etl/nightly", False)
    select = ObjectSelect(
        names=("etl/night*",), tags=TagSelect(none=("keep-paused",)), paused=False
    )
    assert failed_keys(select, view) == []
    assert failed_keys(dataclasses.replace(select, paused=True), view) == ["paused"]
    assert failed_keys(ObjectSelect(names=("etl/daily",), work_pools=("other",)), view) == [
        "names",
        "work_pools",
    ]
    # Work queue filters never send work_pools (the server ignores it there).
    body, trusted = server_filter("work_queues", ObjectSelect(work_pools=("k8s-prod",)))
    assert (body, trusted) == ({}, frozenset())


def test_drift_compares_what_the_plan_saw_but_not_updated() -> None:
    view = _deployment("etl/nightly", False)
    later = dataclasses.replace(view, updated=datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert drift(view, later) is None
    assert drift(view, None) == "the deployment is gone since the plan"
    off = dataclasses.replace(
        view, schedules=(dataclasses.replace(view.schedules[0], active=False), view.schedules[1])
    )
    assert drift(view, off) == "its schedules changed since the plan"
    moved = dataclasses.replace(view, work_pool="other")
    assert drift(view, moved) == "its work pool changed since the plan (now other)"


def _scheduled(name: str, **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "id": str(uuid4()),
        "name": name,
        "auto_scheduled": True,
        "run_count": 0,
        "state": {"type": "SCHEDULED", "name": "Scheduled"},
        "next_scheduled_start_time": "2026-11-30T05:00:00Z",
    }
    run.update(fields)
    return run


def test_the_runs_a_deployment_write_deletes_follow_each_servers_rule() -> None:
    """Prefect's update_deployment: on 2.20 every auto-scheduled Scheduled-type run; on 3.x
    only those not run, not AwaitingConcurrencySlot and in the future. Runs made by hand
    (not auto-scheduled) stay on both."""
    runs = [
        _scheduled("later"),
        _scheduled("soon", next_scheduled_start_time="2026-11-30T04:30:00Z"),
        _scheduled(
            "late",
            state={"type": "SCHEDULED", "name": "Late"},
            next_scheduled_start_time="2026-11-30T03:00:00Z",
        ),
        _scheduled("retrying", run_count=1, state={"type": "SCHEDULED", "name": "AwaitingRetry"}),
        _scheduled("slot", state={"type": "SCHEDULED", "name": "AwaitingConcurrencySlot"}),
        _scheduled("by-hand", auto_scheduled=False),
        _scheduled("running", state={"type": "RUNNING", "name": "Running"}),
    ]
    three = deleted_with_write(runs, version="3.9.1", now=NOW)
    two = deleted_with_write(runs, version="2.20.26", now=NOW)
    unknown = deleted_with_write(runs, version=None, now=NOW)
    assert [r.name for r in three] == ["soon", "later"]
    assert [r.name for r in two][:2] == ["late", "soon"]  # by scheduled time
    assert sorted(r.name for r in two) == ["late", "later", "retrying", "slot", "soon"]
    assert unknown == two


def test_a_name_with_glob_characters_the_server_has_is_matched_literally() -> None:
    literal = literal_names(("p[1]", "q[12]", "plain"), ["p[1]", "p1", "q1"])
    assert literal == frozenset({"p[1]"})
    select = ObjectSelect(names=("p[1]", "q[12]"))
    views = {
        n: ObjectView(kind="work_pool", id=uuid4(), name=n, paused=False)
        for n in ("p[1]", "p1", "q1")
    }
    chosen = [n for n, v in views.items() if not failed_keys(select, v, literal)]
    assert chosen == ["p[1]", "q1"]


def test_the_plan_names_five_of_the_runs_a_pause_deletes_and_counts_the_rest() -> None:
    runs = tuple(
        ScheduledRun(id=UUID(int=i), name=f"run-{i}", state_name="Scheduled", scheduled=NOW)
        for i in range(1, 8)
    )
    text = to_text(_plan([_deployment("etl/nightly", False, scheduled_runs=runs)]))  # type: ignore[arg-type]
    (line,) = [x for x in text.splitlines() if x.startswith("  etl/nightly")]
    assert line.endswith(
        "-> paused; the server deletes its 7 scheduled runs: "
        + ", ".join(f"run-{i} (Scheduled 2026-11-30 04:00:00Z)" for i in range(1, 6))
        + " and 2 more (every one in the saved plan and --format json)"
    ), line
