"""runner in Prefect's event feed: what an apply did, as Prefect events.

An apply sends, through :meth:`~runner.client.PrefectClient.emit_events` (``POST
/api/events``, a list of events a request):

- ``runner.apply.started`` when it starts writing, and ``runner.apply.finished`` (every change
  finished: done or drifted, none raced) or ``runner.apply.failed`` (a change failed, raced or
  is left pending, the apply stopped, or an error ended it) at its end. Resource: the plan,
  ``runner.plan.<plan id>``, named for the playbook; related: the playbook
  (``runner.playbook.<name>``, role ``playbook``) and, inside a Prefect flow run, that flow run
  (role ``flow-run``). Payload: the plan, the playbook's name and path, the counts.
- one event per change runner made (done, or raced: made over a state the plan did not see),
  named for the step's action: :data:`CHANGE_EVENTS`. Resource: the run,
  ``prefect.flow-run.<id>``, named by its name; related: its deployment, the plan, the
  playbook, the hosting flow run, and for a recreate the new run (role ``new-flow-run``).
  Payload: the action, the outcome, the state before and after (type, name, scheduled time,
  tags), the plan id and the step. A deleted run's event is the only record Prefect keeps of
  the deletion. Drifted and failed changes send none (runner changed nothing; they are
  counted in the apply's last event, and listed in the summary and ``--report``).

What it costs and what it promises:

- **Batched, off the writes' path.** A change's event is made when the journal has recorded
  the change (:meth:`EventFeed.change_finished`, called by the executor) and only queued; a
  task beside the apply sends up to :data:`BATCH` events a request, every
  :data:`FLUSH_SECONDS` or as soon as a batch is full, and the rest when the apply ends,
  waiting at most :data:`CLOSE_SECONDS` for them.
- **Never fails the apply.** A batch the server does not take after a few quick retries ends
  the feed for the apply: said once on stderr, every event not sent is counted (the summary
  and ``--report`` say how many). A server without the events route (Prefect 2.x answers
  404 unless ``PREFECT_EXPERIMENTAL_EVENTS`` is on) is said once and skipped. At most
  :data:`MAX_QUEUED` events wait in memory; more are dropped and counted.
- **Once, as near as can be.** A resume sends nothing for changes an earlier apply
  journaled. A change's event has an id derived from the plan and the change, and the server
  keeps one event per id (Prefect 3.9.1 inserts with ``on conflict do nothing``): a change
  made again after a crash (journaled, or found made by its transition id) is not recorded
  twice. Events queued but not sent when an apply is killed are lost: at most a batch, or a
  few seconds' worth.
- **Nothing secret.** Events hold names, ids, states and tags; never a credential, never a
  run's parameters.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

import anyio

from runner.client import PrefectClient
from runner.errors import RunnerError, UnsupportedByServer
from runner.plan import Change, ObjectChange, Plan, RunView
from runner.retry import RetryPolicy
from runner.words import plural

if TYPE_CHECKING:
    from runner.executor import Outcome

#: Events sent in one request.
BATCH = 200
#: The longest a queued event waits before it is sent.
FLUSH_SECONDS = 2.0
#: The longest the end of an apply waits for the events still queued.
CLOSE_SECONDS = 10.0
#: Events held in memory while the server is slow to take them; more are dropped.
MAX_QUEUED = 10_000
#: The retries an events request gets: few and quick (an event is not worth holding an
#: apply up for).
EVENT_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.5, max_backoff=2.0, max_retry_after=5.0)

#: The event of each step action's change (a reschedule by recreate is ``recreated``).
CHANGE_EVENTS: dict[str, str] = {
    "delete": "runner.flow-run.deleted",
    "cancel": "runner.flow-run.cancelled",
    "set_state": "runner.flow-run.state-set",
    "reschedule": "runner.flow-run.rescheduled",
    "recreate": "runner.flow-run.recreated",
    "retry": "runner.flow-run.retried",
    "resume": "runner.flow-run.resumed",
    "tag": "runner.flow-run.tagged",
}
APPLY_STARTED = "runner.apply.started"
APPLY_FINISHED = "runner.apply.finished"
APPLY_FAILED = "runner.apply.failed"

_NAMESPACE = uuid.UUID("7d0c9c36-4f0e-4d52-9a7a-2b1e1f3e6a01")


#: The resource kind of each object a step may target, as Prefect names it in its own
#: events (``prefect.deployment.<id>``, ``prefect.work-pool.<id>``, ...).
OBJECT_RESOURCES = {
    "deployment": "deployment",
    "work_pool": "work-pool",
    "work_queue": "work-queue",
}


def change_event_id(plan_id: str, change_key: str) -> UUID:
    """The id of a change's event: the same change of the same plan always sends the same
    id, so the server keeps one however often it is sent."""
    return uuid.uuid5(_NAMESPACE, f"{plan_id}:{change_key}")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def event_name(plan: Plan, change: Change) -> str:
    """The event of ``change``: named for its step's action."""
    if change.op == "recreate":
        return CHANGE_EVENTS["recreate"]
    return CHANGE_EVENTS.get(plan.steps[change.step].action, f"runner.flow-run.{change.op}")


