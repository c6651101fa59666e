"""A plan and what it is made from, as plain data: every run a playbook will touch, its state
before and what it will be after; and the observation of the server the planner reads.

No I/O here. The plan's JSON document (writing, reading, checksum, applicability) is
:mod:`runner.planfile`.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from runner.spool import chained, is_spooled, where

Op = Literal["delete", "set_state", "recreate", "resume", "tag", "noop"]
#: The action of the steps of a plan ``runner undo`` made (:mod:`runner.undo`), and the ops
#: their changes may be (an inverse is one of these; the rest cannot be undone: no-ops).
UNDO_ACTION = "undo"
UNDO_OPS: frozenset[Op] = frozenset({"set_state", "tag", "noop"})
#: What a recreate's new run takes from the old run (its ``RunView`` field of the same name;
#: ``tags`` from the change). The deployment gives the rest.
Carried = Literal["name", "parameters", "tags", "job_variables", "work_queue"]
CARRIED: tuple[Carried, ...] = ("name", "parameters", "tags", "job_variables", "work_queue")
#: What recreates carried before plans listed it: a plan without ``carry`` is applied so.
LEGACY_CARRY: tuple[Carried, ...] = ("parameters", "tags")


@dataclass(frozen=True, slots=True)
class RunView:
    """What the plan saw of a run when it was observed."""

    id: UUID
    name: str
    flow: str
    deployment: str | None = None  # "flow/deployment"
    deployment_id: UUID | None = None
    state_type: str | None = None
    state_name: str | None = None
    #: The id of the very state the plan saw: a run in any other state (even one of the same
    #: type and name, made later) has drifted. None in plans made before runner kept it.
    state_id: UUID | None = None
    #: When the run entered the state the plan saw (the state's timestamp).
    state_since: datetime | None = None
    expected_start: datetime | None = None
    next_scheduled_start: datetime | None = None
    #: The time of the Scheduled-type state the plan saw (``state_details.scheduled_time``),
    #: kept only where it differs from ``next_scheduled_start``: Prefect sets that from the
    #: state's time whenever a run enters a Scheduled-type state, so it is None almost always.
    state_scheduled_time: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    created: datetime | None = None
    tags: tuple[str, ...] = ()
    work_queue: str | None = None
    work_pool: str | None = None
    parent_task_run_id: UUID | None = None
    #: Kept for runs a step will recreate (they carry over to the new run) or selects by
    #: parameters (a change of them since the plan is drift).
    parameters: dict[str, Any] | None = None
    #: Only kept for runs a step will recreate; None where the server has none (old 2.x).
    job_variables: dict[str, Any] | None = None
    #: Only kept for runs a step will recreate: a run made by an earlier, unfinished
    #: recreate carries the key of the run it replaces.
    idempotency_key: str | None = None

    @property
    def scheduled_time(self) -> datetime | None:
        """When a scheduled run will start: its state's scheduled time (Prefect's
        ``next_scheduled_start_time`` holds it), else its expected start."""
        return self.state_scheduled_time or self.next_scheduled_start or self.expected_start


@dataclass(frozen=True, slots=True)
class TargetState:
    """The state a change proposes."""

    type: str
    name: str
    message: str | None = None
    scheduled_time: datetime | None = None
    force: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """One run, one step: what will be done (``op``), or why nothing (``reason``)."""

    step: int
    run: RunView
    op: Op
    reason: str | None = None
    state: TargetState | None = None
    tags: tuple[str, ...] | None = None
    idempotency_key: str | None = None
    #: For ``recreate``: what the new run takes from the old one (None: plans made before
    #: runner listed it, which carried :data:`LEGACY_CARRY`).
    carry: tuple[Carried, ...] | None = None

    @property
    def is_noop(self) -> bool:
        return self.op == "noop"

    @property
    def key(self) -> str:
        """Identifies the change within its plan (checkpoints refer to changes by it)."""
        return f"{self.step}:{self.run.id}"


#: What a step that is not on flow runs acts on, one object at a time.
ObjectKind = Literal["deployment", "work_pool", "work_queue"]
ObjectOp = Literal["pause", "resume", "noop"]


@dataclass(frozen=True, slots=True)
class ScheduleView:
    """One of a deployment's schedules as the plan saw it."""

    id: UUID
    active: bool
    #: What it is, for the reviewer ("every 3600s", "cron 0 0 * * *").
    schedule: str
    #: Its time zone, shown beside ``schedule`` (None: the server gave none).
    timezone: str | None = None
    #: The server's schedule object as canonical JSON (interval, anchor, cron, rrule, time
    #: zone...): an edit in place (same id) changes it, which is drift.
    content: str = ""


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """A deployment's run that the server deletes when the deployment's ``paused`` flag is
    written (see :func:`runner.targets.deleted_with_write`)."""

    id: UUID
    name: str
    state_name: str
    #: When it is scheduled to start.
    scheduled: datetime | None = None


