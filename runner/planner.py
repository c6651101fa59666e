"""The pure planner: (playbook, observation) -> plan. No I/O, no clock, no globals.

Steps apply in order; a run selected by an earlier step is not selected by a later one. Each
selected run gets one :class:`~runner.plan.Change`: what will be sent, or a no-op with its
reason. Guards are checked here, so a plan that breaks one carries the violation and is
never applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta, timezone
from uuid import UUID

from runner import spool
from runner.plan import (
    CARRIED,
    ArchiveSpec,
    Carried,
    Change,
    Observation,
    Plan,
    RunView,
    StepObservation,
    StepPlan,
    TargetState,
    is_noop,
    is_pending,
)
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
from runner.selection import DEFAULT_SORT, SORT_KEYS
from runner.spool import Spool
from runner.targets import plan_change
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


def _reschedule_target(action: Reschedule, run: RunView, now: datetime) -> datetime | None:
    """A run's new time before any ``spread``: the ``at`` time, or ``delay`` after the run's
    current scheduled time (``from: scheduled``) or after the plan's now (``from: now``)."""
    if action.at is not None:
        return action.at.resolve(now)
    if action.delay is None:
        return None
    base = now if action.from_ == "now" else run.scheduled_time
    return None if base is None else base + action.delay


def _reschedule_slots(action: Reschedule, selected: Sequence[RunView]) -> dict[UUID, int]:
    """With ``spread``, each run's place in the stagger (0 for the first): the runs the step
    can give a new time, in the step's sort order. A run found already at its time keeps its
    place, so a plan made again after an apply finds every run where it was put."""
    slots: dict[UUID, int] = {}
    if action.spread is None:
        return slots
    for run in selected:
        if run.state_type != "SCHEDULED":
            continue
        if action.delay is not None and action.from_ == "scheduled" and run.scheduled_time is None:
            continue
        if action.recreates and run.deployment_id is None:
            continue  # left alone: nothing to recreate it from
        slots[run.id] = len(slots)
    return slots


def _idempotency_key(run: RunView) -> str:
    """The same for every plan of the same change: two applies of one recreate (two CI
    checkouts, a fresh plan after an interrupted apply) converge on one new run.

    Derived from the old run and the very state the plan saw, never from the plan: Prefect
    returns the run it made for a key it has seen (the key is scoped per flow; the old run's
    id is unique on the server). A run rescheduled again later is in a new state: a new key.
    """
    seen = str(run.state_id) if run.state_id else f"{run.state_type}:{run.state_name}"
    return f"runner:recreate:{run.id}:{seen}"


def _carry(run: RunView) -> tuple[Carried, ...]:
    """What a new run takes from the run it replaces: all a run made from a deployment can
    be given, where the plan kept it. The work queue only in a work pool (the server refuses
    a queue for a deployment without one; such a run is in the deployment's queue anyway);
    job variables where the server has them."""
    kept = {
        "name": True,
        "parameters": run.parameters is not None,
        "tags": True,
        "job_variables": run.job_variables is not None,
        "work_queue": run.work_pool is not None and run.work_queue is not None,
    }
    return tuple(name for name in CARRIED if kept[name])


def _make_reschedule(
    now: datetime, action: Reschedule, selected: Sequence[RunView]
) -> Callable[[int, Step, RunView, str, str], Change]:
    slots = _reschedule_slots(action, selected)

    def reschedule(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
        if run.state_type != "SCHEDULED":
            return _noop(
                index,
                run,
                f"{_state_label(run)}, not Scheduled: only scheduled runs are rescheduled",
            )
        try:
            when = _reschedule_target(action, run, now)
            if when is not None and action.spread is not None:
                when += action.spread * slots.get(run.id, 0)
        except OverflowError:
            return _noop(index, run, "the new start time would be outside the years 1-9999")
        if when is None:
            return _noop(index, run, "no scheduled or expected start time to add the delay to")
        state = TargetState(
            type="SCHEDULED", name="Scheduled", message=message, scheduled_time=when
        )
        if run.scheduled_time == when and run.state_name == "Scheduled":
            # Already where the plan would put it (a plan made again after an apply).
            return _noop(index, run, f"already scheduled at {_utc(when)}")
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
                carry=_carry(run),
            )
        return Change(step=index, run=run, op="set_state", state=state)

    return reschedule


