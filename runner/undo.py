"""``runner undo``: a plan that puts back what an apply changed, where it can be put back.

The apply's folder (``.runner/<plan-id>/``) holds its plan (each run as the plan saw it, each
change) and its journal (what each change came to, and for a state change made, the state it
left and the message of the state it replaced: :mod:`runner.journal`). From those and the
runs as they are now, :func:`make_undo_plan` (pure) makes an ordinary :class:`~runner.plan.Plan`
of inverse changes, applied like any plan: reviewed, saved, conditional, journaled, resumed.

Each kind of change has its rule in :data:`RULES` (the one place another kind adds its
inverse): the inverse, given what the apply did, or why it cannot be undone. Every inverse
is conditional on the run being exactly as the apply left it (the state the apply's write
left, by id; the tags it left; its name, deployment, queue and pool), checked when the undo is
planned and again, as for any plan, right before each write: a run changed since by someone
else is left alone.

=================================  ==========================================================
the apply's change                 its undo
=================================  ==========================================================
reschedule (a new Scheduled state) back to the state it replaced, at its time (forced)
cancel of a Scheduled or Late run  back to that state, at its time (forced)
set_state, retry                   back to the state it replaced (forced), unless that state
                                   was Pending, Running, Paused or Cancelling
tag (added or removed)             the tags the run had
cancel of a started run            cannot: its infrastructure was torn down
delete                             cannot: the run is gone (its record is in the archive)
recreate                           cannot: the old run is deleted (the new run's id is said)
resume                             cannot: a run is not paused from outside its process
pause / resume of a deployment,    resume / pause it again, if it is still as the apply left
work pool or work queue            it (the paused flag the apply set, and nothing else the
                                   plan saw changed since)
drifted, failed, raced, pending    nothing to undo (not made, or not as planned: said so)
=================================  ==========================================================

Forced (as runner's ``set_state`` with ``force`` writes), so that an undo does not depend on
which ways out of a terminal state the orchestration allows which run: Prefect 3.9.1 accepts
Cancelled, Completed or Failed -> Scheduled for a deployment's run, and aborts it for a run
without a deployment ("Cannot reschedule a run without an associated deployment.").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

from runner.client import PrefectClient
from runner.errors import CheckpointError, PlanFileError, RunnerError
from runner.filters import FlowRunQuery, by_ids
from runner.journal import FINISHED, Entry, JournalState, in_use, read_journal
from runner.observe import new_plan_id, run_view
from runner.plan import (
    UNDO_ACTION,
    Change,
    ObjectChange,
    ObjectOp,
    ObjectView,
    Op,
    Plan,
    RunView,
    StepPlan,
    TargetState,
)
from runner.planfile import read_plan, read_plan_checked
from runner.targets import NOUNS, drift, paused_word, view_of
from runner.words import plural

#: An undo plan's ``playbook_digest``: this, then the id of the plan it undoes.
UNDO_DIGEST = "undo:"
#: State types a state cannot bring back: something (a worker, a process, infrastructure)
#: ran the run then, and a state written now would not.
_ACTIVE = frozenset({"PENDING", "RUNNING", "PAUSED", "CANCELLING"})
#: State types whose state may hold a reference to the run's result (its ``data``).
_WITH_RESULTS = frozenset({"COMPLETED", "FAILED", "CRASHED"})


@dataclass(frozen=True, slots=True)
class Inverse:
    """How to put back one finished change: the run must still be as the apply left it (in
    the state ``state_id``, with the tags ``tags``); ``make`` gives the inverse change for
    the run as it is now, in the undo plan's step ``step``."""

    state_id: UUID
    tags: tuple[str, ...]
    make: Callable[[RunView, int], Change]