@dataclass(frozen=True, slots=True)
class ObjectView:
    """What the plan saw of a deployment, work pool or work queue."""

    kind: ObjectKind
    id: UUID
    #: A deployment as ``flow/deployment``; a work pool or queue by its own name.
    name: str
    #: A deployment's ``paused``; a pool's or queue's ``is_paused``.
    paused: bool
    #: The server's ``updated`` when read (kept for the record: not compared, see
    #: docs/architecture.md "What drifted means").
    updated: datetime | None = None
    flow: str | None = None
    tags: tuple[str, ...] = ()
    #: A deployment's or a queue's work pool.
    work_pool: str | None = None
    #: A deployment's work queue.
    work_queue: str | None = None
    #: A work pool's type.
    type: str | None = None
    schedules: tuple[ScheduleView, ...] = ()
    #: A deployment's runs the server deletes with the pause or resume (the scheduler's
    #: Scheduled runs): read by the plan only for a deployment it writes.
    scheduled_runs: tuple[ScheduledRun, ...] = ()


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One deployment, work pool or work queue, one step: pause or resume it, or why not.

    ``before`` and ``after`` are the paused flag the plan saw and the one it proposes: what
    an undo inverts (the schedules' own ``active`` flags, in ``object``, are never written)."""

    step: int
    object: ObjectView
    op: ObjectOp
    reason: str | None = None

    @property
    def is_noop(self) -> bool:
        return self.op == "noop"

    @property
    def key(self) -> str:
        return f"{self.step}:{self.object.id}"

    @property
    def run(self) -> ObjectView:
        """What the change is about (its id and name), where flow-run changes have a run."""
        return self.object

    @property
    def before(self) -> bool:
        return self.object.paused

    @property
    def after(self) -> bool:
        return self.op == "pause" if not self.is_noop else self.object.paused


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """What a delete step archives before each delete (see :mod:`runner.archive`): the run
    as the API returns it and its state history; its logs with ``logs``."""

    logs: bool = False


@dataclass(frozen=True, slots=True)
class StepPlan:
    index: int
    name: str
    action: str
    selected: int
    #: A tuple; for a large plan, a sealed :class:`runner.spool.Spool` read from disk.
    changes: Sequence[Change]
    concurrency: int
    rate_limit: float | None
    max_attempts: int
    backoff_seconds: float = 0.25
    max_backoff_seconds: float = 20.0
    #: The step selects by tags or changes them: its diff shows each run's tags.
    show_tags: bool = False
    #: A reschedule step that may schedule runs in the past (``allow_past``); without it,
    #: a new start time that passes between the plan and the write is refused then.
    allow_past: bool = False
    #: A delete step's archive (None: deleted without one, ``archive: false``, or not a
    #: delete step).
    archive: ArchiveSpec | None = None
    #: What the step acts on (``flow_runs``: its ``changes``; else its ``objects``).
    target: str = "flow_runs"
    objects: tuple[ObjectChange, ...] = ()

    @property
    def pending(self) -> Sequence[Change]:
        return where(self.changes, is_pending)

    @property
    def pending_objects(self) -> tuple[ObjectChange, ...]:
        return tuple(c for c in self.objects if not c.is_noop)

    @property
    def noun(self) -> str:
        """What one of the step's selected items is called."""
        return {"deployments": "deployment", "work_pools": "work pool"}.get(
            self.target, "work queue" if self.target == "work_queues" else "run"
        )

    @property
    def noops(self) -> Sequence[Change]:
        return where(self.changes, is_noop)


def is_pending(change: Change) -> bool:
    """Whether the apply sends something for ``change`` (the filter of ``pending``)."""
    return not change.is_noop


def is_noop(change: Change) -> bool:
    """The filter of ``noops`` (a spool counts each filter once, by its identity)."""
    return change.is_noop


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    created_at: datetime
    playbook_name: str
    playbook_path: str
    playbook_digest: str
    variables: dict[str, Any]
    server_url: str
    server_version: str | None
    steps: tuple[StepPlan, ...]
    violations: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def changes(self) -> Sequence[Change]:
        return chained(s.changes for s in self.steps)

    @property
    def pending(self) -> Sequence[Change]:
        return chained(s.pending for s in self.steps)

    @property
    def pending_objects(self) -> tuple[ObjectChange, ...]:
        """The deployments, work pools and work queues the plan pauses or resumes."""
        return tuple(c for s in self.steps for c in s.pending_objects)

    @property
    def work(self) -> Sequence[Change | ObjectChange]:
        """Every change an apply sends something for: the runs', then the objects', each
        known by its ``key`` in checkpoints, reports and ``runner status``."""
        parts: list[Sequence[Change | ObjectChange]] = [self.pending, self.pending_objects]
        return chained(parts)

    @property
    def has_changes(self) -> bool:
        return any(s.pending or s.pending_objects for s in self.steps)

    def held(self) -> Plan:
        """This plan with every step's changes in memory, read from its spools once. For an
        apply, which keeps each change's outcome anyway: each change is then one object
        wherever the apply holds it, where every read of a spool makes new ones (an apply
        of 100,000 spooled changes had grown to 360 MB when stopped; 195 MB in memory)."""
        if not any(is_spooled(step.changes) for step in self.steps):
            return self
        steps = tuple(dataclasses.replace(s, changes=tuple(s.changes)) for s in self.steps)
        return dataclasses.replace(self, steps=steps)

    def counts(self) -> dict[str, int]:
        """How many runs (or objects) each action will change, and how many stay
        ``unchanged``."""
        out: dict[str, int] = {}
        for step in self.steps:
            pending = len(step.pending) + len(step.pending_objects)
            if pending:
                out[step.action] = out.get(step.action, 0) + pending
        out["unchanged"] = sum(
            len(s.noops) + len(s.objects) - len(s.pending_objects) for s in self.steps
        )
        return out


@dataclass(frozen=True)
class StepObservation:
    #: Every run the step's selection matched, by run id (before claims and limit), less
    #: the runs its exclusions left out (a spool, for a large selection).
    runs: Sequence[RunView]
    #: Each exclusion's label and how many of the matched runs it left out.
    exclusions: tuple[tuple[str, int], ...] = ()
    #: A step whose target is not flow runs: every object its selection matched.
    objects: tuple[ObjectView, ...] = ()


@dataclass(frozen=True)
class Observation:
    """What the server held for each step of a playbook, read before anything changed."""

    now: datetime
    server_url: str
    server_version: str | None
    steps: tuple[StepObservation, ...]
    notes: tuple[str, ...] = ()


_R = TypeVar("_R")


def _pickled_by_fields(cls: type) -> None:
    """Pickle ``cls`` as its constructor and its field values, its ids as numbers: a large
    plan's views and changes pass through :mod:`runner.spool` several times, and a slotted
    dataclass's own pickling (a ``fields()`` call per object, each way) took 1.6 times as
    long, a UUID's own (its ``__getstate__`` and ``__setstate__``) 2.5 times a number's."""
    fields = dataclasses.fields(cls)
    get = operator.attrgetter(*(f.name for f in fields))
    ids = tuple(i for i, f in enumerate(fields) if str(f.type) in ("UUID", "UUID | None"))
    if not ids:

        def reduce(self: object) -> tuple[Any, tuple[Any, ...]]:
            return (cls, get(self))

    else:

        def reduce(self: object) -> tuple[Any, tuple[Any, ...]]:
            values = list(get(self))
            for i in ids:
                if values[i] is not None:
                    values[i] = values[i].int
            return (_with_ids, (cls, ids, tuple(values)))

    setattr(cls, "__reduce__", reduce)  # noqa: B010 (a method of a frozen, slotted class)


def _with_ids(cls: type[_R], ids: tuple[int, ...], values: tuple[Any, ...]) -> _R:
    """An object pickled by :func:`_pickled_by_fields`: its ids made UUIDs again."""
    made = list(values)
    for i in ids:
        if made[i] is not None:
            made[i] = UUID(int=made[i])
    return cls(*made)


for _spooled in (RunView, TargetState, Change):
    _pickled_by_fields(_spooled)
