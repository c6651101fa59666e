"""A plan: every run a playbook will touch, its state before and what it will be after.

Plans are plain data. They serialise to a documented, versioned JSON document
(``docs/plan-format.md``) that ``runner plan -o`` writes and ``runner apply plan.json`` reads.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TextIO
from uuid import UUID, uuid4

from runner.errors import RunnerError

PLAN_FORMAT = "runner-plan"
PLAN_VERSION = 1

Op = Literal["delete", "set_state", "recreate", "resume", "tag", "noop"]


class PlanFileError(RunnerError):
    """A saved plan cannot be used: unreadable, tampered, from another server, too old."""


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
    expected_start: datetime | None = None
    next_scheduled_start: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    tags: tuple[str, ...] = ()
    work_queue: str | None = None
    work_pool: str | None = None
    parent_task_run_id: UUID | None = None
    #: Only kept for runs a step will recreate (they carry over to the new run).
    parameters: dict[str, Any] | None = None
    #: Only kept for runs a step will recreate: a run made by an earlier, unfinished
    #: recreate carries the key of the run it replaces.
    idempotency_key: str | None = None

    @property
    def scheduled_time(self) -> datetime | None:
        """When a scheduled run will start: its next scheduled start, else its expected start."""
        return self.next_scheduled_start or self.expected_start


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

    @property
    def is_noop(self) -> bool:
        return self.op == "noop"

    @property
    def key(self) -> str:
        """Identifies the change within its plan (checkpoints refer to changes by it)."""
        return f"{self.step}:{self.run.id}"


@dataclass(frozen=True, slots=True)
class StepPlan:
    index: int
    name: str
    action: str
    selected: int
    changes: tuple[Change, ...]
    concurrency: int
    rate_limit: float | None
    max_attempts: int
    backoff_seconds: float = 0.25
    max_backoff_seconds: float = 20.0

    @property
    def pending(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if not c.is_noop)

    @property
    def noops(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.is_noop)


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
    def changes(self) -> tuple[Change, ...]:
        return tuple(c for s in self.steps for c in s.changes)

    @property
    def pending(self) -> tuple[Change, ...]:
        return tuple(c for s in self.steps for c in s.pending)

    @property
    def has_changes(self) -> bool:
        return any(s.pending for s in self.steps)

    def counts(self) -> dict[str, int]:
        """How many runs each action will change, and how many stay ``unchanged``."""
        out: dict[str, int] = {}
        for step in self.steps:
            if step.pending:
                out[step.action] = out.get(step.action, 0) + len(step.pending)
        out["unchanged"] = sum(len(s.noops) for s in self.steps)
        return out


# -- JSON ----------------------------------------------------------------------------------


def _dt(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _run_to_json(run: RunView) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(run.id),
        "name": run.name,
        "flow": run.flow,
        "deployment": run.deployment,
        "deployment_id": str(run.deployment_id) if run.deployment_id else None,
        "state_type": run.state_type,
        "state_name": run.state_name,
        "state_id": str(run.state_id) if run.state_id else None,
        "expected_start": _dt(run.expected_start),
        "next_scheduled_start": _dt(run.next_scheduled_start),
        "start": _dt(run.start),
        "end": _dt(run.end),
        "tags": list(run.tags),
        "work_queue": run.work_queue,
        "work_pool": run.work_pool,
        "parent_task_run_id": str(run.parent_task_run_id) if run.parent_task_run_id else None,
    }
    if run.parameters is not None:
        data["parameters"] = run.parameters
    if run.idempotency_key is not None:
        data["idempotency_key"] = run.idempotency_key
    return data


def _run_from_json(data: dict[str, Any]) -> RunView:
    return RunView(
        id=UUID(data["id"]),
        name=data["name"],
        flow=data["flow"],
        deployment=data.get("deployment"),
        deployment_id=UUID(data["deployment_id"]) if data.get("deployment_id") else None,
        state_type=data.get("state_type"),
        state_name=data.get("state_name"),
        state_id=UUID(data["state_id"]) if data.get("state_id") else None,
        expected_start=_parse_dt(data.get("expected_start")),
        next_scheduled_start=_parse_dt(data.get("next_scheduled_start")),
        start=_parse_dt(data.get("start")),
        end=_parse_dt(data.get("end")),
        tags=tuple(data.get("tags", ())),
        work_queue=data.get("work_queue"),
        work_pool=data.get("work_pool"),
        parent_task_run_id=(
            UUID(data["parent_task_run_id"]) if data.get("parent_task_run_id") else None
        ),
        parameters=data.get("parameters"),
        idempotency_key=data.get("idempotency_key"),
    )


def change_to_json(change: Change) -> dict[str, Any]:
    data: dict[str, Any] = {
        "key": change.key,
        "op": change.op,
        "run": _run_to_json(change.run),
    }
    if change.reason is not None:
        data["reason"] = change.reason
    if change.state is not None:
        data["state"] = {
            "type": change.state.type,
            "name": change.state.name,
            "message": change.state.message,
            "scheduled_time": _dt(change.state.scheduled_time),
            "force": change.state.force,
        }
    if change.tags is not None:
        data["tags"] = list(change.tags)
    if change.idempotency_key is not None:
        data["idempotency_key"] = change.idempotency_key
    return data


def _change_from_json(step: int, data: dict[str, Any]) -> Change:
    state = data.get("state")
    return Change(
        step=step,
        run=_run_from_json(data["run"]),
        op=data["op"],
        reason=data.get("reason"),
        state=TargetState(
            type=state["type"],
            name=state["name"],
            message=state.get("message"),
            scheduled_time=_parse_dt(state.get("scheduled_time")),
            force=bool(state.get("force", False)),
        )
        if state
        else None,
        tags=tuple(data["tags"]) if "tags" in data else None,
        idempotency_key=data.get("idempotency_key"),
    )


def _outline(plan: Plan) -> dict[str, Any]:
    """The plan document without its changes (each step's ``changes`` is empty)."""
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "id": plan.id,
        "created_at": _dt(plan.created_at),
        "playbook": {
            "name": plan.playbook_name,
            "path": plan.playbook_path,
            "digest": plan.playbook_digest,
            "variables": plan.variables,
        },
        "server": {"url": plan.server_url, "version": plan.server_version},
        "summary": plan.counts(),
        "violations": list(plan.violations),
        "notes": list(plan.notes),
        "steps": [
            {
                "index": step.index,
                "name": step.name,
                "action": step.action,
                "selected": step.selected,
                "settings": {
                    "concurrency": step.concurrency,
                    "rate_limit": step.rate_limit,
                    "max_attempts": step.max_attempts,
                    "backoff_seconds": step.backoff_seconds,
                    "max_backoff_seconds": step.max_backoff_seconds,
                },
                "changes": [],
            }
            for step in plan.steps
        ],
    }