def _run_resource(run_id: UUID | str, name: str | None, role: str | None = None) -> dict[str, str]:
    resource = {"prefect.resource.id": f"prefect.flow-run.{run_id}"}
    if name:
        resource["prefect.resource.name"] = name
    if role is not None:
        resource["prefect.resource.role"] = role
    return resource


def _before(run: RunView) -> dict[str, Any]:
    return {
        "state_type": run.state_type,
        "state_name": run.state_name,
        "scheduled_time": _iso(run.scheduled_time) if run.state_type == "SCHEDULED" else None,
        "tags": list(run.tags),
    }


def _after(change: Change, new_run_id: str | None) -> dict[str, Any]:
    """What the change made of the run: as the plan said (the server's own word on the
    outcome is the payload's ``detail``)."""
    run = change.run
    if change.op == "delete":
        return {"deleted": True}
    tags = list(change.tags) if change.tags is not None else list(run.tags)
    if change.op in ("tag", "resume"):
        after: dict[str, Any] = {"tags": tags}
        if change.op == "resume":
            after["resumed"] = True
        return after
    state = change.state
    after = {
        "state_type": state.type if state else None,
        "state_name": state.name if state else None,
        "scheduled_time": _iso(state.scheduled_time) if state else None,
        "tags": tags,
    }
    if state is not None and state.message:
        after["message"] = state.message
    if change.op == "recreate":
        after["new_flow_run_id"] = new_run_id
        after["old_run_deleted"] = True
    return after


@dataclass
class EventCounts:
    """What became of an apply's events: how many the server took, how many were not sent
    (and why: the first failure)."""

    sent: int = 0
    dropped: int = 0
    error: str | None = None
    #: The server has no events route: nothing was sent, and that is said once, no failure.
    unsupported: bool = False

    def document(self) -> dict[str, Any]:
        """The ``events`` of ``--report``."""
        return {
            "sent": self.sent,
            "dropped": self.dropped,
            "error": self.error,
            "unsupported": self.unsupported,
        }

    def summary_line(self) -> str | None:
        """The summary's word on the events when some were not recorded (None otherwise,
        and for a server without events, which was said once already)."""
        if not self.dropped or self.unsupported:
            return None
        total = self.sent + self.dropped
        return (
            f"Events: {self.dropped} of {plural(total, 'event')} not recorded in Prefect's"
            f" event feed ({self.error}).\n"
        )


