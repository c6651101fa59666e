"""``runner undo`` without a server: what the journal records for it (compact, old journals
still read), and the pure builder of the undo plan (each kind of change's inverse, or why it
cannot be undone, word for word)."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from runner.errors import CheckpointError
from runner.journal import Entry, Journal, JournalState, Replaced, read_journal
from runner.plan import Change, Plan, RunView, StepPlan, TargetState
from runner.planfile import read_plan, write_plan
from runner.undo import RULES, UndoGuards, make_undo_plan, read_applied

NOW = datetime(2026, 11, 30, 4, 0, tzinfo=timezone.utc)
AT = NOW + timedelta(hours=1)


def test_a_made_state_change_records_the_state_it_left_and_the_message_it_replaced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpoint.jsonl"
    left = str(uuid4())
    with Journal(path, plan_id="p1", plan_checksum="c1") as journal:
        journal.record("0:a", "done", detail="Cancelled", state_after=left, replaced=Replaced())
        journal.record(
            "0:b", "done", detail="Scheduled", state_after=left, replaced=Replaced(message="m")
        )
        journal.record(
            "0:c",
            "raced",
            detail="Cancelled, but ...",
            state_after=left,
            replaced=Replaced(
                message=None,
                as_planned=False,
                id="s1",
                type="RUNNING",
                name="Running",
            ),
        )
        journal.record("0:d", "done", detail="tags x")
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    # Only what the plan does not hold already: the state left, the replaced state's message;
    # the whole replaced state only when it is not the one the plan saw.
    assert lines == [
        {"key": "0:a", "status": "done", "detail": "Cancelled", "sid": left, "msg": None},
        {"key": "0:b", "status": "done", "detail": "Scheduled", "sid": left, "msg": "m"},
        {
            "key": "0:c",
            "status": "raced",
            "detail": "Cancelled, but ...",
            "sid": left,
            "was": {"id": "s1", "type": "RUNNING", "name": "Running"},
        },
        {"key": "0:d", "status": "done", "detail": "tags x"},
    ]
    state = read_journal(path, plan_id="p1")
    assert state.entries["0:a"].state_after == left
    assert state.entries["0:a"].replaced == Replaced()
    assert state.entries["0:b"].replaced == Replaced(message="m")
    assert state.entries["0:c"].replaced == Replaced(
        as_planned=False, id="s1", type="RUNNING", name="Running"
    )
    assert state.entries["0:d"].state_after is None
    assert state.entries["0:d"].replaced is None


def run(state: str = "CANCELLED", name: str = "Cancelled", **kwargs: object) -> RunView:
    values: dict[str, object] = {
        "id": uuid4(),
        "name": "brave-fox",
        "flow": "etl",
        "state_type": state,
        "state_name": name,
        "state_id": uuid4(),
        "tags": ("a",),
    }
    values.update(kwargs)
    return RunView(**values)  # type: ignore[arg-type]


def step(index: int, changes: list[Change], action: str = "cancel") -> StepPlan:
    return StepPlan(
        index=index,
        name=f"step {index}",
        action=action,
        selected=len(changes),
        changes=tuple(changes),
        concurrency=4,
        rate_limit=None,
        max_attempts=3,
    )


def plan_of(*steps: StepPlan) -> Plan:
    return Plan(
        id="applied00001",
        created_at=NOW - timedelta(minutes=5),
        playbook_name="ops",
        playbook_path="ops.yaml",
        playbook_digest="d",
        variables={},
        server_url="http://x/api",
        server_version="3.9.1",
        steps=steps,
    )


def undo_of(
    plan: Plan, entries: list[Entry], current: dict[UUID, RunView], **kwargs: object
) -> Plan:
    journal = JournalState(plan_id=plan.id, entries={e.key: e for e in entries})
    journal.archive = "archive.jsonl.gz"
    return make_undo_plan(
        plan,
        journal,
        current,
        plan_id="undo00000001",
        now=NOW,
        server_url=plan.server_url,
        server_version="3.9.1",
        folder=".runner/applied00001",
        **kwargs,  # type: ignore[arg-type]
    )


def left_as(
    view: RunView, state_type: str, state_name: str, state_id: str, **kwargs: object
) -> RunView:
    """``view`` as the apply left it: in the state ``state_id``, and ``kwargs``."""
    return dataclasses.replace(
        view,
        state_type=state_type,
        state_name=state_name,
        state_id=UUID(state_id),
        **kwargs,  # type: ignore[arg-type]
    )


def test_each_kind_of_change_gets_its_inverse_or_its_reason() -> None:
    late = run("SCHEDULED", "Late", state_scheduled_time=NOW - timedelta(hours=1))
    moved = Change(
        step=0,
        run=late,
        op="set_state",
        state=TargetState("SCHEDULED", "Scheduled", scheduled_time=NOW + timedelta(hours=5)),
    )
    scheduled = run("SCHEDULED", "Scheduled", next_scheduled_start=AT)
    cancelled = Change(
        step=1, run=scheduled, op="set_state", state=TargetState("CANCELLED", "Cancelled")
    )
    running = run("RUNNING", "Running")
    stopped = Change(
        step=1, run=running, op="set_state", state=TargetState("CANCELLING", "Cancelling")
    )
    failed = run("FAILED", "Failed")
    forced = Change(
        step=2, run=failed, op="set_state", state=TargetState("COMPLETED", "Completed", force=True)
    )
    pending = run("PENDING", "Pending")
    unstuck = Change(step=2, run=pending, op="set_state", state=TargetState("FAILED", "Failed"))
    tagged = run("SCHEDULED", "Scheduled", tags=("a", "b"))
    tag = Change(step=3, run=tagged, op="tag", tags=("a", "x"))
    gone = Change(step=4, run=run("COMPLETED", "Completed"), op="delete")
    remade = Change(
        step=4,
        run=run("SCHEDULED", "Late"),
        op="recreate",
        state=TargetState("SCHEDULED", "Scheduled", scheduled_time=AT),
    )
    resumed = Change(step=4, run=run("PAUSED", "Paused"), op="resume")
    plan = plan_of(
        step(0, [moved], "reschedule"),
        step(1, [cancelled, stopped]),
        step(2, [forced, unstuck], "set_state"),
        step(3, [tag], "tag"),
        step(4, [gone, remade, resumed], "delete"),
    )
    sids = {c.key: str(uuid4()) for c in plan.pending}
    new_run = str(uuid4())
    entries = [
        Entry(moved.key, "done", "Scheduled", state_after=sids[moved.key], replaced=Replaced("hi")),
        Entry(cancelled.key, "done", "Cancelled", state_after=sids[cancelled.key]),
        Entry(stopped.key, "done", "Cancelling", state_after=sids[stopped.key]),
        Entry(forced.key, "done", "Completed", state_after=sids[forced.key], replaced=Replaced()),
        Entry(unstuck.key, "done", "Failed", state_after=sids[unstuck.key]),
        Entry(tag.key, "done", "tags a, x"),
        Entry(gone.key, "done", "deleted"),
        Entry(remade.key, "done", f"recreated as {new_run}", new_run_id=new_run),
        Entry(resumed.key, "done", "Running"),
    ]
    current = {
        late.id: left_as(late, "SCHEDULED", "Scheduled", sids[moved.key]),
        scheduled.id: left_as(scheduled, "CANCELLED", "Cancelled", sids[cancelled.key]),
        failed.id: left_as(failed, "COMPLETED", "Completed", sids[forced.key]),
        tagged.id: left_as(tagged, "SCHEDULED", "Scheduled", str(tagged.state_id), tags=("a", "x")),
    }
    undo = undo_of(plan, entries, current)

    assert undo.playbook_name == "undo of applied00001"
    assert undo.playbook_digest == "undo:applied00001"
    assert [s.name for s in undo.steps] == [
        "undo step 5 (step 4)",
        "undo step 4 (step 3)",
        "undo step 3 (step 2)",
        "undo step 2 (step 1)",
        "undo step 1 (step 0)",
    ]
    by_run = {c.run.id: c for c in undo.changes}
    assert by_run[late.id].state == TargetState(
        "SCHEDULED", "Late", message="hi", scheduled_time=NOW - timedelta(hours=1), force=True
    )
    assert by_run[late.id].run == current[late.id]
    assert by_run[scheduled.id].state == TargetState(
        "SCHEDULED", "Scheduled", scheduled_time=AT, force=True
    )
    assert by_run[failed.id].state == TargetState("FAILED", "Failed", force=True)
    assert (by_run[tagged.id].op, by_run[tagged.id].tags) == ("tag", ("a", "b"))
    reasons = {c.run.id: c.reason for c in undo.changes if c.is_noop}
    assert reasons == {
        running.id: "cancelled while Running by the apply: its infrastructure was torn down,"
        " which no state brings back (retry the run instead)",
        pending.id: "it was Pending before the apply: a Pending state written now would not"
        " bring back what ran it (its worker, its process, its infrastructure)",
        gone.run.id: "deleted by the apply, which cannot be undone (its record is in the"
        " archive .runner/applied00001/archive.jsonl.gz)",
        remade.run.id: f"recreated as run {new_run} by the apply: the old run is deleted, which"
        " cannot be undone; the new run stays (delete it by hand if it is not wanted)",
        resumed.run.id: "resumed by the apply: a run cannot be paused again from outside its"
        " process",
    }
    assert undo.notes == (
        "undoes plan applied00001 (ops): 4 of 9 changes to put back; 5 cannot be, each listed"
        " as unchanged with the reason",
        "1 run will be back at a start time that has passed: a worker starts each as soon as it"
        " sees it, as it would have before the apply",
        "1 run will be back without the message of the state it had (the checkpoint does not"
        " have it)",
        "1 run will be back in a final state without the result reference that state held (a"
        " state written now carries none; the result itself, where it was persisted, stays"
        " where it is)",
    )


def test_what_the_apply_did_not_make_as_planned_is_said_and_left_alone() -> None:
    views = [run() for _ in range(6)]
    changes = [
        Change(step=0, run=v, op="set_state", state=TargetState("SCHEDULED", "Scheduled"))
        for v in views
    ]
    plan = plan_of(step(0, changes, "set_state"))
    new_run = str(uuid4())
    entries = [
        Entry(changes[0].key, "drifted", "now Running, planned from Cancelled"),
        Entry(changes[1].key, "failed", "REJECT: no"),
        Entry(changes[2].key, "raced", "Scheduled, but it landed on Running"),
        Entry(changes[3].key, "created", "new run created", new_run_id=new_run),
        # changes[4]: never journaled (pending)
        Entry(changes[5].key, "done", "Scheduled"),  # an old journal: no sid
    ]
    undo = undo_of(plan, entries, {})
    assert [c.reason for c in undo.changes] == [
        "left alone by the apply (drifted: now Running, planned from Cancelled): nothing to undo",
        "not made: it failed in the apply: REJECT: no",
        "made over a state the plan did not see (raced: Scheduled, but it landed on Running):"
        " not as planned, so not undone; look at it by hand",
        f"half a recreate: new run {new_run} made, the old run not deleted yet (runner apply"
        " --resume .runner/applied00001 finishes it)",
        "not applied (the apply did not get to it; runner apply --resume .runner/applied00001)",
        "the checkpoint does not say which state the apply left (written by a runner before"
        " undo): runner cannot check the run is still in it",
    ]
    assert not undo.has_changes


def test_a_run_changed_since_the_apply_is_left_alone() -> None:
    views = [run("SCHEDULED", "Scheduled", next_scheduled_start=AT) for _ in range(5)]
    changes = [
        Change(step=0, run=v, op="set_state", state=TargetState("CANCELLED", "Cancelled"))
        for v in views
    ]
    plan = plan_of(step(0, changes))
    sids = [str(uuid4()) for _ in views]
    entries = [
        Entry(c.key, "done", "Cancelled", state_after=s) for c, s in zip(changes, sids, strict=True)
    ]
    current = {
        views[0].id: left_as(views[0], "CANCELLED", "Cancelled", str(uuid4())),  # a new state
        views[1].id: left_as(views[1], "CANCELLED", "Cancelled", sids[1], tags=("b",)),
        views[2].id: left_as(views[2], "CANCELLED", "Cancelled", sids[2], name="renamed"),
        views[3].id: left_as(views[3], "CANCELLED", "Cancelled", sids[3]),
        # views[4]: gone
    }
    undo = undo_of(plan, entries, current, undone={views[3].id: "undo00000000"})
    assert [c.reason for c in undo.changes] == [
        "changed since the apply (now Cancelled, in a state the apply did not leave): left alone",
        "changed since the apply (its tags): left alone",
        "changed since the apply (renamed renamed): left alone",
        "undone already (undo plan undo00000000)",
        "the run no longer exists: left alone",
    ]


def test_every_kind_of_change_a_plan_makes_has_a_rule() -> None:
    from typing import get_args

    from runner.plan import Op

    assert set(RULES) == set(get_args(Op)) - {"noop"}


def test_an_undo_plan_is_saved_and_read_back(tmp_path: Path) -> None:
    view = run("SCHEDULED", "Scheduled", next_scheduled_start=AT)
    change = Change(step=0, run=view, op="set_state", state=TargetState("CANCELLED", "Cancelled"))
    plan = plan_of(step(0, [change]))
    sid = str(uuid4())
    current = {view.id: left_as(view, "CANCELLED", "Cancelled", sid)}
    undo = undo_of(plan, [Entry(change.key, "done", "Cancelled", state_after=sid)], current)
    write_plan(undo, tmp_path / "undo.json")
    again = read_plan(tmp_path / "undo.json")
    assert again.changes == undo.changes
    assert again.steps[0].action == "undo"
    assert again.changes[0].state == TargetState(
        "SCHEDULED", "Scheduled", scheduled_time=AT, force=True
    )


def test_an_apply_that_is_running_is_not_undone(tmp_path: Path) -> None:
    plan = plan_of(step(0, []))
    checksum = write_plan(plan, tmp_path / "plan.json")
    with (
        Journal(tmp_path / "checkpoint.jsonl", plan_id=plan.id, plan_checksum=checksum),
        pytest.raises(CheckpointError) as info,
    ):
        read_applied(tmp_path)

    assert str(info.value) == (
        f"plan applied00001 is being applied now (pid {os.getpid()}): undo it once that apply ends"
    )
    assert read_applied(tmp_path)[0].id == plan.id


def test_a_plan_never_applied_has_nothing_to_undo(tmp_path: Path) -> None:
    write_plan(plan_of(step(0, [])), tmp_path / "plan.json")
    with pytest.raises(CheckpointError) as info:
        read_applied(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: no checkpoint: plan applied00001 was never applied, nothing to undo"
    )


def test_the_undo_keeps_to_its_guards() -> None:
    failed = [run("FAILED", "Failed") for _ in range(3)]
    changes = [
        Change(step=0, run=v, op="set_state", state=TargetState("RUNNING", "Running", force=True))
        for v in failed
    ]
    plan = plan_of(step(0, changes, "set_state"))
    sids = [str(uuid4()) for _ in failed]
    entries = [
        Entry(c.key, "done", "Running", state_after=s) for c, s in zip(changes, sids, strict=True)
    ]
    current = {v.id: left_as(v, "RUNNING", "Running", s) for v, s in zip(failed, sids, strict=True)}
    undo = undo_of(plan, entries, current, guards=UndoGuards(max_affected=2))
    assert undo.violations == (
        "the undo would change 3 runs, more than --max-affected (2)",
        "the undo would force a state on 3 active runs (Running) whose infrastructure may still"
        " run; cancel them first, or pass --allow-active",
    )
    allowed = undo_of(plan, entries, current, guards=UndoGuards(allow_active=True))
    assert allowed.violations == ()
    assert [c.state for c in allowed.changes] == [TargetState("FAILED", "Failed", force=True)] * 3