def _finishing_recreates(
    plan_one: Callable[[int, Step, RunView, str, str], Change], selected: Sequence[RunView]
) -> Callable[[int, Step, RunView, str, str], Change]:
    """A run made by an unfinished recreate of another run this step selects is left alone:
    recreating it too would delete the run that carries the other's idempotency key, and the
    other's create would then make a second new run. The other's recreate finishes instead.

    Matched by the old run's id in the key, whatever state it names: the old run may have
    moved since (marked Late, say), and then gets a key of its own; its new run is still
    the one made for it."""
    # Only the runs that carry a recreate's key, and the runs they replace, are kept: not
    # every selected run (a large step's are read from disk).
    made = {old: run for run in selected if (old := _replaced_run(run.idempotency_key)) != ""}
    by_id = {str(run.id): run for run in selected if str(run.id) in made} if made else {}

    def plan(index: int, step: Step, run: RunView, message: str, plan_id: str) -> Change:
        old = by_id.get(_replaced_run(run.idempotency_key))
        if old is not None and old.id != run.id:
            return _noop(index, run, f"made by runner to replace {old.name}, recreated here")
        change = plan_one(index, step, run, message, plan_id)
        product = made.get(str(run.id))
        if change.op == "recreate" and product is not None and product.id != run.id:
            assert change.state is not None
            if product.state_type != "SCHEDULED":
                # Its create would return that run, started or finished: nothing to finish.
                return _noop(
                    index,
                    run,
                    f"an earlier apply already made {product.name} ({product.id}) to replace"
                    f" it, now {_state_label(product)}: delete or move that run, then plan"
                    " again",
                )
            # Its create returns the run already made for it (that run's key), as that run
            # is: the plan says so, with its time (which the guards check, past or not).
            state = dataclasses.replace(change.state, scheduled_time=product.scheduled_time)
            return dataclasses.replace(change, state=state, idempotency_key=product.idempotency_key)
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


def _uses_tags(step: Step) -> bool:
    return (
        isinstance(step.action, Tag)
        or step.select.tags is not None
        or any(e.select.tags is not None for e in step.select.exclude)
    )


def _archive_of(step: Step) -> ArchiveSpec | None:
    """What a delete step archives before each delete (None: nothing, or not a delete)."""
    if isinstance(step.action, Delete) and step.action.archive is not None:
        return ArchiveSpec(logs=step.action.archive.logs)
    return None


def _unmatched_exclusions(step: Step, seen: StepObservation) -> list[str]:
    """The exclusions that left out none of the runs the step's selection matched: a typo in
    a safety clause (``tags: {any: [Keep]}``) must be visible before anything is deleted."""
    if not seen.runs and not any(count for _, count in seen.exclusions):
        return []  # nothing selected: nothing an exclusion could have left out
    return [label for label, count in seen.exclusions if count == 0]


def _exclusion_notes(index: int, step: Step, unmatched: list[str]) -> list[str]:
    return [
        f"step {index + 1} ({step.name!r}): select.{label} matched none of the selected runs"
        " (a typo in a name or tag? runner checks names, not tags)"
        for label in unmatched
    ]