@dataclass(frozen=True, slots=True)
class UndoGuards:
    """What an undo plan must keep to (a plan that breaks one is shown, never applied), as
    a playbook's guards: ``allow_active``: forcing a state on a run that is Pending, Running,
    Paused or Cancelling now (the apply left it so) is refused without it; ``max_affected``:
    at most this many runs changed."""

    allow_active: bool = False
    max_affected: int | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What a rule may need besides the change and its journal entry."""

    #: Where the apply archived the runs it deleted (as the journal says; None: nowhere).
    archive: str | None = None


#: A rule: the inverse of a change its apply made (journal status ``done``), or why it
#: cannot be undone (a sentence that reads after "unchanged: ").
Rule = Callable[[Change, Entry, Context], "Inverse | str"]


def _label(type_: str | None, name: str | None) -> str:
    return name or (type_.title() if type_ else "no state")


def _undo_state(change: Change, entry: Entry, context: Context) -> Inverse | str:
    run, target = change.run, change.state
    assert target is not None
    before = _label(run.state_type, run.state_name)
    if target.type == "CANCELLING" and run.state_type in _ACTIVE:
        return (
            f"cancelled while {before} by the apply: its infrastructure was torn down, which"
            " no state brings back (retry the run instead)"
        )
    if entry.state_after is None:
        return (
            "the checkpoint does not say which state the apply left (written by a runner"
            " before undo): runner cannot check the run is still in it"
        )
    if run.state_type is None:
        return "it had no state before the apply"
    if run.state_type in _ACTIVE:
        return (
            f"it was {before} before the apply: a {before} state written now would not bring"
            " back what ran it (its worker, its process, its infrastructure)"
        )
    message = entry.replaced.message if entry.replaced is not None else None
    when = run.scheduled_time if run.state_type == "SCHEDULED" else None
    back = TargetState(
        type=run.state_type,
        name=run.state_name or run.state_type.title(),
        message=message,
        scheduled_time=when,
        force=True,
    )

    def make(now: RunView, step: int) -> Change:
        return Change(step=step, run=now, op="set_state", state=back)

    return Inverse(state_id=UUID(entry.state_after), tags=run.tags, make=make)


def _undo_tags(change: Change, entry: Entry, context: Context) -> Inverse | str:
    run = change.run
    if run.state_id is None:
        return (
            "the plan does not say which state the run was in (made by a runner before state"
            " ids): runner cannot check the run is as the apply left it"
        )

    def make(now: RunView, step: int) -> Change:
        return Change(step=step, run=now, op="tag", tags=run.tags)

    return Inverse(state_id=run.state_id, tags=change.tags or (), make=make)


def _cannot_delete(change: Change, entry: Entry, context: Context) -> str:
    if entry.detail == "already gone":
        return "already gone when the apply came to it: nothing to undo"
    where = f" (its record is in the archive {context.archive})" if context.archive else ""
    return f"deleted by the apply, which cannot be undone{where}"


def _cannot_recreate(change: Change, entry: Entry, context: Context) -> str:
    new = f" as run {entry.new_run_id}" if entry.new_run_id else ""
    return (
        f"recreated{new} by the apply: the old run is deleted, which cannot be undone; the new"
        " run stays (delete it by hand if it is not wanted)"
    )


def _cannot_resume(change: Change, entry: Entry, context: Context) -> str:
    return "resumed by the apply: a run cannot be paused again from outside its process"


#: The one place each kind of change says how it is undone. A new kind of change (a pause
#: of a deployment, say) adds its rule here.
RULES: dict[Op, Rule] = {
    "set_state": _undo_state,
    "tag": _undo_tags,
    "delete": _cannot_delete,
    "recreate": _cannot_recreate,
    "resume": _cannot_resume,
}


def _not_made(change: Change, entry: Entry | None, folder: str) -> str | None:
    """Why a change of the apply has nothing to undo (None: it was made as planned)."""
    if entry is None or entry.status not in (*FINISHED, "failed", "created"):
        return f"not applied (the apply did not get to it; runner apply --resume {folder})"
    detail = f": {entry.detail}" if entry.detail else ""
    if entry.status == "drifted":
        return f"left alone by the apply (drifted{detail}): nothing to undo"
    if entry.status == "failed":
        return f"not made: it failed in the apply{detail}"
    if entry.status == "raced":
        return (
            f"made over a state the plan did not see (raced{detail}): not as planned, so not"
            " undone; look at it by hand"
        )
    if entry.status == "created":
        return (
            f"half a recreate: new run {entry.new_run_id} made, the old run not deleted yet"
            f" (runner apply --resume {folder} finishes it)"
        )
    return None


def _changed_since(run: RunView, inverse: Inverse, now: RunView | None) -> str | None:
    """Why the run is no longer as the apply left it (None: it is)."""
    if now is None:
        return "the run no longer exists"
    label = _label(now.state_type, now.state_name)
    if now.state_id != inverse.state_id:
        return f"changed since the apply (now {label}, in a state the apply did not leave)"
    if now.tags != inverse.tags:
        return "changed since the apply (its tags)"
    if now.name != run.name:
        return f"changed since the apply (renamed {now.name})"
    if now.deployment_id != run.deployment_id:
        return "changed since the apply (its deployment)"
    if now.work_queue != run.work_queue or now.work_pool != run.work_pool:
        return "changed since the apply (its work queue or pool)"
    return None


def inverses(plan: Plan, journal: JournalState, *, folder: str) -> dict[str, Inverse | str]:
    """Each change of ``plan`` (applied from ``folder``), by key: its inverse, or why it has
    nothing to undo or cannot be undone. Pure: the runs as they are now are not needed yet."""
    archive = journal.archive
    if archive is not None and not Path(archive).is_absolute():
        archive = str(Path(folder) / archive)
    context = Context(archive=archive)
    out: dict[str, Inverse | str] = {}
    for change in plan.pending:
        entry = journal.entries.get(change.key)
        why = _not_made(change, entry, folder)
        if why is not None or entry is None:
            out[change.key] = why or ""
            continue
        rule = RULES.get(change.op)
        out[change.key] = (
            rule(change, entry, context)
            if rule is not None
            else f"runner cannot undo a {change.op} change"
        )
    return out


def _object_undo(
    change: ObjectChange,
    entry: Entry | None,
    current: ObjectView | None,
    undone: Mapping[UUID, str],
    index: int,
) -> tuple[ObjectChange, bool]:
    """The inverse of a pause or resume the apply made (pause <-> resume), for the object as
    it is now (``current``; None: gone), or a no-op with the reason; and whether it is an
    inverse."""
    seen = change.object
    noun = NOUNS[seen.kind]

    def noop(reason: str, view: ObjectView = seen) -> tuple[ObjectChange, bool]:
        return ObjectChange(step=index, object=view, op="noop", reason=reason), False

    if entry is None:
        return noop("never sent (pending when the apply stopped): nothing to undo")
    if entry.status != "done":
        detail = f": {entry.detail}" if entry.detail else ""
        return noop(f"not made as planned ({entry.status}{detail}): nothing to undo")
    if seen.id in undone:
        return noop(f"undone already (undo plan {undone[seen.id]})")
    if current is None:
        return noop(f"the {noun} no longer exists: left alone")
    why = drift(seen, current)
    if why is not None:
        return noop(f"changed since the apply ({why.removesuffix(' since the plan')}): left alone")
    if current.paused != change.after:
        word = paused_word(current.paused, seen.kind)
        return noop(f"changed since the apply (now {word}): left alone", current)
    inverse: ObjectOp = "resume" if change.op == "pause" else "pause"
    return ObjectChange(step=index, object=current, op=inverse), True


def _object_step(
    original: StepPlan,
    journal: JournalState,
    objects: Mapping[UUID, ObjectView],
    undone: Mapping[UUID, str],
    index: int,
) -> tuple[StepPlan, int, int]:
    """The undo of a step with a target: its inverse action on what it paused or resumed;
    with how many objects it puts back and how many it cannot."""
    changes: list[ObjectChange] = []
    for change in original.pending_objects:
        entry = journal.entries.get(change.key)
        changes.append(_object_undo(change, entry, objects.get(change.object.id), undone, index)[0])
    back = sum(1 for c in changes if not c.is_noop)
    step = StepPlan(
        index=index,
        name=f"undo step {original.index + 1} ({original.name})",
        action="resume" if original.action == "pause" else "pause",
        selected=len(changes),
        changes=(),
        concurrency=1,
        rate_limit=original.rate_limit,
        max_attempts=original.max_attempts,
        backoff_seconds=original.backoff_seconds,
        max_backoff_seconds=original.max_backoff_seconds,
        target=original.target,
        objects=tuple(changes),
    )
    return step, back, len(changes) - back


def make_undo_plan(
    plan: Plan,
    journal: JournalState,
    current: Mapping[UUID, RunView],
    *,
    plan_id: str,
    now: datetime,
    server_url: str,
    server_version: str | None,
    folder: str,
    undone: Mapping[UUID, str] | None = None,
    guards: UndoGuards = UndoGuards(),
    objects: Mapping[UUID, ObjectView] | None = None,
) -> Plan:
    """The undo of ``plan`` as ``journal`` says it was applied, against the runs as they are
    now (``current``, by id; a run absent is gone): a plan with, for each step of ``plan``
    (the last first), an ``undo`` step of the inverse changes, and a no-op with its reason
    for each change that has nothing to undo or cannot be undone. ``undone``: the runs an
    earlier undo of ``plan`` put back (by id: that undo's plan id); ``guards``: what the
    undo plan must keep to (else it carries the violation and is never applied);
    ``objects``: the deployments, work pools and queues the apply paused or resumed, as they
    are now (by id; absent: gone). Pure."""
    undone = undone or {}
    objects = objects or {}
    rules = inverses(plan, journal, folder=folder)
    steps: list[StepPlan] = []
    put_back = cannot = already = past = no_message = no_result = 0
    for original in reversed(plan.steps):
        if original.pending_objects:
            step, back, left = _object_step(original, journal, objects, undone, len(steps))
            steps.append(step)
            put_back += back
            cannot += left
            continue
        if not original.pending:
            continue
        index = len(steps)
        changes: list[Change] = []
        for change in original.pending:
            rule = rules[change.key]
            run = change.run
            if isinstance(rule, str):
                changes.append(Change(step=index, run=run, op="noop", reason=rule))
                cannot += 1
                continue
            if run.id in undone:
                changes.append(
                    Change(
                        step=index,
                        run=run,
                        op="noop",
                        reason=f"undone already (undo plan {undone[run.id]})",
                    )
                )
                already += 1
                continue
            seen = current.get(run.id)
            if seen is not None:  # named as the plan named it (its flow, its deployment)
                seen = dataclasses.replace(seen, flow=run.flow, deployment=run.deployment)
            why = _changed_since(run, rule, seen)
            if (
                why is None
                and seen is not None
                and change.state is not None
                and seen.state_type != change.state.type
            ):
                # The checkpoint has no checksum: the state it names must at least be of the
                # type the apply proposed (a state someone else wrote is not runner's).
                label = _label(seen.state_type, seen.state_name)
                why = f"changed since the apply (now {label}, not a state the apply left)"
            if why is not None or seen is None:
                changes.append(
                    Change(step=index, run=seen or run, op="noop", reason=f"{why}: left alone")
                )
                cannot += 1
                continue
            inverse = rule.make(seen, index)
            changes.append(inverse)
            put_back += 1
            state = inverse.state
            if (
                state is not None
                and state.scheduled_time is not None
                and state.scheduled_time < now
            ):
                past += 1
            entry = journal.entries.get(change.key)
            if inverse.op == "set_state" and (entry is None or entry.replaced is None):
                no_message += 1
            if state is not None and state.type in _WITH_RESULTS:
                no_result += 1
        steps.append(
            StepPlan(
                index=index,
                name=f"undo step {original.index + 1} ({original.name})",
                action=UNDO_ACTION,
                selected=len(changes),
                changes=tuple(changes),
                concurrency=original.concurrency,
                rate_limit=original.rate_limit,
                max_attempts=original.max_attempts,
                backoff_seconds=original.backoff_seconds,
                max_backoff_seconds=original.max_backoff_seconds,
                show_tags=original.show_tags,
                allow_past=True,
            )
        )
    applied = f", applied {journal.started_at:%Y-%m-%d %H:%M:%S}Z" if journal.started_at else ""
    done_before = f", {already} undone already" if already else ""
    notes = [
        f"undoes plan {plan.id} ({plan.playbook_name}){applied}: {put_back} of"
        f" {plural(len(plan.work), 'change')} to put back{done_before}; {cannot} cannot be,"
        " each listed as unchanged with the reason"
    ]
    if past:
        notes.append(
            f"{plural(past, 'run')} will be back at a start time that has passed: a worker"
            " starts each as soon as it sees it, as it would have before the apply"
        )
    if no_message:
        notes.append(
            f"{plural(no_message, 'run')} will be back without the message of the state it had"
            " (the checkpoint does not have it)"
        )
    if no_result:
        notes.append(
            f"{plural(no_result, 'run')} will be back in a final state without the result"
            " reference that state held (a state written now carries none; the result itself,"
            " where it was persisted, stays where it is)"
        )
    return Plan(
        id=plan_id,
        created_at=now,
        violations=_violations(steps, guards),
        playbook_name=f"undo of {plan.id}",
        playbook_path=folder,
        playbook_digest=UNDO_DIGEST + plan.id,
        variables={},
        server_url=server_url,
        server_version=server_version,
        steps=tuple(steps),
        notes=tuple(notes),
    )


def _violations(steps: list[StepPlan], guards: UndoGuards) -> tuple[str, ...]:
    pending = [c for s in steps for c in s.pending]
    objects = [c for s in steps for c in s.pending_objects]
    out: list[str] = []
    if guards.max_affected is not None and len(pending) + len(objects) > guards.max_affected:
        what = (
            plural(len(pending), "run")
            if not objects
            else (f"{plural(len(pending), 'run')} and {plural(len(objects), 'object')}")
        )
        out.append(
            f"the undo would change {what}, more than --max-affected ({guards.max_affected})"
        )
    active = [c for c in pending if c.state is not None and c.run.state_type in _ACTIVE]
    if active and not guards.allow_active:
        states = sorted({_label(c.run.state_type, c.run.state_name) for c in active})
        out.append(
            f"the undo would force a state on {plural(len(active), 'active run')}"
            f" ({', '.join(states)}) whose infrastructure may still run; cancel them first, or"
            " pass --allow-active"
        )
    return tuple(out)


def applied_folder(target: str | Path) -> Path:
    """The folder of an apply: ``target`` itself, or the folder of its checkpoint or plan."""
    path = Path(target)
    return path.parent if path.is_file() else path


def read_applied(folder: Path) -> tuple[Plan, JournalState]:
    """The plan applied in ``folder`` and what its journal says; refused while an apply of
    it runs (its journal is locked), and when nothing of it was applied."""
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder")
    if not (folder / "plan.json").is_file():
        raise CheckpointError(
            f"{folder}: not the folder of an apply (no plan.json; runner apply keeps its plan"
            " and checkpoint in .runner/<plan-id>/)"
        )
    plan, checksum = read_plan_checked(folder / "plan.json")
    journal = folder / "checkpoint.jsonl"
    if not journal.exists():
        raise CheckpointError(
            f"{folder}: no checkpoint: plan {plan.id} was never applied, nothing to undo"
        )
    holder = in_use(journal)
    if holder is not None:
        raise CheckpointError(
            f"plan {plan.id} is being applied now ({holder}): undo it once that apply ends"
        )
    return plan, read_journal(journal, plan_id=plan.id, plan_checksum=checksum)


def earlier_undos(state_dir: Path, plan: Plan) -> list[tuple[Path, Plan, JournalState]]:
    """The undos of ``plan`` applied from ``state_dir`` (each with its journal), oldest first."""
    found: list[tuple[Path, Plan, JournalState]] = []
    if not state_dir.is_dir():
        return found
    for candidate in sorted(state_dir.glob("*/plan.json"), key=lambda p: p.stat().st_mtime):
        journal = candidate.with_name("checkpoint.jsonl")
        if not journal.exists():
            continue
        try:
            undo = read_plan(candidate)
            if undo.playbook_digest != UNDO_DIGEST + plan.id:
                continue
            found.append((candidate.parent, undo, read_journal(journal, plan_id=undo.id)))
        except RunnerError:
            continue
    return found


def undone_runs(undos: list[tuple[Path, Plan, JournalState]]) -> dict[UUID, str]:
    """The runs earlier undos put back (their change done), by id: the undo's plan id."""
    out: dict[UUID, str] = {}
    for _, undo, state in undos:
        for change in undo.work:
            if state.status(change.key) == "done":
                out[change.run.id] = undo.id
    return out


async def read_current(
    client: PrefectClient, plan: Plan, rules: Mapping[str, Inverse | str]
) -> dict[UUID, RunView]:
    """The runs whose change has an inverse, as they are now (a run that is gone is absent)."""
    wanted = [c.run for c in plan.pending if isinstance(rules.get(c.key), Inverse)]
    found: dict[UUID, RunView] = {}
    start = 0
    while start < len(wanted):
        size = client.page_size
        chunk = wanted[start : start + size]
        ids = [run.id for run in chunk]
        runs = await client.read_flow_runs(FlowRunQuery(flow_runs=by_ids(ids)), limit=len(ids))
        if len(runs) < len(chunk) and client.page_size < size:
            continue  # the server's pages are smaller than assumed: this chunk again
        keep = {run.id: run.parameters is not None for run in chunk}
        for run in runs:
            if run.id in keep:  # never trust the server's filter
                found[run.id] = run_view(run, keep[run.id])
        start += len(chunk)
    return found


async def read_current_objects(
    client: PrefectClient, plan: Plan, journal: JournalState
) -> dict[UUID, ObjectView]:
    """The deployments, work pools and work queues the apply paused or resumed (its change
    done), as they are now (one that is gone is absent)."""
    found: dict[UUID, ObjectView] = {}
    for change in plan.pending_objects:
        if journal.status(change.key) != "done":
            continue
        seen = change.object
        data = await client.read_object(seen.kind, seen.id, seen.name)
        if data is None:
            continue
        flows: dict[str, str] = {}
        if seen.kind == "deployment" and data.get("flow_id"):
            flow = await client.read_flow(UUID(str(data["flow_id"])))
            flows[str(flow.id)] = flow.name
        found[seen.id] = view_of(seen.kind, data, flows)
    return found


async def plan_undo(
    target: str | Path,
    client: PrefectClient,
    *,
    state_dir: Path,
    now: datetime | None = None,
    guards: UndoGuards = UndoGuards(),
) -> Plan:
    """The undo plan of the apply in ``target`` (its folder or checkpoint), against the runs
    as they are now on the server ``client`` talks to (the one the apply wrote to). Sends no
    write."""
    folder = applied_folder(target)
    plan, journal = read_applied(folder)
    server_url = client.settings.display_url
    if plan.server_url != server_url:
        raise PlanFileError(
            f"plan {plan.id} was applied to {plan.server_url}, not {server_url}: an undo goes"
            " to the server the apply wrote to"
        )
    info = await client.server_info()
    rules = inverses(plan, journal, folder=str(folder))
    current = await read_current(client, plan, rules)
    objects = await read_current_objects(client, plan, journal)
    return make_undo_plan(
        plan,
        journal,
        current,
        plan_id=new_plan_id(),
        now=now or datetime.now(timezone.utc),
        server_url=server_url,
        server_version=info.version,
        folder=str(folder),
        undone=undone_runs(earlier_undos(state_dir, plan)),
        guards=guards,
        objects=objects,
    )
