"""The executor: applies a plan through the client, the only place that writes to the API.

Per step, in plan order. Every write is conditional on what the plan saw: right before it
is sent, the run is read back and compared with the plan (the very state, tags, name, queue,
deployment), and on servers with the bulk routes the planned state's type and name also go
into the same request as the ids, so the server itself leaves alone a run that changed them
in between (not the state id: Prefect's filter has none). A run that changed is skipped as
*drifted*, never clobbered. Every finished change is recorded in the journal first thing, so
an interrupted apply resumes without repeating or losing work:

- state changes carry a transition id derived from the plan and the change, so a change
  re-sent after a crash is recognised by the server as already made;
- a recreate records the new run's id before it deletes the old run (checked again first),
  and its create carries an idempotency key derived from the old run and the state the plan
  saw, so any two plans of the same change converge on one new run;
- a delete answered 404 is done;
- a delete whose step archives (the default) writes each run's record to the archive
  (:mod:`runner.archive`), fsynced, before the delete is sent: a run whose record could not
  be read or written is not deleted.

Concurrency adapts to the server: it halves when the server answers 429/503 or drops a
connection, and grows by one after as many successes as the current limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

import anyio

from runner.archive import ARCHIVE_NAME, ArchiveWriter, archive_record
from runner.client import MAX_BULK_SIZE, NotSentAgain, PrefectClient, ProposedState
from runner.concurrency import AdaptiveLimit
from runner.errors import (
    APIError,
    CheckpointWriteError,
    NotFound,
    ServerError,
    Unauthorized,
    Unreachable,
)
from runner.filters import (
    FlowRunFilter,
    FlowRunQuery,
    IdsOrNull,
    NamesAnyNotAny,
    StateFilter,
    Tags,
    TimeWindow,
    by_ids,
)
from runner.journal import FINISHED, Journal, JournalState, Replaced
from runner.models import FlowRun, OrchestrationResult, SetStateStatus, State, StateType
from runner.plan import (
    LEGACY_CARRY,
    ArchiveSpec,
    Change,
    ObjectChange,
    ObjectView,
    Plan,
    StepPlan,
    TargetState,
)
from runner.retry import RetryPolicy
from runner.selection import json_equal
from runner.targets import NOUNS, deleted_with_write, drift, paused_word, view_of
from runner.words import plural

if TYPE_CHECKING:
    from runner.events import EventCounts

Strategy = Literal["auto", "bulk", "per-run"]
#: Called with a change, its status, detail and new run id once the journal recorded it.
FinishHook = Callable[[Change | ObjectChange, str, str | None, str | None], None]
#: Rounds of going back to changes the server was too busy for, before they count as failed.
DEFERRED_ROUNDS = 3
#: A recreate's old runs are deleted in batches of up to this many (:meth:`Executor._recreates`)
RECREATE_BATCH = 50
#: ... or as soon as the first of a batch has waited this long since its new run was made:
#: the longest an old run is left beside its new one (a worker could start it meanwhile).
RECREATE_WAIT_SECONDS = 0.5
_NAMESPACE = uuid.UUID("0b6f3a52-8d51-4b8e-a3c9-5f3f0f6b7c11")


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply: overrides of the plan's settings and the failure policy."""

    rate_limit: float | None = None
    concurrency: int | None = None
    strategy: Strategy = "auto"
    max_failures: int | None = None
    max_fail_ratio: float | None = None


@dataclass(slots=True)  # one per change: 100,000s of them
class Outcome:
    change: Change | ObjectChange
    status: Literal["done", "drifted", "raced", "failed", "pending", "created"]
    detail: str | None = None
    new_run_id: str | None = None


@dataclass
class Progress:
    total: int
    done: int = 0
    drifted: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.done + self.drifted + self.failed

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.finished / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        left = self.total - self.finished
        eta = f", ETA {math.ceil(left / rate)}s" if rate > 0 and left else ""
        return (
            f"progress: {self.finished}/{self.total} ({self.done} done, {self.drifted} drifted,"
            f" {self.failed} failed), {rate:.1f}/s{eta}"
        )


@dataclass(frozen=True)
class ArchiveSummary:
    """Where an apply archived the runs it deleted: the file, the run records this apply
    wrote to it, and how many the file holds (earlier applies' included)."""

    path: Path
    written: int
    runs: int