class EventFeed:
    """Queues an apply's events and sends them in batches from a task of its own (see the
    module's docstring). Made by :func:`event_feed`; disabled, it records nothing."""

    def __init__(
        self,
        client: PrefectClient,
        *,
        err: TextIO,
        enabled: bool = True,
        host: UUID | None = None,
        rate_limit: float | None = None,
    ) -> None:
        self.client = client.tuned(retry=EVENT_RETRY, rate_limit=rate_limit)
        self.err = err
        self.enabled = enabled
        self.host = host
        self.counts = EventCounts()
        self.plan: Plan | None = None
        self._queue: list[dict[str, Any]] = []
        self._wake = anyio.Event()
        self._in_flight = 0
        self._ended = False
        self._closed = False

    # -- what an apply records -------------------------------------------------------------

    def _plan_related(self, plan: Plan) -> list[dict[str, str]]:
        related = [
            {
                "prefect.resource.id": f"runner.plan.{plan.id}",
                "prefect.resource.role": "plan",
                "prefect.resource.name": plan.playbook_name,
            },
            {
                "prefect.resource.id": f"runner.playbook.{plan.playbook_name}",
                "prefect.resource.role": "playbook",
                "prefect.resource.name": plan.playbook_name,
                "runner.playbook.path": plan.playbook_path,
            },
        ]
        if self.host is not None:
            related.append(_run_resource(self.host, None, "flow-run"))
        return related

    def _apply_event(self, plan: Plan, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        resource, *related = self._plan_related(plan)
        del resource["prefect.resource.role"]
        resource["runner.playbook"] = plan.playbook_name
        return {
            "id": str(uuid.uuid4()),
            "occurred": _now(),
            "event": name,
            "resource": resource,
            "related": related,
            "payload": {
                "plan_id": plan.id,
                "playbook": plan.playbook_name,
                "playbook_path": plan.playbook_path,
                **payload,
            },
        }

    def apply_started(self, plan: Plan, *, changes: int, resumed: bool) -> None:
        """The apply of ``plan`` is about to write ``changes`` changes (``resumed``: what an
        earlier apply of the plan left)."""
        self.plan = plan
        payload = {"changes": changes, "resumed": resumed}
        self._queue_event(self._apply_event(plan, APPLY_STARTED, payload), urgent=True)

    def apply_ended(
        self,
        succeeded: bool,
        outcomes: Iterable[Outcome] | None,
        *,
        stopped: str | None = None,
        error: str | None = None,
    ) -> None:
        """``runner.apply.finished`` when ``succeeded``, else ``runner.apply.failed``, with
        how many changes ended in each status (when ``outcomes`` are known) and why it
        stopped or failed. Once, and only after :meth:`apply_started`."""
        if self.plan is None or self._ended:
            return
        self._ended = True
        payload: dict[str, Any] = {}
        if outcomes is not None:
            statuses = [o.status for o in outcomes]
            counts = {s: statuses.count(s) for s in ("done", "drifted", "raced", "failed")}
            counts["pending"] = statuses.count("pending") + statuses.count("created")
            payload["counts"] = counts
        if stopped is not None:
            payload["stopped"] = stopped
        if error is not None:
            payload["error"] = error
        name = APPLY_FINISHED if succeeded else APPLY_FAILED
        self._queue_event(self._apply_event(self.plan, name, payload), urgent=True)

    def change_finished(
        self,
        change: Change | ObjectChange,
        status: str,
        detail: str | None,
        new_run_id: str | None,
    ) -> None:
        """A change was journaled: its event is queued when runner made it (done or raced)."""
        plan = self.plan
        if status not in ("done", "raced") or plan is None or not self.enabled:
            return
        self._queue_event(self.change_event(plan, change, status, detail, new_run_id), urgent=False)

    def change_event(
        self,
        plan: Plan,
        change: Change | ObjectChange,
        status: str,
        detail: str | None,
        new_run_id: str | None,
    ) -> dict[str, Any]:
        """The event of a change of ``plan`` that ended ``status`` (done or raced)."""
        if isinstance(change, ObjectChange):
            return self._object_event(plan, change, status, detail)
        run = change.run
        step = plan.steps[change.step]
        related: list[dict[str, str]] = []
        if run.deployment_id is not None:
            deployment = {
                "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                "prefect.resource.role": "deployment",
            }
            if run.deployment:
                deployment["prefect.resource.name"] = run.deployment.split("/", 1)[-1]
            related.append(deployment)
        related += self._plan_related(plan)
        if change.op == "recreate" and new_run_id:
            related.append(_run_resource(new_run_id, None, "new-flow-run"))
        resource = _run_resource(run.id, run.name)
        resource["runner.flow"] = run.flow
        return {
            "id": str(change_event_id(plan.id, change.key)),
            "occurred": _now(),
            "event": event_name(plan, change),
            "resource": resource,
            "related": related,
            "payload": {
                "action": step.action,
                "op": change.op,
                "outcome": status,
                "detail": detail,
                "before": _before(run),
                "after": _after(change, new_run_id),
                "plan_id": plan.id,
                "playbook": plan.playbook_name,
                "step": {"index": step.index + 1, "name": step.name},
            },
        }

    def _object_event(
        self, plan: Plan, change: ObjectChange, status: str, detail: str | None
    ) -> dict[str, Any]:
        """``runner.deployment.paused`` and the like: a deployment, work pool or queue."""
        seen = change.object
        step = plan.steps[change.step]
        noun = OBJECT_RESOURCES[seen.kind]
        resource = {
            "prefect.resource.id": f"prefect.{noun}.{seen.id}",
            "prefect.resource.name": seen.name,
        }
        verb = "paused" if change.op == "pause" else "resumed"
        return {
            "id": str(change_event_id(plan.id, change.key)),
            "occurred": _now(),
            "event": f"runner.{noun}.{verb}",
            "resource": resource,
            "related": self._plan_related(plan),
            "payload": {
                "action": step.action,
                "op": change.op,
                "outcome": status,
                "detail": detail,
                "before": {"paused": change.before},
                "after": {"paused": change.after},
                "plan_id": plan.id,
                "playbook": plan.playbook_name,
                "step": {"index": step.index + 1, "name": step.name},
            },
        }

    # -- sending ---------------------------------------------------------------------------

    def _queue_event(self, event: dict[str, Any], *, urgent: bool) -> None:
        if not self.enabled:
            return
        if self._closed or self.counts.error is not None or len(self._queue) >= MAX_QUEUED:
            self.counts.dropped += 1
            return
        self._queue.append(event)
        if urgent or len(self._queue) >= BATCH:
            self._wake.set()

    @property
    def unsent(self) -> int:
        """Events the server has not taken yet (queued, or in a request not answered yet)."""
        return len(self._queue) + self._in_flight

    async def _send(self) -> None:
        """Send what is queued, a batch a request; a batch not taken ends the feed."""
        while self._queue and self.counts.error is None:
            batch = self._queue[:BATCH]
            del self._queue[:BATCH]
            self._in_flight = len(batch)
            try:
                await self.client.emit_events(batch)
            except Exception as exc:  # never the apply's failure: the feed ends here
                self._in_flight = 0
                self._give_up(exc, len(batch))
                return
            self._in_flight = 0
            self.counts.sent += len(batch)

    def _give_up(self, exc: Exception, lost: int) -> None:
        self.counts.dropped += lost + len(self._queue)
        self._queue.clear()
        self.counts.unsupported = isinstance(exc, UnsupportedByServer)
        self.counts.error = _describe(exc)
        if self.counts.unsupported:
            self.err.write(
                f"runner: the server takes no events ({exc}): this apply is not recorded in"
                " Prefect's event feed\n"
            )
        else:
            self.err.write(
                f"runner: Prefect's event feed did not take runner's events ({exc}): the"
                " apply goes on without them; the events not sent are counted in the summary\n"
            )
        self.err.flush()

    async def _run(self) -> None:
        """The task beside the apply: send every :data:`FLUSH_SECONDS`, or when woken."""
        while True:
            with anyio.move_on_after(FLUSH_SECONDS):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self._send()

    async def flush(self) -> EventCounts | None:
        """Send what is queued, waiting at most :data:`CLOSE_SECONDS`, and end the feed
        (later events are dropped, counted): what became of the events (None: disabled)."""
        if not self.enabled:
            return None
        if not self._closed:
            self._closed = True
            self._wake.set()
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_SECONDS):
                while self.unsent and self.counts.error is None:
                    await anyio.sleep(0.01)
            unsent = self.unsent
            if unsent and self.counts.error is None:
                self.counts.error = f"not sent within {CLOSE_SECONDS:g}s of the apply's end"
                self.err.write(
                    f"runner: {plural(unsent, 'event')} not sent to Prefect's event feed"
                    f" within {CLOSE_SECONDS:g}s of the apply's end: dropped\n"
                )
            self.counts.dropped += unsent
            self._queue.clear()
        return self.counts


@contextlib.asynccontextmanager
async def event_feed(
    client: PrefectClient,
    *,
    err: TextIO,
    enabled: bool = True,
    host: UUID | None = None,
    rate_limit: float | None = None,
) -> AsyncIterator[EventFeed]:
    """An :class:`EventFeed` whose sender runs while the block does. On the way out it sends
    what is left (bounded by :data:`CLOSE_SECONDS`), also after an error, which is recorded
    as ``runner.apply.failed`` when the apply had started writing."""
    feed = EventFeed(client, err=err, enabled=enabled, host=host, rate_limit=rate_limit)
    if not enabled:
        yield feed
        return
    error: BaseException | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(feed._run)
        try:
            yield feed
        except Exception as exc:  # raised below, out of the task group
            error = exc
            feed.apply_ended(False, None, error=_describe(exc))
        except BaseException:  # cancelled, or a second Ctrl-C: nothing more is sent
            group.cancel_scope.cancel()
            raise
        await feed.flush()
        group.cancel_scope.cancel()
    if error is not None:
        raise error


def _describe(exc: BaseException) -> str:
    """An error, for an event or a message: runner's own errors as they say (never holding a
    secret), others by their type alone."""
    return str(exc) if isinstance(exc, RunnerError) else type(exc).__name__