class _Tally:
    """What a step's guards look at, counted change by change as the planner makes them (a
    large step's changes then go to disk, never held together): the pending changes, the
    active runs they would delete or force a state on, the times they put in the past."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.pending = 0
        self.risky = 0
        self.risky_states: set[str] = set()
        self.past = 0
        self.earliest: datetime | None = None

    def add(self, change: Change) -> None:
        if change.is_noop:
            return
        self.pending += 1
        state = change.state
        if change.run.state_type in ACTIVE_STATE_TYPES and (
            change.op == "delete" or (state is not None and state.force)
        ):
            self.risky += 1
            self.risky_states.add(_state_label(change.run))
        when = state.scheduled_time if state is not None else None
        if when is not None and when < self.now:
            self.past += 1
            self.earliest = when if self.earliest is None else min(self.earliest, when)


def _step_violations(
    index: int,
    step: Step,
    guards: Guards,
    selected: int,
    tally: _Tally,
    unmatched: list[str],
    *,
    now: datetime,
) -> list[str]:
    label = f"step {index + 1} ({step.name!r})"
    violations = []
    pending, risky, risky_states = tally.pending, tally.risky, tally.risky_states
    past, earliest = tally.past, tally.earliest
    if "non_empty" in guards.expect and selected == 0:
        violations.append(
            f"{label} selected no runs, and its guards expect some (expect: non_empty)"
        )
    if "exclusions_match" in guards.expect and unmatched:
        violations.append(
            f"{label}: select.{', select.'.join(unmatched)} matched none of the selected runs,"
            " and its guards expect every exclusion to match (expect: exclusions_match)"
        )
    if step.guards and step.guards.max_affected is not None:
        limit = step.guards.max_affected
        if pending > limit:
            violations.append(
                f"{label} would change {plural(pending, 'run')}, more than its"
                f" max_affected ({limit})"
            )
    if not guards.allow_active and risky:
        what = "delete" if isinstance(step.action, Delete) else "force a state on"
        violations.append(
            f"{label} would {what} {risky} active runs ({', '.join(sorted(risky_states))})"
            " whose infrastructure may still run; cancel them first, or set"
            " guards.allow_active: true"
        )
    action = step.action
    if isinstance(action, Reschedule) and not action.allow_past and earliest is not None:
        later = (
            "choose a later 'at'"
            if action.at is not None
            else "count the delay from now (from: now)"
        )
        violations.append(
            f"{label} would schedule {past} runs in the past (earliest"
            f" {_utc(earliest)}; the plan was made at {_utc(now)}), so they would start"
            f" at once; {later}, or set allow_past: true"
        )
    return violations


def _object_step(
    playbook: Playbook, index: int, step: Step, seen: StepObservation, claimed: set[UUID]
) -> StepPlan:
    """A step on deployments, work pools or work queues: one change an object it selects
    (not one an earlier step selected)."""
    selected = [view for view in seen.objects if view.id not in claimed]
    claimed.update(view.id for view in selected)
    retry = step.retry or playbook.defaults.retry
    return StepPlan(
        index=index,
        name=step.name,
        action=step.action.kind,
        selected=len(selected),
        changes=(),
        concurrency=step.concurrency or playbook.defaults.concurrency,
        rate_limit=step.rate_limit or playbook.defaults.rate_limit,
        max_attempts=retry.max_attempts,
        backoff_seconds=retry.backoff.total_seconds(),
        max_backoff_seconds=retry.max_backoff.total_seconds(),
        target=step.target,
        objects=tuple(plan_change(index, view, step.action.kind) for view in selected),
    )


def _object_violations(
    index: int, step: Step, guards: Guards, plan: StepPlan, unmatched: list[str]
) -> list[str]:
    label = f"step {index + 1} ({step.name!r})"
    violations = []
    if "exclusions_match" in guards.expect and unmatched:
        violations.append(
            f"{label}: select.exclude {', '.join(repr(p) for p in unmatched)} matched none of"
            f" the selected {plan.noun}s, and its guards expect every exclusion to match"
            " (expect: exclusions_match)"
        )
    if "non_empty" in guards.expect and plan.selected == 0:
        violations.append(
            f"{label} selected no {plan.noun}s, and its guards expect some (expect: non_empty)"
        )
    pending = len(plan.pending_objects)
    deleted = _deleted_runs(plan)
    limit = step.guards.max_affected if step.guards else None
    if limit is not None and pending + deleted > limit:
        also = f" (and the server deletes {plural(deleted, 'scheduled run')})" if deleted else ""
        violations.append(
            f"{label} would {step.action.kind} {plural(pending, plan.noun)}{also}, more than"
            f" its max_affected ({limit})"
        )
    return violations


def _deleted_runs(step: StepPlan) -> int:
    """The scheduled runs the server deletes with the step's writes: they count against
    ``max_affected`` as runs the plan changes."""
    return sum(len(c.object.scheduled_runs) for c in step.pending_objects)


def _select(
    runs: Sequence[RunView], claimed: set[UUID], sort: str | None, limit: int | None
) -> Sequence[RunView]:
    """A step's runs, in its order and within its limit, less the runs an earlier step
    selected (a spool stays one: a large selection is never held whole)."""
    key = SORT_KEYS[sort or DEFAULT_SORT]
    candidates: Sequence[RunView] = runs
    if claimed:
        kept: Spool[RunView] = Spool(order=key)
        kept.extend(run for run in runs if run.id not in claimed)
        candidates = kept.seal()
    selected = spool.sort(candidates, key)
    return selected if limit is None else spool.head(selected, limit)


def _claims_matter(playbook: Playbook, index: int) -> bool:
    """Whether a later step selects flow runs (then this step's runs are claimed: a run is
    one step's at most). Spares a large last step a set of every run id it selects."""
    return any(step.target == "flow_runs" for step in playbook.steps[index + 1 :])


def _utc(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


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
        RetryRuns: _make_retry(now),
        Resume: _resume,
        Tag: _tag,
    }
    claimed: set[UUID] = set(exclude)
    steps: list[StepPlan] = []
    violations: list[str] = []
    notes: list[str] = list(observation.notes)
    for index, (step, seen) in enumerate(zip(playbook.steps, observation.steps, strict=True)):
        if step.target != "flow_runs":
            step_plan = _object_step(playbook, index, step, seen, claimed)
            left_out = any(count for _, count in seen.exclusions)
            unmatched = [
                pattern
                for pattern, count in seen.exclusions
                if count == 0 and (seen.objects or left_out)
            ]
            notes += [
                f"step {step.name!r}: select.exclude {pattern!r} matched none of the selected"
                f" {step_plan.noun}s"
                for pattern in unmatched
            ]
            violations += _object_violations(
                index, step, _guards_for(playbook, step), step_plan, unmatched
            )
            steps.append(step_plan)
            continue
        selected = _select(seen.runs, claimed, step.select.sort, step.select.limit)
        if _claims_matter(playbook, index):
            claimed.update(run.id for run in selected)
        override = getattr(step.action, "message", None)
        message = playbook.message_for(step, override)
        if isinstance(step.action, Reschedule):
            plan_one = _make_reschedule(now, step.action, selected)
            if step.action.recreates:
                plan_one = _finishing_recreates(plan_one, selected)
        else:
            plan_one = planners[type(step.action)]
        # One pass: each change is spooled (a large step's go to disk), counted and
        # tallied for the guards as it is made.
        made: Spool[Change] = Spool(counts=(is_pending, is_noop))
        tally = _Tally(now)
        for run in selected:
            change = plan_one(index, step, run, message, plan_id)
            tally.add(change)
            made.append(change)
        changes = made.seal()
        unmatched = _unmatched_exclusions(step, seen)
        notes += _exclusion_notes(index, step, unmatched)
        violations += _step_violations(
            index, step, _guards_for(playbook, step), len(selected), tally, unmatched, now=now
        )
        retry = step.retry or playbook.defaults.retry
        steps.append(
            StepPlan(
                index=index,
                name=step.name,
                action=step.action.kind,
                selected=len(selected),
                changes=changes,
                concurrency=step.concurrency or playbook.defaults.concurrency,
                rate_limit=step.rate_limit or playbook.defaults.rate_limit,
                max_attempts=retry.max_attempts,
                backoff_seconds=retry.backoff.total_seconds(),
                max_backoff_seconds=retry.max_backoff.total_seconds(),
                show_tags=_uses_tags(step),
                allow_past=isinstance(step.action, Reschedule) and step.action.allow_past,
                archive=_archive_of(step),
            )
        )
    total = sum(len(s.pending) + _deleted_runs(s) for s in steps)
    objects = sum(len(s.pending_objects) for s in steps)
    limit = playbook.guards.max_affected
    if limit is not None and total + objects > limit:
        what = " and ".join(
            [plural(total, "run")] * bool(total or not objects)
            + [plural(objects, "object")] * bool(objects)
        )
        violations.append(f"the playbook would change {what}, more than its max_affected ({limit})")
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
        notes=tuple(notes),
    )