def _body(plan: Plan) -> dict[str, Any]:
    body = _outline(plan)
    for step_doc, step in zip(body["steps"], plan.steps, strict=True):
        step_doc["changes"] = [change_to_json(c) for c in step.changes]
    return body


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _checksum(body: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


class _Checksum:
    """The checksum of a document fed piece by piece, in canonical order: the same digest as
    :func:`_checksum` of the whole body, without holding the body."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def feed(self, text: str) -> None:
        self._hash.update(text.encode("utf-8"))

    def value(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _canonical_around(items: dict[str, Any], skip: str) -> tuple[str, str]:
    """The canonical text of ``items`` before and after the value of key ``skip``."""
    before: list[str] = []
    after: list[str] = []
    into = before
    for i, key in enumerate(sorted(items)):
        head = ("," if i else "{") + _canonical(key) + ":"
        if key == skip:
            into.append(head)
            into = after
        else:
            into.append(head + _canonical(items[key]))
    after.append("}")
    return "".join(before), "".join(after)


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan document, with a checksum over everything else (tampering is detected)."""
    body = _body(plan)
    return {**body, "checksum": _checksum(body)}


def write_document(plan: Plan, out: TextIO) -> None:
    """Write the plan document to ``out``: indented, one change a line (a reviewer's diff
    shows one line per run), the checksum last.

    Each change is encoded, written and hashed in turn, so memory does not grow with the plan
    (100,000 changes held as one document took ~270 MB more). Only the outline goes through
    json's pure-Python indenting encoder; each change line is written by the C one.
    """
    outline = _outline(plan)
    marker = f"changes-{uuid4()}"
    checksum = _Checksum()
    steps_docs = outline["steps"]
    top_before, top_after = _canonical_around(outline, skip="steps")
    for step_doc in steps_docs:
        step_doc["changes"] = f"{marker}-{step_doc['index']}"
    document = {**outline, "checksum": f"{marker}-checksum"}
    text = json.dumps(document, indent=2, ensure_ascii=False)
    checksum.feed(top_before + "[")
    for number, (step_doc, step) in enumerate(zip(steps_docs, plan.steps, strict=True)):
        key = f'"{step_doc["changes"]}"'
        head, text = text.split(key, 1)
        out.write(head)
        before, after = _canonical_around(step_doc, skip="changes")
        checksum.feed(("," if number else "") + before + "[")
        if step.changes:
            out.write("[\n")
            for i, change in enumerate(step.changes):
                data = change_to_json(change)
                checksum.feed(("," if i else "") + _canonical(data))
                out.write(
                    ("" if i == 0 else ",\n")
                    + "        "
                    + json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
                )
            out.write("\n      ]")
        else:
            out.write("[]")
        checksum.feed("]" + after)
    checksum.feed("]" + top_after)
    head, tail = text.split(f'"{marker}-checksum"', 1)
    out.write(head + json.dumps(checksum.value()) + tail + "\n")


def dumps(plan: Plan) -> str:
    """The plan document as :func:`write_document` writes it."""
    buffer = io.StringIO()
    write_document(plan, buffer)
    return buffer.getvalue()


def plan_from_json(data: Any, *, source: str = "plan") -> Plan:
    """Read a plan document; :class:`PlanFileError` when it is not one this runner can apply."""
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise PlanFileError(f'{source}: not a runner plan (no "format": "{PLAN_FORMAT}")')
    version = data.get("version")
    if version != PLAN_VERSION:
        raise PlanFileError(
            f"{source}: plan format version {version!r}; this runner reads version {PLAN_VERSION}"
        )
    checksum = data.get("checksum")
    body = {k: v for k, v in data.items() if k != "checksum"}
    if checksum != _checksum(body):
        raise PlanFileError(f"{source}: checksum mismatch: the plan was changed after it was made")
    try:
        steps = tuple(
            StepPlan(
                index=s["index"],
                name=s["name"],
                action=s["action"],
                selected=s["selected"],
                changes=tuple(_change_from_json(s["index"], c) for c in s["changes"]),
                concurrency=s["settings"]["concurrency"],
                rate_limit=s["settings"]["rate_limit"],
                max_attempts=s["settings"]["max_attempts"],
                backoff_seconds=s["settings"].get("backoff_seconds", 0.25),
                max_backoff_seconds=s["settings"].get("max_backoff_seconds", 20.0),
            )
            for s in data["steps"]
        )
        created = _parse_dt(data["created_at"])
        assert created is not None
        return Plan(
            id=data["id"],
            created_at=created,
            playbook_name=data["playbook"]["name"],
            playbook_path=data["playbook"]["path"],
            playbook_digest=data["playbook"]["digest"],
            variables=data["playbook"]["variables"],
            server_url=data["server"]["url"],
            server_version=data["server"]["version"],
            steps=steps,
            violations=tuple(data.get("violations", ())),
            notes=tuple(data.get("notes", ())),
        )
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise PlanFileError(f"{source}: malformed plan ({type(exc).__name__}: {exc})") from None


def read_plan(path: str | Path) -> Plan:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    return plan_from_json(data, source=str(path))


def write_plan(plan: Plan, path: str | Path) -> None:
    """Write atomically: a temp file in the same folder, then ``os.replace``."""
    import os
    import tempfile

    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write_document(plan, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_applicable(
    plan: Plan, *, server_url: str, now: datetime, max_age_seconds: float | None
) -> None:
    """Refuse a plan made against another server, or older than ``max_age_seconds``."""
    if plan.server_url.rstrip("/") != server_url.rstrip("/"):
        raise PlanFileError(
            f"the plan was made against {plan.server_url}, not {server_url}: make a new plan"
            " against this server"
        )
    if max_age_seconds is not None:
        age = (now - plan.created_at).total_seconds()
        if age > max_age_seconds:
            raise PlanFileError(
                f"the plan is {age / 60:.0f} minutes old (the limit is"
                f" {max_age_seconds / 60:.0f}): make a new plan, or pass --max-plan-age to allow it"
            )
    if plan.violations:
        raise PlanFileError("the plan breaks its guards: " + "; ".join(plan.violations))