@dataclass
class ApplyResult:
    outcomes: dict[str, Outcome]
    stopped: str | None
    requests: int
    retries: int
    seconds: float
    strategies: dict[int, str]
    #: Seconds between reading each run back and sending its write (see Executor.windows).
    windows: Sequence[float] = ()
    #: The delete archive, when this apply wrote to one.
    archive: ArchiveSummary | None = None
    #: What became of the apply's events (None: --no-events); set by runner.apply.
    events: EventCounts | None = None

    def window_summary(self) -> dict[str, float | int]:
        """How long runner's own check of a run stood before its write: count, median, max
        (seconds). On the bulk routes the server checks the planned state in the write too."""
        if not self.windows:
            return {"writes": 0}
        ordered = sorted(self.windows)
        return {
            "writes": len(ordered),
            "median": round(ordered[len(ordered) // 2], 4),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
            "max": round(ordered[-1], 4),
        }

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    @property
    def complete(self) -> bool:
        return self.stopped is None and all(o.status in FINISHED for o in self.outcomes.values())


def transition_id(plan: Plan, key: str) -> UUID:
    """The same change of the same plan always proposes with the same transition id."""
    return uuid.uuid5(_NAMESPACE, f"{plan.id}:{key}")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def _proposed(state: TargetState) -> ProposedState:
    return ProposedState(
        type=StateType(state.type),
        name=state.name,
        message=state.message,
        scheduled_time=state.scheduled_time,
    )


def guard_filter(changes: Sequence[Change]) -> FlowRunFilter:
    """What the server checks in the same request as a bulk write, besides the ids: what the
    plan saw that every run of the batch shares. The state type and name always (batches are
    formed so that they share them); the tags and deployment when they are shared (tags
    cannot be matched exactly: ``all_`` catches a removed tag, ``is_null_`` an added one on a
    run that had none); for scheduled runs, their scheduled times (exactly for one run, else
    the window from the earliest to the latest).

    ``bulk_delete`` reads this filter and deletes in one transaction. ``bulk_set_state``
    reads it, then orchestrates each run in a transaction of its own: a run that changes in
    between is still written, which is why every state change is verified afterwards."""
    first = changes[0].run
    runs = [c.run for c in changes]
    state = None
    if first.state_type is not None and all(r.state_type == first.state_type for r in runs):
        same_name = first.state_name is not None and all(
            r.state_name == first.state_name for r in runs
        )
        state = StateFilter(
            type=NamesAnyNotAny(any_=(first.state_type,)),
            name=NamesAnyNotAny(any_=(first.state_name,)) if same_name else None,
        )
    tags = None
    if all(r.tags == first.tags for r in runs):
        tags = Tags(all_=first.tags) if first.tags else Tags(is_null_=True)
    deployment = None
    if all(r.deployment_id == first.deployment_id for r in runs):
        deployment = (
            IdsOrNull(any_=(first.deployment_id,))
            if first.deployment_id
            else IdsOrNull(is_null_=True)
        )
    scheduled = None
    times = [r.next_scheduled_start for r in runs]
    if first.state_type == "SCHEDULED" and all(t is not None for t in times):
        known = [t for t in times if t is not None]
        scheduled = TimeWindow(before_=max(known), after_=min(known))
    return FlowRunFilter(
        state=state, tags=tags, deployment_id=deployment, next_scheduled_start_time=scheduled
    )


def _label(run: FlowRun) -> str:
    return run.state_name or (run.state_type.value.title() if run.state_type else "no state")


def _drift(change: Change, current: FlowRun | None) -> str | None:
    """Why the run is no longer what the plan saw, or None when it still is.

    Drift means: gone, not in the very state the plan saw (its state id; a new state of the
    same type and name counts: someone moved it), or its tags, name, deployment, work queue,
    work pool or (kept by the plan when its step selects by them or recreates) parameters
    changed (what a selection reads: it may no longer match); for a recreate, also the job
    variables it carries to the new run. Plans made before
    state ids were kept compare the state type, name and scheduled time.
    """
    if current is None:
        return "the run no longer exists"
    run = change.run
    now_type = current.state_type.value if current.state_type else None
    if now_type != run.state_type or current.state_name != run.state_name:
        return f"now {_label(current)}, planned from {run.state_name or run.state_type}"
    if run.state_id is not None:
        if current.state is None or current.state.id != run.state_id:
            return f"in a new {_label(current)} state since the plan"
    elif run.state_type == "SCHEDULED" and current.next_scheduled_start_time != (
        run.next_scheduled_start
    ):
        return f"{_label(current)} at another time since the plan"
    if tuple(current.tags) != run.tags:
        return "its tags changed since the plan"
    if current.name != run.name:
        return f"renamed {current.name} since the plan"
    if current.deployment_id != run.deployment_id:
        return "its deployment changed since the plan"
    if current.work_queue_name != run.work_queue:
        return "its work queue changed since the plan"
    if run.state_id is not None and current.work_pool_name != run.work_pool:
        return "its work pool changed since the plan"
    if run.parameters is not None and not json_equal(current.parameters, run.parameters):
        return "its parameters changed since the plan"
    if change.op == "recreate":
        # The new run would be made with what the plan saw: an edit since would be undone.
        carry = change.carry if change.carry is not None else LEGACY_CARRY
        if "job_variables" in carry and not json_equal(current.job_variables, run.job_variables):
            return "its job variables changed since the plan"
    return None


def _utc(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _moved_since(change: Change, states: Sequence[dict[str, Any]]) -> str | None:
    """Why a run's state history (newest last, as the server reads it) says it moved since
    the plan saw it (None: its latest state is the very state the plan saw, or the plan has
    no state id to compare)."""
    if change.run.state_id is None or not states:
        return None
    latest = max(states, key=lambda s: str(s.get("timestamp") or ""))
    if str(latest.get("id")) == str(change.run.state_id):
        return None
    label = latest.get("name") or latest.get("type") or "another state"
    return f"in a new {label} state since the plan (seen while archiving it): not deleted"


def _not_as_planned(change: Change, new_run: FlowRun) -> str | None:
    """How the run a recreate's create returned differs from the plan's new run (None: it
    is as planned: Scheduled, or marked Late, at the planned time)."""
    planned = change.state.scheduled_time if change.state else None
    state = new_run.state
    if state is None or state.type is not StateType.SCHEDULED:
        return f"now {_label(new_run)}"
    when = state.state_details.scheduled_time or new_run.next_scheduled_start_time
    if planned is not None and when != planned:
        return f"scheduled at {_utc(when) if when else 'no time'}, not {_utc(planned)}"
    return None


def _same_otherwise(change: Change, current: FlowRun) -> bool:
    """The run is as the plan saw it, tags aside (a tag change made earlier by this plan)."""
    return _drift(change, current.model_copy(update={"tags": change.run.tags})) is None


def _judge(result: OrchestrationResult) -> tuple[Literal["done", "drifted", "failed"], str]:
    if result.status is SetStateStatus.ACCEPT:
        name = result.state.name if result.state and result.state.name else "accepted"
        return "done", name
    reason = result.reason or result.status.value
    if result.status is SetStateStatus.ABORT and "terminal" in reason:
        return "drifted", f"the server refused: {reason}"
    return "failed", f"{result.status.value}: {reason}"


class Executor:
    """Applies one plan. ``stop`` (an event) stops dispatching; in-flight work finishes."""

    def __init__(
        self,
        client: PrefectClient,
        plan: Plan,
        journal: Journal,
        *,
        previous: JournalState | None = None,
        options: ApplyOptions = ApplyOptions(),
        retry: RetryPolicy | None = None,
        stop: anyio.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        archive: Path | None = None,
        on_finish: FinishHook | None = None,
    ) -> None:
        self.client = client
        #: Told of every change once the journal has recorded it (runner.events).
        self.on_finish = on_finish
        self._base_policy = retry or client.retry_policy
        self.plan = plan
        self.journal = journal
        self.previous = previous
        self.options = options
        self.stop = stop or anyio.Event()
        self.on_progress = on_progress
        self.outcomes: dict[str, Outcome] = {}
        self.stopped: str | None = None
        self._limit = AdaptiveLimit(4, 8)
        self._queued = 0
        self._deferred: list[tuple[Sequence[Change], BaseException]] = []
        self._bulk = False
        #: Each deployment's work pool, read once a step (for recreates carrying a queue).
        self._pools: dict[UUID, str | None] = {}
        #: Seconds between reading a run back and sending its write, one per write.
        self.windows: list[float] = []
        #: Runs read back ahead of their one-run writes: run (None: gone) and when it was read.
        self._ahead: dict[UUID, tuple[FlowRun | None, float]] = {}
        #: Where deletes are archived: ``archive``, else where the journal says an earlier
        #: apply of the plan archived, else next to the journal. Opened by :meth:`run`.
        recorded = previous.archive if previous is not None else None
        folder = journal.path.parent
        self.archive_path = archive or (folder / recorded if recorded else folder / ARCHIVE_NAME)
        self.archive: ArchiveWriter | None = None
        #: The server's JSON of runs read back before an archived delete, by id, until
        #: their record is written (or they need no write).
        self._documents: dict[UUID, dict[str, Any]] = {}
        #: What every request goes through: the client with this apply's settings (each step
        #: its own retry policy and rate), and push-back slowing the concurrency limit down.
        self._api = self._tuned(retry=self._base_policy, rate_limit=options.rate_limit)

    def _tuned(self, *, retry: RetryPolicy, rate_limit: float | None) -> PrefectClient:
        return self.client.tuned(
            retry=retry, rate_limit=rate_limit, on_backoff=lambda status: self._limit.busy()
        )

    # -- bookkeeping ---------------------------------------------------------------------

    def _finish(
        self,
        change: Change | ObjectChange,
        status: Literal["done", "drifted", "raced", "failed", "created"],
        detail: str | None = None,
        new_run_id: str | None = None,
        *,
        state_after: State | None = None,
        replaced: Replaced | None = None,
    ) -> None:
        """Record an outcome; ``state_after`` and ``replaced``: the state a state change left
        and the one it replaced, for ``runner undo``."""
        self.journal.record(
            change.key,
            status,
            detail=detail,
            new_run_id=new_run_id,
            state_after=str(state_after.id) if state_after and state_after.id else None,
            replaced=replaced,
            sync=status == "created",
        )
        outcome = self.outcomes[change.key]
        outcome.status = status
        outcome.detail = detail
        if new_run_id is not None:
            outcome.new_run_id = new_run_id
        if status in ("done", "raced"):
            self.progress.done += 1
        elif status == "drifted":
            self.progress.drifted += 1
        elif status == "failed":
            self.progress.failed += 1
            self._check_failure_policy()
        if self.on_finish is not None:
            self.on_finish(change, status, detail, outcome.new_run_id)

    def _check_failure_policy(self) -> None:
        failed, total = self.progress.failed, max(1, self.progress.total)
        limit, ratio = self.options.max_failures, self.options.max_fail_ratio
        if (limit is not None and failed > limit) or (
            ratio is not None and failed >= 5 and failed / total > ratio
        ):
            if self.stopped is None:
                self.stopped = (
                    f"stopped after {plural(failed, 'failure')} (the failure policy's limit)"
                )
            self.stop.set()

    def _finish_if_ours(self, change: Change, current: FlowRun | None) -> bool:
        """Finish ``change`` as done when the run's state is this change, made by an earlier
        attempt whose answer was lost (a dropped connection, a crash before the journal): its
        transition id is one this plan proposes for the change, per run or in bulk."""
        if change.op == "tag" and current is not None and change.tags is not None:
            if tuple(current.tags) != change.tags or not _same_otherwise(change, current):
                return False
            self._finish(change, "done", "tags " + ", ".join(change.tags) + " (done earlier)")
            return True
        details = current.state.state_details if current and current.state else None
        tid = details.transition_id if details else None
        if current is None or tid is None or change.state is None:
            return False
        if tid not in (transition_id(self.plan, change.key), self._bulk_transition_id(change)):
            return False
        # What it replaced is not read here (a rare path): an undo restores no message then.
        self._finish(
            change, "done", f"{current.state_name} (done earlier)", state_after=current.state
        )
        return True

    def _bulk_transition_id(self, change: Change) -> UUID:
        """One per step and target state: every batch of the step proposes its state with it.

        From the state's plan-document form, not its repr: a resumed apply reads the plan
        back from JSON, where a time's tzinfo is another object with another repr."""
        state = change.state
        assert state is not None
        canonical = json.dumps(
            [state.type, state.name, state.message, _iso(state.scheduled_time), state.force]
        )
        return transition_id(self.plan, f"{change.step}:bulk:{canonical}")

    def _stop_unauthorized(self, exc: Unauthorized) -> None:
        """Credentials rejected (expired key, revoked token): every further request would be
        too. Stop; what was not done stays pending for a resume with working credentials."""
        if self.stopped is None:
            self.stopped = f"stopped: {exc}"
        self.stop.set()

    def _fail_all(self, changes: Sequence[Change], exc: BaseException) -> None:
        detail = str(exc) if isinstance(exc, APIError) else f"{type(exc).__name__}: {exc}"
        for change in changes:
            if self.outcomes[change.key].status in ("pending", "created"):
                self._finish(change, "failed", detail)

    async def _guarded(
        self, changes: Sequence[Change], work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run one unit of work under the concurrency limit; failures are recorded, not raised."""
        await self._limit.acquire()
        started: float | None = None
        try:
            if self.stop.is_set():
                return  # stopped while it waited: it stays pending for the resume
            started = time.monotonic()
            await work()
        except (ServerError, Unreachable) as exc:
            # Busy or unreachable past the retries: not a verdict on the change. Try again
            # after the pass, slower; only then does it count as failed.
            self._deferred.append((changes, exc))
        except Unauthorized as exc:
            self._stop_unauthorized(exc)
        except APIError as exc:
            self._fail_all(changes, exc)
        except CheckpointWriteError:
            raise  # nothing more can be recorded: the apply stops, a resume goes on
        except Exception as exc:  # a bug must not lose the journal: record and go on
            self._fail_all(changes, exc)
        finally:
            self._queued -= 1
            await self._limit.release(time.monotonic() - started if started is not None else None)
            if self.on_progress is not None:
                self.on_progress(self.progress)

    # -- reading back --------------------------------------------------------------------

    async def _current(
        self, changes: Sequence[Change], *, before_write: bool = False
    ) -> dict[UUID, FlowRun]:
        """The runs as they are now, by id (a run that is gone is absent). Paged by the
        server's page size, read again where the server turned out to take smaller pages.
        ``before_write``: the read-back right before their write; the JSON of runs to be
        archived is kept for their record."""
        ids = [c.run.id for c in changes]
        keep = before_write and any(self._archives(c) for c in changes)
        documents = self._documents if keep else None
        found: dict[UUID, FlowRun] = {}
        start = 0
        while start < len(ids):
            size = self._api.page_size
            chunk = ids[start : start + size]
            runs = await self._api.read_flow_runs(
                FlowRunQuery(flow_runs=by_ids(chunk)), limit=len(chunk), documents=documents
            )
            if len(runs) < len(chunk) and self._api.page_size < size:
                continue  # the server's pages are smaller than assumed: this chunk again
            found.update((run.id, run) for run in runs)
            start += len(chunk)
        return found

    async def _read_back(self, changes: Sequence[Change]) -> tuple[dict[UUID, FlowRun], float]:
        """The runs as they are now, and when they were read: from the read-ahead of
        one-run writes when :meth:`_batches` made one, else read now."""
        ahead = [self._ahead.pop(c.run.id, None) for c in changes]
        known = [a for a in ahead if a is not None]
        if len(known) == len(changes):
            found = {run.id: run for run, _ in known if run is not None}
            return found, min(at for _, at in known)
        return await self._current(changes, before_write=True), time.monotonic()

    async def _read_one(self, change: Change, *, before_write: bool = False) -> FlowRun | None:
        """The run as it is now (None: gone); ``before_write`` as for :meth:`_current`."""
        documents = self._documents if before_write and self._archives(change) else None
        try:
            return await self._api.read_flow_run(change.run.id, documents=documents)
        except NotFound:
            return None

    def _settled(self, change: Change, current: FlowRun | None) -> bool:
        """Finish ``change`` if it needs no write (made earlier by this plan, drifted, or a
        delete of a run that is gone); True when it did."""
        if self._finish_if_ours(change, current):
            self._documents.pop(change.run.id, None)
            return True
        why = _drift(change, current)
        if why is None:
            return False
        self._documents.pop(change.run.id, None)  # not to be archived: not deleted
        if current is None and change.op == "delete":
            self._finish(change, "done", "already gone")
        else:
            self._finish(change, "drifted", why)
        return True

    def _writing(self, read_at: float) -> None:
        """A write is about to be sent for what was read at ``read_at``: the time between is
        the window in which a change by someone else goes unseen by runner's own check."""
        self.windows.append(time.monotonic() - read_at)

    async def _landed_on(
        self, change: Change, landed: State | None
    ) -> tuple[str | None, Replaced | None]:
        """None when the state runner's write replaced is the very one the plan saw; else
        that state's name. Read from the run's history: Prefect's ``bulk_set_state`` checks
        its filter before it writes, not in the same transaction, and a per-run write has
        no check at all, so a run can change while the write is in flight. With it, the
        state replaced (None: not known), for the journal."""
        if landed is None or landed.id is None or change.run.state_id is None:
            return None, None
        history = await self._api.read_flow_run_states(change.run.id)
        ids = [state.id for state in history]
        if landed.id not in ids:
            return None, None
        at = ids.index(landed.id)
        before = history[at - 1] if at else None
        if before is not None and before.id == change.run.state_id:
            return None, Replaced(message=before.message)
        if before is None:
            return "no state", None
        replaced = Replaced(
            message=before.message,
            as_planned=False,
            id=str(before.id) if before.id else None,
            type=before.type.value,
            name=before.name,
            scheduled_time=_iso(before.state_details.scheduled_time),
        )
        return before.name or before.type.value, replaced

    async def _finish_verified(
        self, changes: Sequence[Change], results: dict[UUID, OrchestrationResult]
    ) -> None:
        """Finish state changes the server answered, each checked to have landed on the
        state the plan saw. Every state change is verified: a bulk request of several
        runs (the server writes them one after another, after its filter was read), a
        one-run bulk request (its filter cannot hold the state id: a new state of the same
        type, name and time set after runner's read-back passes it; found by an adversarial
        test) and a per-run write (no check in the write at all).

        Each accepted change costs one read of its run's state history: no cheaper sign
        tells every such race (a resumed or re-run run keeps its start time and, resumed, its
        run count)."""
        limit = anyio.Semaphore(4)

        async def one(change: Change, result: OrchestrationResult) -> None:
            status, detail = _judge(result)
            if status == "done":
                async with limit:
                    raced_on, replaced = await self._landed_on(change, result.state)
                if raced_on is not None:
                    self._finish(
                        change,
                        "raced",
                        f"{detail}, but it landed on {raced_on}, a state the plan did not see"
                        " (the run changed while the write was in flight)",
                        state_after=result.state,
                        replaced=replaced,
                    )
                    return
                self._finish(change, status, detail, state_after=result.state, replaced=replaced)
                return
            self._finish(change, status, detail)

        async with anyio.create_task_group() as group:
            for change in changes:
                group.start_soon(one, change, results[change.run.id])

    # -- the operations ------------------------------------------------------------------
    #
    # Every write is conditional on what the plan saw. On servers with the bulk routes,
    # deletes and state changes go through them even for one run: the planned state's type
    # and name (and the tags, deployment and scheduled time the batch shares) sit in the same
    # filter as the ids, so the server itself leaves alone a run that drifted from them.
    # Before that, and before every write that has no such route (Prefect 2.x, recreate,
    # resume, tag), runner reads the runs back and compares them with the plan exactly (state
    # id, tags, name, deployment, queue, pool); a state change is checked against the run's
    # history afterwards (raced).

    async def _still_as_planned(self, changes: Sequence[Change]) -> list[Change]:
        """Read ``changes`` back (or take their read-ahead) and finish those that need no
        write; the rest are about to be written (their window starts counting here)."""
        current, read_at = await self._read_back(changes)
        live = [c for c in changes if not self._settled(c, current.get(c.run.id))]
        if live:
            self._writing(read_at)
        return live

    async def _read_back_one(self, change: Change) -> float | None:
        """Read one run back right before its write: None when the change is finished
        without one (see :meth:`_settled`), else when the run was read (the write follows).
        Never read ahead: the writes that follow it have no condition the server checks."""
        current = await self._read_one(change)
        read_at = time.monotonic()
        if self._settled(change, current):
            return None
        self._writing(read_at)
        return read_at

    def _archives(self, change: Change) -> bool:
        """Whether ``change`` is a delete its step archives first."""
        return change.op == "delete" and self.plan.steps[change.step].archive is not None

    async def _archive(self, live: Sequence[Change]) -> dict[UUID, str]:
        """Write the records of runs about to be deleted to the archive, one batch, fsynced,
        before their delete is sent. The run's JSON is the read-back's; its state history is
        read now (a request a run), and its logs when the step says so (a request a page of
        200 lines, for the batch). A run this plan archived already (an apply that stopped
        between the archive and the delete) is not written again. Raises when a record
        cannot be read or written: then nothing of the batch is deleted."""
        documents = {c.run.id: self._documents.pop(c.run.id, None) for c in live}
        writer = self.archive
        todo = [c for c in live if self._archives(c)]
        if writer is None or not todo:
            return {}
        todo = [c for c in todo if c.run.id not in writer.archived]
        if not todo:
            return {}
        specs = {c.run.id: self.plan.steps[c.step].archive or ArchiveSpec() for c in todo}
        states: dict[UUID, list[dict[str, Any]]] = {}
        errors: list[Exception] = []
        limit = anyio.Semaphore(4)

        async def read(change: Change) -> None:
            try:
                async with limit:
                    run_id = change.run.id
                    if documents.get(run_id) is None:  # never read back with its JSON
                        found: dict[UUID, dict[str, Any]] = {}
                        await self._api.read_flow_run(run_id, documents=found)
                        documents[run_id] = found[run_id]
                    states[run_id] = await self._api.read_flow_run_state_documents(run_id)
            except Exception as exc:  # raised below as itself, not in an exception group
                errors.append(exc)

        async with anyio.create_task_group() as group:
            for change in todo:
                group.start_soon(read, change)
        if errors:
            raise errors[0]
        # The history just read is the newest word on the run: one whose latest state is not
        # the one the plan saw has moved since the read-back (even to a state of the same type
        # and name, which the bulk route's filter cannot tell): it is neither archived nor
        # deleted.
        drifted: dict[UUID, str] = {}
        for change in todo:
            moved = _moved_since(change, states[change.run.id])
            if moved is not None:
                drifted[change.run.id] = moved
        todo = [c for c in todo if c.run.id not in drifted]
        logs: dict[str, list[dict[str, Any]]] = {}
        wanted = [c.run.id for c in todo if specs[c.run.id].logs]
        for line in await self._api.read_logs(wanted) if wanted else ():
            logs.setdefault(str(line.get("flow_run_id")), []).append(line)
        writer.write(
            archive_record(
                documents[c.run.id] or {},
                states[c.run.id],
                logs=logs.get(str(c.run.id), []) if specs[c.run.id].logs else None,
                flow=c.run.flow,
                deployment=c.run.deployment,
                plan_id=self.plan.id,
                step=c.step,
            )
            for c in todo
        )
        return drifted

    async def _delete_bulk(self, changes: Sequence[Change]) -> None:
        current, read_at = await self._read_back(changes)
        live = [c for c in changes if not self._settled(c, current.get(c.run.id))]
        if not live:
            return
        drifted = await self._archive(live)
        for change in live:
            if change.run.id in drifted:
                self._finish(change, "drifted", drifted[change.run.id])
        live = [c for c in live if c.run.id not in drifted]
        if not live:
            return
        self._writing(read_at)
        gone, live = await self._bulk_delete(live, self._settled)
        left = [c for c in live if c.run.id not in gone]
        now = await self._current(left) if left else {}
        for change in live:
            if change.run.id in gone:
                self._finish(change, "done", "deleted")
            elif change.run.id not in now:
                self._finish(change, "done", "already gone")
            else:
                why = _drift(change, now[change.run.id]) or "the server left it alone"
                self._finish(change, "drifted", why)

    async def _bulk_delete(
        self, live: list[Change], settle: Callable[[Change, FlowRun | None], bool]
    ) -> tuple[set[UUID], list[Change]]:
        """One conditional bulk delete of ``live`` (read back just before): what the server
        deleted, and the changes still in the request when it was answered. A retry waits
        (up to minutes, a server's ``Retry-After``): before each resend the runs are read
        back again, and ``settle`` finishes those no longer to be deleted (True)."""
        sending = list(live)

        async def check_again(ids: list[UUID]) -> list[UUID]:
            nonlocal sending
            current = await self._current(sending)
            read_at = time.monotonic()
            sending = [c for c in sending if not settle(c, current.get(c.run.id))]
            if sending:
                self._writing(read_at)
            return [c.run.id for c in sending]

        gone = await self._api.bulk_delete_flow_runs(
            [c.run.id for c in live], only_if=guard_filter(live), check_again=check_again
        )
        return gone, sending

    async def _delete_if_unchanged(
        self, change: Change, *, archive: bool = False
    ) -> tuple[str, str | None]:
        """Delete one run on a server without the bulk routes, if it is still what the plan
        saw (read back right before: the per-run route checks nothing): ("deleted" | "gone"
        | "drifted", why it drifted). ``archive``: its record is archived first (a delete,
        not a recreate's). With the bulk routes, deletes go in batches (:meth:`_delete_bulk`,
        :meth:`_delete_old`)."""
        current = await self._read_one(change, before_write=archive)
        read_at = time.monotonic()
        if current is None:
            return "gone", None
        why = _drift(change, current)
        if why is not None:
            self._documents.pop(change.run.id, None)
            return "drifted", why
        if archive:
            moved = (await self._archive([change])).get(change.run.id)
            if moved is not None:
                return "drifted", moved
        self._writing(read_at)
        deleted = await self._api.delete_flow_run(change.run.id)
        return ("deleted" if deleted else "gone"), None

    async def _delete_one(self, change: Change) -> None:
        outcome, why = await self._delete_if_unchanged(change, archive=True)
        if outcome == "drifted":
            self._finish(change, "drifted", why)
        else:
            self._finish(change, "done", "deleted" if outcome == "deleted" else "already gone")

    async def _set_state_bulk(self, changes: Sequence[Change]) -> None:
        state = changes[0].state
        assert state is not None
        live = await self._still_as_planned(changes)
        if not live:
            return
        results = await self._api.bulk_set_flow_run_state(
            [c.run.id for c in live],
            _proposed(state),
            force=state.force,
            only_if=guard_filter(live),
            transition_id=(
                transition_id(self.plan, live[0].key)
                if len(live) == 1
                else self._bulk_transition_id(live[0])
            ),
        )
        missing = [c for c in live if c.run.id not in results]
        now = await self._current(missing) if missing else {}
        for change in missing:
            after = now.get(change.run.id)
            if not self._finish_if_ours(change, after):
                self._finish(change, "drifted", _drift(change, after) or "the server left it alone")
        answered = [c for c in live if c.run.id in results]
        await self._finish_verified(answered, results)

    async def _set_state_one(self, change: Change) -> None:
        if self._bulk:
            await self._set_state_bulk([change])
            return
        assert change.state is not None
        if await self._read_back_one(change) is None:
            return
        result = await self._api.set_flow_run_state(
            change.run.id,
            _proposed(change.state),
            force=change.state.force,
            transition_id=transition_id(self.plan, change.key),
        )
        await self._finish_verified([change], {change.run.id: result})

    def _refuse_passed(self, step: StepPlan, todo: list[Change]) -> list[Change]:
        """A reschedule whose new start time was ahead when the plan was made but has passed
        since (a saved plan applied late, a resume, a prompt left open) would start at once,
        which the reviewed plan did not say: each is finished as failed, unless the step
        allows the past. A time at or before the plan's now (``at: now``) is what the plan
        said."""
        if step.action != "reschedule" or step.allow_past:
            return todo
        now = datetime.now(timezone.utc)
        keep: list[Change] = []
        for change in todo:
            when = change.state.scheduled_time if change.state else None
            status = self.outcomes[change.key].status
            if status == "pending" and when is not None and self.plan.created_at < when < now:
                self._finish(
                    change,
                    "failed",
                    f"its new start time {_utc(when)} has passed since the plan was made"
                    f" ({_utc(self.plan.created_at)}): it would start at once; plan again,"
                    " or set allow_past: true",
                )
            else:
                keep.append(change)
        return keep

    async def _pool_of(self, deployment_id: UUID) -> str | None:
        """The work pool a deployment's new runs go to (read once a step)."""
        if deployment_id not in self._pools:
            deployment = await self._api.read_deployment(deployment_id)
            self._pools[deployment_id] = deployment.work_pool_name
        return self._pools[deployment_id]

    async def _recreate(self, change: Change, created: str | None) -> None:
        """Create the new run (see :meth:`_create_new`), then delete the old run if it is
        still what the plan saw. A resumed half-done recreate checks the old run again before
        deleting it."""
        if created is None:
            created = await self._create_new(change)
            if created is None:
                return
        elif not await self._new_runs_there([change]):
            return
        outcome, why = await self._delete_if_unchanged(change)
        self._finish_recreated(change, created, outcome, why)

    async def _new_runs_there(self, changes: Sequence[Change]) -> list[Change]:
        """Of recreates an earlier apply left half done (new run made, old run not yet
        deleted), those whose new run still exists. The others are finished failed, their
        old runs left alone: deleting one would lose the run its new run was to replace."""
        made = {c.key: UUID(str(self.outcomes[c.key].new_run_id)) for c in changes}
        there: set[UUID] = set()
        ids = list(made.values())
        for start in range(0, len(ids), MAX_BULK_SIZE):
            there |= await self._api.existing_run_ids(ids[start : start + MAX_BULK_SIZE])
        kept: list[Change] = []
        for change in changes:
            if made[change.key] in there:
                kept.append(change)
                continue
            self._finish(
                change,
                "failed",
                f"its new run {made[change.key]}, made by an earlier apply, is gone: the old"
                " run was left alone; plan again to recreate it",
            )
        return kept

    async def _create_new(self, change: Change) -> str | None:
        """A recreate's new run, made if the old run is still what the plan saw (read back
        first, and again before a resend), idempotent by the key the plan gave it, and
        journaled as created: its id; None when the change was finished without it.

        An old run found gone or changed may have been recreated by an earlier apply that
        stopped before its journal said so (or whose create's answer was lost): the run its
        key made is looked for then, and reported."""
        assert change.state is not None and change.run.deployment_id is not None
        deployment_id = change.run.deployment_id
        current = await self._read_one(change)
        checked_at = time.monotonic()
        why = _drift(change, current)
        if why is not None and await self._made_earlier(change, current, why):
            return None
        if self._settled(change, current):
            return None
        self._writing(checked_at)
        run = change.run
        drifted: list[str] = []

        async def changed_meanwhile() -> bool:
            """Before a resend (after up to minutes of waiting): is the old run still what
            the plan saw?"""
            why = _drift(change, await self._read_one(change))
            if why is not None:
                drifted.append(why)
            return why is not None

        carry = change.carry if change.carry is not None else LEGACY_CARRY
        if "work_queue" in carry:
            pool = await self._pool_of(change.run.deployment_id)
            if pool != run.work_pool:
                # The server would look the queue up (and make it) in the other pool.
                self._finish(
                    change,
                    "drifted",
                    f"its deployment's runs now go to work pool {pool or '(none)'}, not"
                    f" {run.work_pool}, where the plan saw it: the old run was left alone",
                )
                return None
        new_run = await self._api.create_flow_run_from_deployment(
            deployment_id,
            state=_proposed(change.state),
            parameters=run.parameters if "parameters" in carry else None,
            tags=change.tags if "tags" in carry else None,
            idempotency_key=change.idempotency_key,
            name=run.name if "name" in carry else None,
            job_variables=run.job_variables if "job_variables" in carry else None,
            work_queue_name=run.work_queue if "work_queue" in carry else None,
            before_retry=changed_meanwhile,
        )
        if isinstance(new_run, NotSentAgain):
            why = f"{drifted[-1]} (read again before the create was sent again)"
            if new_run.maybe_made:
                why += (
                    ": the old run was left alone; an earlier attempt may yet be carried out"
                    " (no answer, or a 5xx) and no run made with its idempotency key"
                    f" {change.idempotency_key} is found so far: look for one in its"
                    " deployment before you plan again"
                )
            else:
                why += ": no new run was made, the old run was left alone"
            self._finish(change, "drifted", why)
            return None
        if new_run.deployment_id != deployment_id:
            # Prefect keys idempotency by flow, not by deployment.
            self._finish(
                change,
                "failed",
                f"Prefect returned run {new_run.name} ({new_run.id}) of another deployment"
                f" ({new_run.deployment_id}) for this change's idempotency key (Prefect keys"
                " them by flow): no run was made, and the old run was left alone",
            )
            return None
        if drifted:  # the old run changed; the create's first attempt made the new run
            self._finish_recreated(change, str(new_run.id), "drifted", drifted[-1])
            return None
        mismatch = _not_as_planned(change, new_run)
        if mismatch is not None:
            # The key returned a run an earlier apply made for this change, no longer
            # (or never) where this plan puts it: the old run stays, nothing is deleted.
            self._finish(
                change,
                "failed",
                f"Prefect returned run {new_run.name} ({new_run.id}), made for this change"
                f" by an earlier apply and {mismatch}: the old run was left alone; delete"
                " or move that run, then plan again",
            )
            return None
        created = str(new_run.id)
        self._finish(change, "created", "new run created", new_run_id=created)
        return created

    async def _made_earlier(self, change: Change, current: FlowRun | None, why: str) -> bool:
        """For a recreate whose old run is gone or changed (``current``; ``why``, its drift):
        finish it by the run its idempotency key made, when an earlier apply made one (it
        stopped before its journal said so): done when the old run is gone (that apply
        deleted it, or someone did), drifted with both runs kept when it changed. False: no
        such run."""
        if change.idempotency_key is None or change.run.deployment_id is None:
            return False
        made = await self._api.read_run_made_with_key(
            change.run.deployment_id, change.idempotency_key
        )
        if made is None:
            return False
        if current is not None:
            self._finish_recreated(change, str(made.id), "drifted", why)
            return True
        since = _not_as_planned(change, made)
        self._finish(
            change,
            "done",
            f"recreated as {made.id} by an earlier apply (the old run was already gone"
            + (f"; the new run is {since}" if since else "")
            + ")",
            new_run_id=str(made.id),
        )
        return True

    def _finish_recreated(
        self, change: Change, created: str, outcome: str, why: str | None
    ) -> None:
        """Finish a recreate whose new run ``created`` is made, by what became of the old
        run: "deleted", "gone" (already) or "drifted" (``why``; left alone)."""
        if outcome == "drifted":
            self._finish(
                change,
                "drifted",
                f"new run {created} created, but the old run changed before it was deleted"
                f" ({why}): the old run was left alone, and both exist",
                new_run_id=created,
            )
        else:
            gone = "" if outcome == "deleted" else " (the old run was already gone)"
            self._finish(change, "done", f"recreated as {created}{gone}", new_run_id=created)

    async def _resume(self, change: Change) -> None:
        if await self._read_back_one(change) is None:
            return
        status, detail = _judge(await self._api.resume_flow_run(change.run.id))
        self._finish(change, status, detail)

    async def _tag(self, change: Change) -> None:
        if await self._read_back_one(change) is None:
            return
        await self._api.update_flow_run_tags(change.run.id, change.tags or ())
        self._finish(change, "done", "tags " + ", ".join(change.tags or ()))

    async def store_artifact(
        self, key: str, markdown: str, *, description: str, flow_run_id: UUID | None
    ) -> UUID:
        """Store the apply's summary as a markdown artifact: written like every other write,
        through the executor (sent once, even when its answer is lost)."""
        return await self._api.create_markdown_artifact(
            key, markdown, description=description, flow_run_id=flow_run_id
        )

    # -- a step --------------------------------------------------------------------------

    async def _per_run(
        self, changes: Sequence[Change], op: Callable[[Change], Awaitable[None]]
    ) -> None:
        """One unit of work per change; each reads its run back right before its write."""
        async with anyio.create_task_group() as group:
            for change in changes:
                if self.stop.is_set():
                    return
                await self._wait_for_slot()
                group.start_soon(self._guarded, [change], lambda c=change: op(c))

    async def _recreates(self, fresh: Sequence[Change], half_done: Sequence[Change]) -> None:
        """Recreates on a server with the bulk routes. Each new run is made on its own, its
        old run read back right before (the create has no condition the server checks); the
        old runs whose new runs are made are deleted in batches (:meth:`_delete_old`: read
        back together, then one conditional bulk delete), sent when ``RECREATE_BATCH`` are
        ready or the first has waited ``RECREATE_WAIT_SECONDS``, about as long as an old run
        outlives its new one. A half-done recreate of an earlier apply joins a batch: its old
        run is read back like the others. A stop leaves the made ones "created": the resume
        deletes their old runs."""
        ready: dict[tuple[object, ...], list[Change]] = {}
        since: dict[tuple[object, ...], float] = {}

        def made(change: Change) -> None:
            run = change.run
            key = (run.state_type, run.state_name, run.tags, run.deployment_id)
            since.setdefault(key, time.monotonic())
            ready.setdefault(key, []).append(change)

        resumed = frozenset(c.key for c in half_done)
        for change in half_done:
            made(change)

        async def create(change: Change) -> None:
            if await self._create_new(change) is not None:
                made(change)

        async with anyio.create_task_group() as deletes:

            async def send(*, waiting: bool = True) -> None:
                """Send the batches that are full, or have waited long enough; with
                ``waiting=False``, every batch."""
                for key in list(ready):
                    while ready.get(key) and not self.stop.is_set():
                        full = len(ready[key]) >= RECREATE_BATCH
                        due = time.monotonic() - since[key] >= RECREATE_WAIT_SECONDS
                        if waiting and not (full or due):
                            break
                        batch = ready[key][:RECREATE_BATCH]
                        del ready[key][: len(batch)]
                        since[key] = time.monotonic()
                        await self._wait_for_slot()
                        work = functools.partial(self._delete_old, batch, resumed)
                        deletes.start_soon(self._guarded, batch, work)
                    if not ready.get(key):
                        ready.pop(key, None)
                        since.pop(key, None)

            async with anyio.create_task_group() as creates:
                for change in fresh:
                    if self.stop.is_set():
                        break
                    await send()
                    await self._wait_for_slot()
                    creates.start_soon(self._guarded, [change], lambda c=change: create(c))
            await send(waiting=False)

    async def _delete_old(
        self, changes: Sequence[Change], resumed: frozenset[str] = frozenset()
    ) -> None:
        """Delete the old runs of recreates whose new runs are made, each only if it is still
        what the plan saw: read back together right before (exactly: its state id, tags,
        name, ...; see :func:`_drift`), then one bulk delete of those unchanged, its filter
        holding what they share (see :func:`guard_filter`). A run the server left is read
        again: gone already, or changed (left alone; both runs exist). Those made by an
        earlier apply (keys in ``resumed``) are first checked to still have their new run
        (see :meth:`_new_runs_there`)."""
        earlier = [c for c in changes if c.key in resumed]
        if earlier:
            kept = {c.key for c in await self._new_runs_there(earlier)}
            changes = [c for c in changes if c.key not in resumed or c.key in kept]
            if not changes:
                return

        def settle(change: Change, now: FlowRun | None) -> bool:
            created = self.outcomes[change.key].new_run_id
            assert created is not None
            why = _drift(change, now)
            if now is None:
                self._finish_recreated(change, created, "gone", None)
            elif why is not None:
                self._finish_recreated(change, created, "drifted", why)
            return why is not None

        current = await self._current(changes)
        read_at = time.monotonic()
        live = [c for c in changes if not settle(c, current.get(c.run.id))]
        if not live:
            return
        self._writing(read_at)
        gone, live = await self._bulk_delete(live, settle)
        left = [c for c in live if c.run.id not in gone]
        now = await self._current(left) if left else {}
        for change in live:
            created = self.outcomes[change.key].new_run_id
            assert created is not None
            if change.run.id in gone:
                self._finish_recreated(change, created, "deleted", None)
            elif change.run.id not in now:
                self._finish_recreated(change, created, "gone", None)
            else:
                why = _drift(change, now[change.run.id]) or "the server left it alone"
                self._finish_recreated(change, created, "drifted", why)

    async def _batches(
        self,
        changes: Sequence[Change],
        op: Callable[[Sequence[Change]], Awaitable[None]],
        size: int = MAX_BULK_SIZE,
    ) -> None:
        """Send batches of up to ``size`` runs that share the planned and the target state."""
        groups: dict[tuple[object, ...], list[Change]] = {}
        for change in changes:
            key = (change.run.state_type, change.run.state_name, change.state)
            groups.setdefault(key, []).append(change)
        async with anyio.create_task_group() as group:
            for members in groups.values():
                for start in range(0, len(members), size):
                    if self.stop.is_set():
                        return
                    batch = members[start : start + size]
                    await self._wait_for_slot()
                    if size == 1 and batch[0].run.id not in self._ahead:
                        await self._read_ahead(members[start : start + 2 * self._limit.limit])
                    group.start_soon(self._guarded, batch, lambda b=batch: op(b))

    async def _read_ahead(self, changes: Sequence[Change]) -> None:
        """Read back the next one-run writes in one request (not one each): as many as two
        rounds of the concurrency limit, so each write follows its read-back closely (the
        time between is measured, see :meth:`_writing`). A failed read leaves them to be read
        one by one."""
        try:
            current = await self._current(changes, before_write=True)
        except APIError:
            return
        read_at = time.monotonic()
        for change in changes:
            self._ahead[change.run.id] = (current.get(change.run.id), read_at)

    async def _wait_for_slot(self) -> None:
        # Queue no more work than the limit allows in flight: memory stays flat, and a stop
        # signal leaves everything not yet started pending.
        while self._queued >= self._limit.limit and not self.stop.is_set():
            await anyio.sleep(0.005)
        self._queued += 1

    def _strategy(self, step: StepPlan, op: str, bulk: bool, changes: Sequence[Change]) -> str:
        if not bulk or op not in ("delete", "set_state") or self.options.strategy == "per-run":
            return "per-run"
        if self.options.strategy == "bulk":
            return "bulk"
        if op == "delete":
            return "bulk"  # ~235 runs/s against ~20/s per run on SQLite
        # set_state: bulk when batches form (runs share their planned and target state; a
        # reschedule by a delay gives every run its own time: batches of one). Measured on a
        # local 3.8 server, 2,000 Late runs cancelled: bulk 17/s against 11/s per run on SQLite,
        # 51/s against 34/s on PostgreSQL, with 35x fewer requests. The server takes bulk
        # Scheduled states very slowly (~2 runs/s on SQLite), so never those.
        if any(c.state and c.state.type == "SCHEDULED" for c in changes):
            return "per-run"
        batches = len({(c.run.state_type, c.run.state_name, c.state) for c in changes})
        return "bulk" if batches * 2 <= len(changes) else "per-run"

    async def _op(self, step: StepPlan, op: str, changes: Sequence[Change], strategy: str) -> None:
        size = MAX_BULK_SIZE if strategy == "bulk" else 1
        if op == "delete":
            if self._bulk:
                await self._batches(changes, self._delete_bulk, size)
            else:
                await self._per_run(changes, self._delete_one)
        elif op == "set_state":
            if self._bulk:
                await self._batches(changes, self._set_state_bulk, size)
            else:
                await self._per_run(changes, self._set_state_one)
        elif op == "recreate":
            half_done = [c for c in changes if self.outcomes[c.key].status == "created"]
            fresh = [c for c in changes if self.outcomes[c.key].status != "created"]
            if self._bulk:
                await self._recreates(fresh, half_done)
                return
            async with anyio.create_task_group() as group:
                for change in half_done:
                    created = self.outcomes[change.key].new_run_id
                    await self._wait_for_slot()
                    group.start_soon(
                        self._guarded, [change], lambda c=change, n=created: self._recreate(c, n)
                    )
            await self._per_run(fresh, lambda c: self._recreate(c, None))
        elif op == "resume":
            await self._per_run(changes, self._resume)
        else:
            await self._per_run(changes, self._tag)

    async def _step(self, step: StepPlan, bulk: bool) -> str:
        concurrency = self.options.concurrency or step.concurrency
        # Start with one request in flight and grow while latency stays flat: a SQLite server
        # serialises writes and answers concurrent ones with 503s, so starting wide costs backoffs.
        self._limit = AdaptiveLimit(1, concurrency)
        self._api = self._tuned(
            retry=dataclasses.replace(
                self._base_policy,
                max_attempts=step.max_attempts,
                initial_backoff=step.backoff_seconds,
                max_backoff=step.max_backoff_seconds,
            ),
            rate_limit=self.options.rate_limit or step.rate_limit,
        )
        todo = [c for c in step.pending if self.outcomes[c.key].status in ("pending", "created")]
        todo = self._refuse_passed(step, todo)
        self._pools = {}
        used: set[str] = set()
        for op in ("delete", "set_state", "recreate", "resume", "tag"):
            changes = [c for c in todo if c.op == op]
            if not changes or self.stop.is_set():
                continue
            strategy = self._strategy(step, op, bulk, changes)
            used.add(strategy)
            self._deferred = []
            await self._op(step, op, changes, strategy)
            for round_ in range(DEFERRED_ROUNDS):
                if not self._deferred or self.stop.is_set():
                    break
                # Only what is still to do: a batch can finish some of its runs (gone,
                # drifted) before the request that was deferred.
                again = [
                    c
                    for batch, _ in self._deferred
                    for c in batch
                    if self.outcomes[c.key].status in ("pending", "created")
                ]
                self._deferred = []
                await anyio.sleep(2.0 * (round_ + 1))
                self._limit = AdaptiveLimit(1, max(1, concurrency // 2))
                await self._op(step, op, again, strategy)
            for batch, exc in self._deferred:
                self._fail_all(batch, exc)
            self._deferred = []
        self._documents.clear()
        return "+".join(sorted(used)) or "none"

    # -- deployments, work pools and work queues -------------------------------------------

    async def _read_object(self, view: ObjectView) -> ObjectView | None:
        data = await self._api.read_object(view.kind, view.id, view.name)
        if data is None:
            return None
        flows: dict[str, str] = {}
        if view.kind == "deployment" and data.get("flow_id"):
            flow = await self._api.read_flow(UUID(str(data["flow_id"])))
            flows[str(flow.id)] = flow.name
        return view_of(view.kind, data, flows)

    async def _deleted_with(self, view: ObjectView) -> dict[UUID, dict[str, Any]]:
        """The runs the server would delete with a write of deployment ``view`` now, by id,
        as the server returns them (nothing for a pool or queue)."""
        if view.kind != "deployment":
            return {}
        runs = await self._api.read_scheduled_runs(view.id)
        now = datetime.now(timezone.utc)
        keep = {r.id for r in deleted_with_write(runs, version=self.plan.server_version, now=now)}
        return {UUID(str(r["id"])): r for r in runs if UUID(str(r["id"])) in keep}

    async def _object_drift(
        self, view: ObjectView
    ) -> tuple[ObjectView | None, str | None, dict[UUID, dict[str, Any]]]:
        """The object now, why it drifted (None: it did not), and the runs the server would
        delete with the write. A run the plan did not list among them is drift (the
        scheduler made it since the plan; the reviewer never saw it deleted); one it listed
        and now gone (started, or deleted by someone) is not."""
        current = await self._read_object(view)
        reason = drift(view, current)
        if reason is not None:
            return current, reason, {}
        deleted = await self._deleted_with(view)
        planned = {r.id for r in view.scheduled_runs}
        new = [r for i, r in deleted.items() if i not in planned]
        if new:
            names = ", ".join(sorted(str(r.get("name")) for r in new))
            return (
                current,
                f"the server would also delete {plural(len(new), 'scheduled run')} the plan"
                f" did not list (made since the plan): {names}",
                deleted,
            )
        return current, None, deleted

    async def _archive_scheduled(
        self, change: ObjectChange, deleted: dict[UUID, dict[str, Any]]
    ) -> None:
        """Write the records of the runs the server deletes with a deployment's write to the
        archive, fsynced, before the write (as a delete step does)."""
        writer = self.archive
        todo = [i for i in deleted if writer is not None and i not in writer.archived]
        if writer is None or not todo:
            return
        states = {i: await self._api.read_flow_run_state_documents(i) for i in todo}
        writer.write(
            archive_record(
                deleted[i],
                states[i],
                logs=None,
                flow=change.object.flow or "",
                deployment=change.object.name,
                plan_id=self.plan.id,
                step=change.step,
            )
            for i in todo
        )

    async def _pause_one(self, change: ObjectChange) -> None:
        """Pause or resume one object if it is still what the plan saw: read it right before
        the write (Prefect has no conditional PATCH), write, read it again to confirm. For a
        deployment, the scheduled runs the server deletes with the write are read again too
        (drift: one the plan did not list) and archived before the write."""
        view = change.object
        word = paused_word(change.after, view.kind)
        current, reason, deleted = await self._object_drift(view)
        if reason is None and deleted and self.archive is not None:
            # Archived first (a request a run), then read and checked again, so the window
            # between the check and the write stays a few milliseconds. A run archived here
            # and then not deleted (the object drifted meanwhile) stays on the server.
            await self._archive_scheduled(change, deleted)
            current, reason, deleted = await self._object_drift(view)
            if reason is None:  # one deletable now that was not at the first read (rare)
                await self._archive_scheduled(change, deleted)
        read_at = time.monotonic()
        if reason is not None:
            self._finish(change, "drifted", reason)
            return
        assert current is not None
        if current.paused == change.after:
            # Not the state the plan saw: someone else did it, or an earlier attempt whose
            # answer was lost (no route tells which). Nothing is sent, and it is not claimed
            # as done: an undo must not invert what may be someone else's change.
            self._finish(
                change,
                "drifted",
                f"{word} since the plan (by someone else, or an earlier attempt whose answer"
                " was lost): nothing sent",
            )
            return
        self._writing(read_at)
        stopped: list[tuple[Literal["done", "drifted"], str]] = []

        async def read_again() -> bool:
            # A resend is a new write: the object is read and checked again first, so the
            # window between the check and the write stays a few milliseconds, not a backoff.
            again, why, more = await self._object_drift(view)
            if why is None and more:
                deleted.update(more)
                await self._archive_scheduled(change, more)
            if why is not None:
                stopped.append(("drifted", why))
            elif again is not None and again.paused == change.after:
                # The failed attempt took (its answer was lost): ours, so done.
                stopped.append(("done", f"{word} (was {paused_word(change.before, view.kind)})"))
            if stopped:
                return True
            self._writing(time.monotonic())
            return False

        await self._api.set_paused(
            view.kind, view.id, view.name, change.after, before_retry=read_again
        )
        if stopped:
            status, why = stopped[0]
            self._finish(change, status, why)
            return
        after = await self._read_object(view)
        if after is None or after.paused != change.after:
            now = "gone" if after is None else paused_word(after.paused, view.kind)
            self._finish(
                change,
                "failed",
                f"the server took the write, but the {NOUNS[view.kind]} is {now}, not {word}",
            )
            return
        gone = ""
        if deleted:
            left = await self._api.existing_run_ids(list(deleted))
            removed = sorted(str(r.get("name")) for i, r in deleted.items() if i not in left)
            if removed:
                gone = (
                    f"; the server deleted its {plural(len(removed), 'scheduled run')}:"
                    f" {', '.join(removed)}"
                )
        self._finish(change, "done", f"{word} (was {paused_word(change.before, view.kind)}){gone}")

    async def _object_step(self, step: StepPlan) -> str:
        """A step with a target, one object at a time in the plan's order (a handful of
        objects: no batching, nothing in parallel)."""
        self._api = self._tuned(
            retry=dataclasses.replace(
                self._base_policy,
                max_attempts=step.max_attempts,
                initial_backoff=step.backoff_seconds,
                max_backoff=step.max_backoff_seconds,
            ),
            rate_limit=self.options.rate_limit or step.rate_limit,
        )
        for change in step.pending_objects:
            if self.stop.is_set():
                break
            if self.outcomes[change.key].status != "pending":
                continue
            try:
                await self._pause_one(change)
            except Unauthorized as exc:
                self._stop_unauthorized(exc)
            except APIError as exc:
                self._finish(change, "failed", str(exc))
        return "per-object"

    async def run(self) -> ApplyResult:
        started = time.monotonic()
        for change in self.plan.work:
            entry = self.previous.entries.get(change.key) if self.previous else None
            if entry is not None and entry.status in FINISHED:
                self.outcomes[change.key] = Outcome(
                    change, entry.status, entry.detail, entry.new_run_id
                )
            elif entry is not None and entry.status == "created":
                self.outcomes[change.key] = Outcome(
                    change, "created", entry.detail, entry.new_run_id
                )
            else:
                self.outcomes[change.key] = Outcome(change, "pending")
        remaining = sum(1 for o in self.outcomes.values() if o.status in ("pending", "created"))
        self.progress = Progress(total=remaining)
        to_archive = frozenset(
            c.run.id
            for c in self.plan.pending
            if self._archives(c) and self.outcomes[c.key].status == "pending"
        ) | frozenset(  # what the server deletes with a deployment's pause or resume
            r.id
            for c in self.plan.pending_objects
            if self.outcomes[c.key].status == "pending"
            for r in c.object.scheduled_runs
        )
        with contextlib.ExitStack() as stack:
            if to_archive:  # opened before anything is sent: a file it cannot use stops here
                self.archive = stack.enter_context(
                    ArchiveWriter(
                        self.archive_path,
                        plan_id=self.plan.id,
                        playbook=self.plan.playbook_name,
                        server_url=self.plan.server_url,
                        planned=to_archive,
                    )
                )
                self.journal.archive(self._recorded_archive_path())
            result = await self._run(started, remaining)
            if self.archive is not None:
                self.journal.archive(self._recorded_archive_path(), runs=self.archive.runs)
                result.archive = ArchiveSummary(
                    self.archive_path, written=self.archive.written, runs=self.archive.runs
                )
        return result

    def _recorded_archive_path(self) -> str:
        """The archive's path as the journal keeps it: relative to the journal's folder when
        it is in it (the folder can move), else absolute (a resume from elsewhere finds it)."""
        folder = os.path.abspath(self.journal.path.parent)
        path = os.path.abspath(self.archive_path)
        return os.path.relpath(path, folder) if os.path.dirname(path) == folder else path

    async def _run(self, started: float, remaining: int) -> ApplyResult:
        strategies: dict[int, str] = {}
        try:
            self._bulk = bulk = await self._api.supports_bulk() if remaining else False
        except Unauthorized as exc:
            self._stop_unauthorized(exc)
            bulk = False
        except APIError as exc:  # everything stays pending for the resume
            self.stopped = f"stopped: {exc}"
            self.stop.set()
            bulk = False
        sent_before, retried_before = self.client.stats.requests, self.client.stats.retries
        for step in self.plan.steps:
            if self.stop.is_set():
                break
            if step.pending:
                strategies[step.index] = await self._step(step, bulk)
            elif step.pending_objects:
                strategies[step.index] = await self._object_step(step)
        self.journal.sync()
        if self.stop.is_set() and self.stopped is None:
            self.stopped = "interrupted"
        return ApplyResult(
            outcomes=self.outcomes,
            stopped=self.stopped,
            requests=self.client.stats.requests - sent_before,
            retries=self.client.stats.retries - retried_before,
            seconds=time.monotonic() - started,
            strategies=strategies,
            windows=tuple(self.windows),
        )
