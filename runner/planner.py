"""The pure planner: (playbook, observation) -> plan. No I/O, no clock, no globals.

Steps apply in order; a run selected by an earlier step is not selected by a later one. Each
selected run gets one :class:`~runner.plan.Change`: what will be sent, or a no-op with its
reason. Guards are checked here, so a plan that breaks one carries the violation and is
never applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from uuid import UUID

from runner.plan import Change, Observation, Plan, RunView, StepPlan, TargetState
from runner.playbook import (
    Cancel,
    Delete,
    Guards,
    Playbook,
    Reschedule,
    Resume,
    RetryRuns,
    SetState,
    Step,
    Tag,
)
from runner.selection import order
from runner.words import plural

ACTIVE_STATE_TYPES = frozenset({"PENDING", "RUNNING", "PAUSED", "CANCELLING"})
TERMINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
DEFAULT_STATE_NAMES = {
    "SCHEDULED": "Scheduled",
    "PENDING": "Pending",
    "RUNNING": "Running",
    "PAUSED": "Paused",
    "CANCELLING": "Cancelling",
    "COMPLETED": "Completed",
    "FAILED": "Failed",
    "CANCELLED": "Cancelled",
    "CRASHED": "Crashed",
}


def _state_label(run: RunView) -> str:
    return run.state_name or (run.state_type or "no state").title()


def _noop(index: int, run: RunView, reason: str) -> Change:
    return Change(step=index, run=run, op="noop", reason=reason)


def _delete(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
    return Change(step=index, run=run, op="delete")


def _cancel(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
    if run.state_type in TERMINAL_STATE_TYPES:
        return _noop(index, run, f"already {_state_label(run)}")
    if run.state_type == "CANCELLING":
        return _noop(index, run, "already Cancelling")
    if run.state_type == "SCHEDULED" or run.state_type is None:
        # No infrastructure exists yet: the run can end Cancelled straight away.
        state = TargetState(type="CANCELLED", name="Cancelled", message=message)
    else:
        # Pending, Running, Paused: its worker must tear the infrastructure down.
        state = TargetState(type="CANCELLING", name="Cancelling", message=message)
    return Change(step=index, run=run, op="set_state", state=state)


def _set_state(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
    action = step.action
    assert isinstance(action, SetState)
    name = action.name or DEFAULT_STATE_NAMES[action.type.value]
    if run.state_type == action.type.value and run.state_name == name:
        return _noop(index, run, f"already {name}")
    state = TargetState(type=action.type.value, name=name, message=message, force=action.force)
    return Change(step=index, run=run, op="set_state", state=state)


def _reschedule_time(action: Reschedule, run: RunView, now: datetime) -> datetime | None:
    if action.at is not None:
        return action.at.resolve(now)
    if run.expected_start is None or action.delay is None:
        return None
    return run.expected_start + action.delay


def _idempotency_key(run: RunView) -> str:
    """The same for every plan of the same change: two applies of one recreate (two CI
    checkouts, a fresh plan after an interrupted apply) converge on one new run.

    Derived from the old run and the very state the plan saw, never from the plan: Prefect
    returns the run it made for a key it has seen (the key is scoped per flow; the old run's
    id is unique on the server). A run rescheduled again later is in a new state: a new key.
    """
    seen = str(run.state_id) if run.state_id else f"{run.state_type}:{run.state_name}"
    return f"runner:recreate:{run.id}:{seen}"


def _make_reschedule(now: datetime) -> Callable[[int, Step, RunView, str, str], Change]:
    def reschedule(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
        action = step.action
        assert isinstance(action, Reschedule)
        if run.state_type != "SCHEDULED":
            return _noop(
                index,
                run,
                f"{_state_label(run)}, not Scheduled: only scheduled runs are rescheduled",
            )
        try:
            when = _reschedule_time(action, run, now)
        except OverflowError:
            return _noop(index, run, "the new start time would be outside the years 1-9999")
        if when is None:
            return _noop(index, run, "no expected start time to add the delay to")
        state = TargetState(
            type="SCHEDULED", name="Scheduled", message=message, scheduled_time=when
        )
        if action.recreates:
            if run.deployment_id is None:
                return _noop(index, run, "not a deployment run: nothing to recreate it from")
            return Change(
                step=index,
                run=run,
                op="recreate",
                state=state,
                tags=run.tags,
                idempotency_key=_idempotency_key(run),
            )
        if run.scheduled_time == when and run.state_name == "Scheduled":
            return _noop(index, run, f"already scheduled at {when.isoformat()}")
        return Change(step=index, run=run, op="set_state", state=state)

    return reschedule


def _finishing_recreates(
    plan_one: Callable[[int, Step, RunView, str, str], Change], selected: list[RunView]
) -> Callable[[int, Step, RunView, str, str], Change]:
    """A run made by an unfinished recreate of another run this step selects is left alone:
    recreating it too would delete the run that carries the other's idempotency key, and the
    other's create would then make a second new run. The other's recreate finishes instead.

    Matched by the old run's id in the key, whatever state it names: the old run may have
    moved since (marked Late, say), and then gets a key of its own; its new run is still
    the one made for it."""
    by_id = {str(run.id): run for run in selected}
    made = {_replaced_run(run.idempotency_key): run for run in selected}

    def plan(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
        old = by_id.get(_replaced_run(run.idempotency_key))
        if old is not None and old.id != run.id:
            return _noop(index, run, f"made by runner to replace {old.name}, recreated here")
        change = plan_one(index, step, run, message, plan_id)
        product = made.get(str(run.id))
        if change.op == "recreate" and product is not None and product.id != run.id:
            # Its create must return the run already made for it: that run's key.
            return dataclasses.replace(change, idempotency_key=product.idempotency_key)
        return change

    return plan


def _replaced_run(key: str | None) -> str:
    """The old run a ``runner:recreate:<old run id>:<state>`` key names ("" for others)."""
    parts = (key or "").split(":")
    return parts[2] if len(parts) == 4 and parts[:2] == ["runner", "recreate"] else ""


def _make_retry(now: datetime) -> Callable[[int, Step, RunView, str, str], Change]:
    def retry(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
        action = step.action
        assert isinstance(action, RetryRuns)
        if run.state_type not in ("FAILED", "CRASHED"):
            return _noop(
                index, run, f"{_state_label(run)}, not Failed or Crashed: nothing to retry"
            )
        if run.deployment_id is None:
            # The server aborts it: "Cannot reschedule a run without an associated deployment."
            return _noop(index, run, "not a deployment run: Prefect retries only deployment runs")
        try:
            when = now + (action.delay or timedelta(0))
        except OverflowError:
            return _noop(index, run, "the retry time would be outside the years 1-9999")
        # AwaitingRetry, as Prefect's own retry proposes; not forced: the server accepts it
        # from Failed and Crashed (3.8 and 2.20), and its rules stay in charge.
        state = TargetState(
            type="SCHEDULED", name="AwaitingRetry", message=message, scheduled_time=when
        )
        return Change(step=index, run=run, op="set_state", state=state)

    return retry


def _resume(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
    if run.state_type != "PAUSED":
        return _noop(index, run, f"{_state_label(run)}, not Paused: nothing to resume")
    return Change(step=index, run=run, op="resume")


def _tag(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
    action = step.action
    assert isinstance(action, Tag)
    removed = set(action.remove)
    tags = tuple(t for t in dict.fromkeys([*run.tags, *action.add]) if t not in removed)
    if tags == run.tags:
        return _noop(index, run, "tags already as wanted")
    return Change(step=index, run=run, op="tag", tags=tags)


def _guards_for(playbook: Playbook, step: Step) -> Guards:
    return step.guards or playbook.guards


def _step_violations(
    index: int, step: Step, guards: Guards, selected: int, changes: list[Change]
) -> list[str]:
    label = f"step {index + 1} ({step.name!r})"
    violations = []
    pending = [c for c in changes if not c.is_noop]
    if guards.expect == "non_empty" and selected == 0:
        violations.append(
            f"{label} selected no runs, and its guards expect some (expect: non_empty)"
        )
    if step.guards and step.guards.max_affected is not None:
        limit = step.guards.max_affected
        if len(pending) > limit:
            violations.append(
                f"{label} would change {plural(len(pending), 'run')}, more than its"
                f" max_affected ({limit})"
            )
    if not guards.allow_active:
        risky = [
            c
            for c in pending
            if c.run.state_type in ACTIVE_STATE_TYPES
            and (c.op == "delete" or (c.state is not None and c.state.force))
        ]
        if risky:
            what = "delete" if isinstance(step.action, Delete) else "force a state on"
            states = sorted({_state_label(c.run) for c in risky})
            violations.append(
                f"{label} would {what} {len(risky)} active runs ({', '.join(states)}) whose"
                " infrastructure may still run; cancel them first, or set guards.allow_active: true"
            )
    return violations


def make_plan(
    playbook: Playbook,
    observation: Observation,
    *,
    plan_id: str,
    exclude: Collection[UUID] = (),
) -> Plan:
    """The plan for ``playbook`` against what ``observation`` saw. Pure.

    Runs in ``exclude`` are never selected (the flow run applying the playbook, say).
    """
    if len(observation.steps) != len(playbook.steps):
        raise ValueError("the observation does not match the playbook's steps")
    now = observation.now
    planners: dict[type, Callable[[int, Step, RunView, str, str], Change]] = {
        Delete: _delete,
        Cancel: _cancel,
        SetState: _set_state,
        Reschedule: _make_reschedule(now),
        RetryRuns: _make_retry(now),
        Resume: _resume,
        Tag: _tag,
    }
    claimed: set[UUID] = set(exclude)
    steps: list[StepPlan] = []
    violations: list[str] = []
    for index, (step, seen) in enumerate(zip(playbook.steps, observation.steps, strict=True)):
        candidates = [run for run in seen.runs if run.id not in claimed]
        selected = order(candidates, step.select.sort)
        if step.select.limit is not None:
            selected = selected[: step.select.limit]
        claimed.update(run.id for run in selected)
        override = getattr(step.action, "message", None)
        message = playbook.message_for(step, override)
        plan_one = planners[type(step.action)]
        if isinstance(step.action, Reschedule) and step.action.recreates:
            plan_one = _finishing_recreates(plan_one, selected)
        changes = [plan_one(index, step, run, message, plan_id) for run in selected]
        violations += _step_violations(
            index, step, _guards_for(playbook, step), len(selected), changes
        )
        retry = step.retry or playbook.defaults.retry
        steps.append(
            StepPlan(
                index=index,
                name=step.name,
                action=step.action.kind,
                selected=len(selected),
                changes=tuple(changes),
                concurrency=step.concurrency or playbook.defaults.concurrency,
                rate_limit=step.rate_limit or playbook.defaults.rate_limit,
                max_attempts=retry.max_attempts,
                backoff_seconds=retry.backoff.total_seconds(),
                max_backoff_seconds=retry.max_backoff.total_seconds(),
            )
        )
    total = sum(len(s.pending) for s in steps)
    limit = playbook.guards.max_affected
    if limit is not None and total > limit:
        violations.append(
            f"the playbook would change {plural(total, 'run')}, more than its max_affected"
            f" ({limit})"
        )
    return Plan(
        id=plan_id,
        created_at=now,
        playbook_name=playbook.name,
        playbook_path=playbook.path,
        playbook_digest=playbook.digest,
        variables=dict(playbook.vars),
        server_url=observation.server_url,
        server_version=observation.server_version,
        steps=tuple(steps),
        violations=tuple(violations),
        notes=observation.notes,
    )
