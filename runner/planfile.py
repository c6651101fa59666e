"""The plan document (``docs/plan-format.md``): written by ``runner plan -o``, read by
``runner apply plan.json``. Versioned, checksummed, one change a line; every field is
checked when it is read, and a plan made elsewhere, too long ago or breaking its guards is
refused by :func:`check_applicable`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeVar, get_args
from uuid import UUID, uuid4

from runner.collector import collection_paused
from runner.errors import PlanFileError
from runner.plan import (
    CARRIED,
    UNDO_ACTION,
    UNDO_OPS,
    ArchiveSpec,
    Carried,
    Change,
    ObjectChange,
    ObjectView,
    Op,
    Plan,
    RunView,
    ScheduledRun,
    ScheduleView,
    StepPlan,
    TargetState,
)
from runner.playbook import ACTION_TYPES
from runner.states import StateType
from runner.targets import NOUNS, TARGET_KINDS
from runner.timeexpr import MAX_DURATION
from runner.words import plural

T = TypeVar("T")

PLAN_FORMAT = "runner-plan"
PLAN_VERSION = 1

#: The largest plan file read (checked before reading): room for a million changes of about
#: 1 KB each (a change's line is typically 0.5 to 1 KB; runs to recreate carry parameters).
MAX_PLAN_BYTES = 1024**3
#: A plan id names the plan's folder under the state dir: no separators, no dots. runner makes
#: 12 lowercase hex digits.
PLAN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        "state_since": _dt(run.state_since),
        "expected_start": _dt(run.expected_start),
        "next_scheduled_start": _dt(run.next_scheduled_start),
        "start": _dt(run.start),
        "end": _dt(run.end),
        "created": _dt(run.created),
        "tags": list(run.tags),
        "work_queue": run.work_queue,
        "work_pool": run.work_pool,
        "parent_task_run_id": str(run.parent_task_run_id) if run.parent_task_run_id else None,
    }
    if run.state_scheduled_time is not None:
        data["state_scheduled_time"] = _dt(run.state_scheduled_time)
    if run.parameters is not None:
        data["parameters"] = run.parameters
    if run.job_variables is not None:
        data["job_variables"] = run.job_variables
    if run.idempotency_key is not None:
        data["idempotency_key"] = run.idempotency_key
    return data


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
    if change.carry is not None:
        data["carry"] = list(change.carry)
    return data


def _object_to_json(view: ObjectView) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": view.kind,
        "id": str(view.id),
        "name": view.name,
        "paused": view.paused,
        "updated": _dt(view.updated),
    }
    if view.kind == "deployment":
        data["flow"] = view.flow
        data["tags"] = list(view.tags)
        data["work_queue"] = view.work_queue
        data["schedules"] = [
            {
                "id": str(s.id),
                "active": s.active,
                "schedule": s.schedule,
                "timezone": s.timezone,
                "content": s.content,
            }
            for s in view.schedules
        ]
        data["scheduled_runs"] = [
            {
                "id": str(r.id),
                "name": r.name,
                "state_name": r.state_name,
                "scheduled": _dt(r.scheduled),
            }
            for r in view.scheduled_runs
        ]
    if view.kind in ("deployment", "work_queue"):
        data["work_pool"] = view.work_pool
    if view.kind == "work_pool":
        data["type"] = view.type
    return data


def object_change_to_json(change: ObjectChange) -> dict[str, Any]:
    """An object's change: ``before`` and ``after`` are its paused flag as the plan saw it and
    as the change leaves it (what an undo inverts)."""
    data: dict[str, Any] = {
        "key": change.key,
        "op": change.op,
        "object": _object_to_json(change.object),
        "before": {"paused": change.before},
        "after": {"paused": change.after},
    }
    if change.reason is not None:
        data["reason"] = change.reason
    return data


def _change_docs(step: StepPlan) -> list[dict[str, Any]] | Any:
    if step.target != "flow_runs":
        return (object_change_to_json(c) for c in step.objects)
    return (change_to_json(c) for c in step.changes)


def _step_outline(step: StepPlan) -> dict[str, Any]:
    data: dict[str, Any] = {
        "index": step.index,
        "name": step.name,
        "action": step.action,
        "selected": step.selected,
        "show_tags": step.show_tags,
        "allow_past": step.allow_past,
    }
    if step.target != "flow_runs":  # absent: flow runs (and so in every older plan)
        data["target"] = step.target
    if step.action == "delete":
        data["archive"] = {"logs": step.archive.logs} if step.archive is not None else None
    data["settings"] = {
        "concurrency": step.concurrency,
        "rate_limit": step.rate_limit,
        "max_attempts": step.max_attempts,
        "backoff_seconds": step.backoff_seconds,
        "max_backoff_seconds": step.max_backoff_seconds,
    }
    data["changes"] = []
    return data


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
        "steps": [_step_outline(step) for step in plan.steps],
    }


def _body(plan: Plan) -> dict[str, Any]:
    body = _outline(plan)
    for step_doc, step in zip(body["steps"], plan.steps, strict=True):
        step_doc["changes"] = list(_change_docs(step))
    return body


#: The encoders of a plan document, made once (``json.dumps`` with options makes one a call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_LINE = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False)
#: Change lines written (and hashed) together: one write per change line cost a tenth of
#: writing a 30,000-change plan to a pipe.
_LINES_A_WRITE = 500


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


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


def write_document(plan: Plan, out: TextIO) -> str:
    """Write the plan document to ``out``: indented, one change a line (a reviewer's diff
    shows one line per run), the checksum last.

    Each change is encoded, written and hashed in turn, so memory does not grow with the plan
    (100,000 changes held as one document took ~270 MB more). Only the outline goes through
    json's pure-Python indenting encoder; each change line is written by the C one.
    """
    with collection_paused():
        return _write_document(plan, out)


def _write_document(plan: Plan, out: TextIO) -> str:
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
        if step.changes or step.objects:
            out.write("[\n")
            lines: list[str] = []
            hashed: list[str] = []
            for i, data in enumerate(_change_docs(step)):
                hashed.append(_canonical(data))
                lines.append(_LINE.encode(data))
                if len(lines) == _LINES_A_WRITE:
                    checksum.feed(("," if i >= len(lines) else "") + ",".join(hashed))
                    out.write(("" if i < len(lines) else ",\n") + _joined(lines))
                    lines.clear()
                    hashed.clear()
            if lines:
                first = i < len(lines)
                checksum.feed(("" if first else ",") + ",".join(hashed))
                out.write(("" if first else ",\n") + _joined(lines))
            out.write("\n      ]")
        else:
            out.write("[]")
        checksum.feed("]" + after)
    checksum.feed("]" + top_after)
    head, tail = text.split(f'"{marker}-checksum"', 1)
    out.write(head + json.dumps(checksum.value()) + tail + "\n")
    return checksum.value()


def _joined(lines: list[str]) -> str:
    """Change lines as the document holds them: indented, a comma and a newline between."""
    return "        " + ",\n        ".join(lines)


def dumps(plan: Plan) -> str:
    """The plan document as :func:`write_document` writes it."""
    buffer = io.StringIO()
    write_document(plan, buffer)
    return buffer.getvalue()


def check_plan_id(plan_id: str, *, source: str = "plan") -> None:
    """Refuse a plan id that could name a folder outside the state dir (``../x``, ``/tmp/x``)."""
    if not PLAN_ID.fullmatch(plan_id):
        raise PlanFileError(
            f"{source}: id: {_got(plan_id)} is not a plan id (1 to 64 letters, digits, _ or -)"
        )


def plan_from_json(data: Any, *, source: str = "plan", consume: bool = False) -> Plan:
    """Read a plan document; :class:`PlanFileError` when it is not one this runner can apply.

    Every field is checked, naming its JSON path: a document whose checksum was recomputed
    after an edit is still refused when a value is out of range or of the wrong kind.
    ``consume``: ``data`` was parsed for this read only; each change's JSON is dropped from
    it once converted.
    """
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise PlanFileError(f'{source}: not a runner plan (no "format": "{PLAN_FORMAT}")')
    version = data.get("version")
    if version != PLAN_VERSION:
        raise PlanFileError(
            f"{source}: plan format version {_got(version)}; this runner reads version"
            f" {PLAN_VERSION}"
        )
    checksum = data.get("checksum")
    body = {k: v for k, v in data.items() if k != "checksum"}
    try:
        expected = _checksum(body)
    except RecursionError:
        raise PlanFileError(f"{source}: not a runner plan: nested too deeply") from None
    except UnicodeEncodeError:
        raise PlanFileError(
            f"{source}: not a runner plan: a string holds an unpaired surrogate (such as \\ud800)"
        ) from None
    if checksum != expected:
        raise PlanFileError(f"{source}: checksum mismatch: the plan was changed after it was made")
    return _Reader(source, consume=consume).plan(data)


def _got(value: Any) -> str:
    """A value as an error shows it: JSON, cut short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    try:
        text = json.dumps(value)
    except ValueError:  # a whole number too long to print
        return "a number too long to show"
    return text if len(text) <= 60 else text[:57] + "..."


_OPS: frozenset[str] = frozenset(get_args(Op))
_STATE_TYPES = frozenset(t.value for t in StateType)
#: A playbook's actions, and ``undo``: the steps of a plan ``runner undo`` made.
_ACTIONS = frozenset(ACTION_TYPES) | {UNDO_ACTION}
_TARGETS = frozenset({"flow_runs", *TARGET_KINDS})
_OBJECT_KINDS = frozenset(TARGET_KINDS.values())
#: What each action's changes may be: their ops, and the state types they may propose
#: (empty: any). A plan edited to make a tag step delete a run is refused.
_ACTION_OPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "delete": (frozenset({"delete", "noop"}), frozenset()),
    "cancel": (frozenset({"set_state", "noop"}), frozenset({"CANCELLED", "CANCELLING"})),
    "set_state": (frozenset({"set_state", "noop"}), frozenset()),
    "reschedule": (frozenset({"set_state", "recreate", "noop"}), frozenset({"SCHEDULED"})),
    "retry": (frozenset({"set_state", "noop"}), frozenset({"SCHEDULED"})),
    "resume": (frozenset({"resume", "noop"}), frozenset()),
    "tag": (frozenset({"tag", "noop"}), frozenset()),
    UNDO_ACTION: (frozenset(UNDO_OPS), frozenset()),
}
#: The actions whose steps may force a state.
_FORCING = frozenset({"set_state", UNDO_ACTION})
_MAX_BACKOFF = MAX_DURATION.total_seconds()
_Path = tuple[str | int, ...]


class _Reader:
    """Checks and converts a plan document, field by field; the first problem is raised as a
    :class:`PlanFileError` naming its JSON path (``steps[0].settings.max_attempts``).

    Each checker takes the object, the key and the object's path, and builds the field's path
    only to report a problem: a plan can hold a million changes.
    """

    def __init__(self, source: str, *, consume: bool = False) -> None:
        self.source = source
        #: Each change's JSON is dropped from the document once converted (the caller's
        #: document, parsed for this read only): the document and the plan are not both held
        #: whole (a 100,000-run plan: ~200 MB of JSON objects).
        self.consume = consume
        #: One object for each value many runs share (flow, deployment, state, queue, pool,
        #: tags): json gives every occurrence a string of its own.
        self.shared: dict[Any, Any] = {}
        self.keys: set[str] = set()
        #: The step each run or object is in: the planner puts each in one step (an earlier
        #: step claims it), so a plan with one in two steps was edited.
        self.steps_of: dict[UUID, int] = {}

    def one_step(self, item: UUID, step: int, path: _Path, what: str) -> None:
        first = self.steps_of.setdefault(item, step)
        if first != step:
            self.fail(
                path,
                f"{what} is also in step {first + 1}: a plan holds each run or object in one"
                " step (an earlier step claims it)",
            )

    def fail(self, path: _Path, message: str) -> NoReturn:
        where = ""
        for part in path:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else part)
        raise PlanFileError(f"{self.source}: {where}: {message}")

    # -- values: data[key], at path + (key,) ----------------------------------------------

    def get(self, data: dict[str, Any], key: str, path: _Path) -> Any:
        try:
            return data[key]
        except KeyError:
            self.fail((*path, key), "missing")

    def as_obj(self, value: Any, path: _Path) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected an object, got {_got(value)}")
        return value

    def obj(self, data: dict[str, Any], key: str, path: _Path) -> dict[str, Any]:
        return self.as_obj(self.get(data, key, path), (*path, key))

    def array(self, data: dict[str, Any], key: str, path: _Path) -> list[Any]:
        value = self.get(data, key, path)
        if not isinstance(value, list):
            self.fail((*path, key), f"expected a list, got {_got(value)}")
        return value

    def text(self, data: dict[str, Any], key: str, path: _Path) -> str:
        value = self.get(data, key, path)
        if not isinstance(value, str):
            self.fail((*path, key), f"expected a string, got {_got(value)}")
        return value

    def optional_text(self, data: dict[str, Any], key: str, path: _Path) -> str | None:
        return None if data.get(key) is None else self.text(data, key, path)

    def common(self, value: T) -> T:
        """``value``, as the one object of its value this plan holds (see ``shared``)."""
        return self.shared.setdefault(value, value)  # type: ignore[no-any-return]

    def texts(self, data: dict[str, Any], key: str, path: _Path) -> tuple[str, ...]:
        value = self.get(data, key, path)
        if not isinstance(value, list):
            self.fail((*path, key), f"expected a list, got {_got(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.fail((*path, key, index), f"expected a string, got {_got(item)}")
        return tuple(value)

    def choice(self, data: dict[str, Any], key: str, path: _Path, options: frozenset[str]) -> str:
        value = self.get(data, key, path)
        if not isinstance(value, str) or value not in options:
            self.fail(
                (*path, key), f"expected one of {', '.join(sorted(options))}; got {_got(value)}"
            )
        return value

    def integer(
        self, data: dict[str, Any], key: str, path: _Path, low: int, high: int | None = None
    ) -> int:
        value = self.get(data, key, path)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            span = f"from {low} to {high}" if high is not None else f"of at least {low}"
            self.fail((*path, key), f"expected a whole number {span}, got {_got(value)}")
        return value

    def number(
        self,
        data: dict[str, Any],
        key: str,
        path: _Path,
        *,
        low: float,
        high: float,
        above: bool = False,
        default: float | None = None,
    ) -> float:
        value = data.get(key, default) if default is not None else self.get(data, key, path)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < low
            or (above and value == low)
            or value > high
        ):
            span = f"more than {low:g}" if above else f"from {low:g} to {high:,.0f}"
            self.fail((*path, key), f"expected a number {span}, got {_got(value)}")
        return float(value)

    def boolean(self, data: dict[str, Any], key: str, path: _Path) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            self.fail((*path, key), f"expected true or false, got {_got(value)}")
        return value

    def uuid(self, data: dict[str, Any], key: str, path: _Path) -> UUID:
        value = self.get(data, key, path)
        if isinstance(value, str):
            try:
                return UUID(value)
            except ValueError:
                pass
        self.fail((*path, key), f"expected a UUID, got {_got(value)}")

    def optional_uuid(self, data: dict[str, Any], key: str, path: _Path) -> UUID | None:
        return None if data.get(key) is None else self.uuid(data, key, path)

    def when(self, data: dict[str, Any], key: str, path: _Path) -> datetime:
        value = self.get(data, key, path)
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is not None:
                parsed.astimezone(timezone.utc)  # out of range in UTC: OverflowError
                return parsed
        except (AttributeError, ValueError, OverflowError):
            pass
        self.fail(
            (*path, key),
            f"expected an ISO 8601 date-time with a timezone, got {_got(value)}",
        )

    def optional_when(self, data: dict[str, Any], key: str, path: _Path) -> datetime | None:
        value = data.get(key)
        if value is None:
            return None
        if type(value) is str:  # the common case, without the checks' calls (a million)
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None and 1 < parsed.year < 9999:
                return parsed  # years 1 and 9999 can overflow in UTC: checked by when()
        return self.when(data, key, path)

    # -- the document ----------------------------------------------------------------------

    def plan(
        self, data: dict[str, Any], given: dict[int, tuple[Change, ...]] | None = None
    ) -> Plan:
        """The plan; ``given``: steps whose changes were converted already (by
        :func:`_read_streamed`, with this reader), by step index."""
        plan_id = self.text(data, "id", ())
        check_plan_id(plan_id, source=self.source)
        playbook = self.obj(data, "playbook", ())
        variables = self.obj(playbook, "variables", ("playbook",))
        for name, value in variables.items():
            if not isinstance(value, (str, int, float)) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                self.fail(
                    ("playbook", "variables", name),
                    f"expected a string, number or true/false, got {_got(value)}",
                )
        server = self.obj(data, "server", ())
        summary = self.as_obj(data.get("summary", {}), ("summary",))
        for name in summary:
            self.integer(summary, name, ("summary",), 0)
        steps = self.array(data, "steps", ())
        plan = Plan(
            id=plan_id,
            created_at=self.when(data, "created_at", ()),
            playbook_name=self.text(playbook, "name", ("playbook",)),
            playbook_path=self.text(playbook, "path", ("playbook",)),
            playbook_digest=self.text(playbook, "digest", ("playbook",)),
            variables=variables,
            server_url=self.text(server, "url", ("server",)),
            server_version=self.optional_text(server, "version", ("server",)),
            steps=tuple(
                self.step(index, step, (given or {}).get(index)) for index, step in enumerate(steps)
            ),
            violations=self.texts(data, "violations", ()) if "violations" in data else (),
            notes=self.texts(data, "notes", ()) if "notes" in data else (),
        )
        if "summary" in data and summary != plan.counts():
            counted = json.dumps(plan.counts(), sort_keys=True)
            self.fail(
                ("summary",),
                f"{json.dumps(summary, sort_keys=True)} does not count the plan's changes"
                f" ({counted})",
            )
        return plan

    def step(self, index: int, value: Any, given: tuple[Change, ...] | None = None) -> StepPlan:
        path: _Path = ("steps", index)
        data = self.as_obj(value, path)
        position = self.get(data, "index", path)
        if position != index or isinstance(position, bool):
            self.fail(
                (*path, "index"), f"expected {index} (the step's place), got {_got(position)}"
            )
        settings = self.obj(data, "settings", path)
        at: _Path = (*path, "settings")
        target = self.choice(data, "target", path, _TARGETS) if "target" in data else "flow_runs"
        if target != "flow_runs":
            return self.object_step(index, target, data, settings)
        action = self.choice(data, "action", path, _ACTIONS)
        selected = self.integer(data, "selected", path, 0)
        docs = self.array(data, "changes", path)
        if given is not None:
            changes = given
        else:
            converted: list[Change] = []
            for i, c in enumerate(docs):
                converted.append(self.change(index, (*path, "changes", i), c))
                if self.consume:
                    docs[i] = None
            changes = tuple(converted)
            del converted
        if selected != len(changes):
            self.fail(
                (*path, "selected"),
                f"{plural(selected, 'run')} selected, but the step has"
                f" {plural(len(changes), 'change')}"
                " (one a selected run)",
            )
        for i, change in enumerate(changes):
            self.fits_action(action, change, (*path, "changes", i))
        return StepPlan(
            index=index,
            name=self.text(data, "name", path),
            action=action,
            selected=selected,
            changes=changes,
            show_tags=self.boolean(data, "show_tags", path),
            allow_past=self.boolean(data, "allow_past", path),
            archive=self.archive(action, data, path),
            concurrency=self.integer(settings, "concurrency", at, 1, 256),
            rate_limit=None
            if settings.get("rate_limit") is None
            else self.number(settings, "rate_limit", at, low=0, high=math.inf, above=True),
            max_attempts=self.integer(settings, "max_attempts", at, 1, 100),
            backoff_seconds=self.number(
                settings, "backoff_seconds", at, low=0, high=_MAX_BACKOFF, default=0.25
            ),
            max_backoff_seconds=self.number(
                settings, "max_backoff_seconds", at, low=0, high=_MAX_BACKOFF, default=20.0
            ),
        )

    def settings(self, settings: dict[str, Any], at: _Path) -> dict[str, Any]:
        return {
            "concurrency": self.integer(settings, "concurrency", at, 1, 256),
            "rate_limit": None
            if settings.get("rate_limit") is None
            else self.number(settings, "rate_limit", at, low=0, high=math.inf, above=True),
            "max_attempts": self.integer(settings, "max_attempts", at, 1, 100),
            "backoff_seconds": self.number(
                settings, "backoff_seconds", at, low=0, high=_MAX_BACKOFF, default=0.25
            ),
            "max_backoff_seconds": self.number(
                settings, "max_backoff_seconds", at, low=0, high=_MAX_BACKOFF, default=20.0
            ),
        }

    def object_step(
        self, index: int, target: str, data: dict[str, Any], settings: dict[str, Any]
    ) -> StepPlan:
        """A step on deployments, work pools or work queues: pause or resume, one change an
        object of the step's kind."""
        path: _Path = ("steps", index)
        action = self.choice(data, "action", path, frozenset({"pause", "resume"}))
        selected = self.integer(data, "selected", path, 0)
        objects = tuple(
            self.object_change(index, TARGET_KINDS[target], action, (*path, "changes", i), c)
            for i, c in enumerate(self.array(data, "changes", path))
        )
        if selected != len(objects):
            self.fail(
                (*path, "selected"),
                f"{selected} selected, but the step has {plural(len(objects), 'change')}",
            )
        return StepPlan(
            index=index,
            name=self.text(data, "name", path),
            action=action,
            selected=selected,
            changes=(),
            target=target,
            objects=objects,
            **self.settings(settings, (*path, "settings")),
        )

    def object_change(
        self, step: int, kind: str, action: str, path: _Path, value: Any
    ) -> ObjectChange:
        data = self.as_obj(value, path)
        at: _Path = (*path, "object")
        raw = self.as_obj(self.get(data, "object", path), at)
        if self.choice(raw, "kind", at, _OBJECT_KINDS) != kind:
            self.fail((*at, "kind"), f"expected {_got(kind)}, got {_got(raw['kind'])}")
        schedules = []
        for i, item in enumerate(raw.get("schedules") or ()):
            spath: _Path = (*at, "schedules", i)
            entry = self.as_obj(item, spath)
            schedules.append(
                ScheduleView(
                    id=self.uuid(entry, "id", spath),
                    active=self.boolean(entry, "active", spath),
                    schedule=self.text(entry, "schedule", spath),
                    timezone=self.optional_text(entry, "timezone", spath),
                    content=self.text(entry, "content", spath),
                )
            )
        scheduled_runs = []
        for i, item in enumerate(raw.get("scheduled_runs") or ()):
            rpath: _Path = (*at, "scheduled_runs", i)
            entry = self.as_obj(item, rpath)
            scheduled_runs.append(
                ScheduledRun(
                    id=self.uuid(entry, "id", rpath),
                    name=self.text(entry, "name", rpath),
                    state_name=self.text(entry, "state_name", rpath),
                    scheduled=self.optional_when(entry, "scheduled", rpath),
                )
            )
        view = ObjectView(
            kind=kind,  # type: ignore[arg-type]  # checked against the kinds
            id=self.uuid(raw, "id", at),
            name=self.text(raw, "name", at),
            paused=self.boolean(raw, "paused", at),
            updated=self.optional_when(raw, "updated", at),
            flow=self.optional_text(raw, "flow", at),
            tags=self.texts(raw, "tags", at) if raw.get("tags") is not None else (),
            work_pool=self.optional_text(raw, "work_pool", at),
            work_queue=self.optional_text(raw, "work_queue", at),
            type=self.optional_text(raw, "type", at),
            schedules=tuple(schedules),
            scheduled_runs=tuple(scheduled_runs),
        )
        op = self.choice(data, "op", path, frozenset({action, "noop"}))
        change = ObjectChange(
            step=step,
            object=view,
            op=op,  # type: ignore[arg-type]  # checked against the step's action
            reason=self.optional_text(data, "reason", path),
        )
        if self.get(data, "key", path) != change.key:
            self.fail((*path, "key"), f"expected {_got(change.key)}, got {_got(data['key'])}")
        if change.key in self.keys:
            self.fail((*at, "id"), f"{view.name} has two changes in this step")
        self.keys.add(change.key)
        self.one_step(view.id, step, (*at, "id"), f"{NOUNS[view.kind]} {view.name}")
        for side, expected in (("before", change.before), ("after", change.after)):
            flags = self.obj(data, side, path)
            if self.boolean(flags, "paused", (*path, side)) != expected:
                self.fail(
                    (*path, side, "paused"),
                    f"expected {_got(expected)} (a {op} of an object the plan saw"
                    f" {'paused' if view.paused else 'not paused'}), got {_got(flags['paused'])}",
                )
        if op != "noop" and view.paused == (op == "pause"):
            state = "paused" if view.paused else "not paused"
            self.fail((*path, "op"), f"a {op} of an object the plan saw {state}")
        return change

    def archive(self, action: str, data: dict[str, Any], path: _Path) -> ArchiveSpec | None:
        """A delete step's archive: ``null`` (none) or ``{"logs": bool}``. A plan made before
        runner archived has no ``archive``: its deletes archive, as that playbook's would
        now (the runs and their state history)."""
        if "archive" not in data:
            return ArchiveSpec() if action == "delete" else None
        value = data["archive"]
        if value is None:
            return None
        at: _Path = (*path, "archive")
        if action != "delete":
            self.fail(at, f"a {action} step archives nothing; expected null, got {_got(value)}")
        spec = self.as_obj(value, at)
        unknown = sorted(set(spec) - {"logs"})
        if unknown:
            self.fail((*at, unknown[0]), "unknown key (an archive takes only logs)")
        return ArchiveSpec(logs=self.boolean(spec, "logs", at))

    def fits_action(self, action: str, change: Change, path: _Path) -> None:
        """A change is one its step's action makes: a ``tag`` step never deletes."""
        ops, types = _ACTION_OPS[action]
        if change.op not in ops:
            self.fail(
                (*path, "op"),
                f"a {action} step makes {', '.join(sorted(ops))} changes, not {change.op}",
            )
        if change.state is not None and change.state.force and action not in _FORCING:
            self.fail((*path, "state", "force"), f"a {action} step never forces a state")
        if change.state is not None and types and change.state.type not in types:
            self.fail(
                (*path, "state", "type"),
                f"a {action} step proposes {' or '.join(sorted(types))}, not {change.state.type}",
            )

    def change(self, step: int, path: _Path, value: Any) -> Change:
        data = self.as_obj(value, path)
        run = self.run(self.as_obj(self.get(data, "run", path), (*path, "run")), (*path, "run"))
        op = self.common(self.choice(data, "op", path, _OPS))
        key = f"{step}:{run.id}"
        if self.get(data, "key", path) != key:
            self.fail((*path, "key"), f"expected {_got(key)}, got {_got(data['key'])}")
        if key in self.keys:
            self.fail((*path, "run", "id"), f"run {run.id} has two changes in this step")
        self.keys.add(key)
        self.one_step(run.id, step, (*path, "run", "id"), f"run {run.id}")
        raw_state = data.get("state")
        state = None if raw_state is None else self.state(raw_state, (*path, "state"))
        if op in ("set_state", "recreate") and state is None:
            self.fail((*path, "state"), f"missing: a {op} change needs the state it proposes")
        if op == "recreate" and run.deployment_id is None:
            self.fail(
                (*path, "run", "deployment_id"),
                "missing: a recreate change needs the deployment to create the new run from",
            )
        carry = None if data.get("carry") is None else self.carry(data, op, run, path)
        return Change(
            step=step,
            run=run,
            op=op,  # type: ignore[arg-type]  # checked against Op's values
            reason=self.common(self.optional_text(data, "reason", path)),
            state=state,
            tags=None if data.get("tags") is None else self.common(self.texts(data, "tags", path)),
            idempotency_key=self.optional_text(data, "idempotency_key", path),
            carry=carry,
        )

    def carry(
        self, data: dict[str, Any], op: str, run: RunView, path: _Path
    ) -> tuple[Carried, ...]:
        """What a recreate's new run takes from the old one: known names, each once, and
        each one the plan kept a value of."""
        if op != "recreate":
            self.fail((*path, "carry"), f"only a recreate change carries anything, not {op}")
        names = self.texts(data, "carry", path)
        for index, name in enumerate(names):
            if name not in CARRIED:
                self.fail(
                    (*path, "carry", index),
                    f"expected one of {', '.join(sorted(CARRIED))}; got {_got(name)}",
                )
            if name in names[:index]:
                self.fail((*path, "carry", index), f"{_got(name)} is listed twice")
            if name in ("job_variables", "work_queue", "parameters") and (
                getattr(run, name) is None
            ):
                self.fail((*path, "carry", index), f"the run has no {name} to carry")
        return names  # type: ignore[return-value]  # checked against CARRIED

    def state(self, value: Any, path: _Path) -> TargetState:
        data = self.as_obj(value, path)
        return TargetState(
            type=self.choice(data, "type", path, _STATE_TYPES),
            name=self.text(data, "name", path),
            message=self.optional_text(data, "message", path),
            scheduled_time=self.optional_when(data, "scheduled_time", path),
            force=self.boolean(data, "force", path),
        )

    def run(self, data: dict[str, Any], path: _Path) -> RunView:
        parameters = data.get("parameters")
        job_variables = data.get("job_variables")
        common = self.common
        return RunView(
            id=self.uuid(data, "id", path),
            name=self.text(data, "name", path),
            flow=common(self.text(data, "flow", path)),
            deployment=common(self.optional_text(data, "deployment", path)),
            deployment_id=common(self.optional_uuid(data, "deployment_id", path)),
            state_type=None
            if data.get("state_type") is None
            else common(self.choice(data, "state_type", path, _STATE_TYPES)),
            state_name=common(self.optional_text(data, "state_name", path)),
            state_id=self.optional_uuid(data, "state_id", path),
            state_since=self.optional_when(data, "state_since", path),
            expected_start=self.optional_when(data, "expected_start", path),
            next_scheduled_start=self.optional_when(data, "next_scheduled_start", path),
            start=self.optional_when(data, "start", path),
            end=self.optional_when(data, "end", path),
            created=self.optional_when(data, "created", path),
            tags=common(self.texts(data, "tags", path)) if "tags" in data else (),
            work_queue=common(self.optional_text(data, "work_queue", path)),
            work_pool=common(self.optional_text(data, "work_pool", path)),
            parent_task_run_id=self.optional_uuid(data, "parent_task_run_id", path),
            parameters=None
            if parameters is None
            else self.as_obj(parameters, (*path, "parameters")),
            state_scheduled_time=self.optional_when(data, "state_scheduled_time", path),
            job_variables=None
            if job_variables is None
            else self.as_obj(job_variables, (*path, "job_variables")),
            idempotency_key=self.optional_text(data, "idempotency_key", path),
        )


def read_plan(path: str | Path) -> Plan:
    """Read and check a saved plan; files over ``MAX_PLAN_BYTES`` are refused unread."""
    return read_plan_checked(path)[0]


def read_plan_checked(path: str | Path) -> tuple[Plan, str]:
    """:func:`read_plan`, with the checksum the document was verified against (what a
    checkpoint of the plan names).

    A plan in the layout runner writes is read a change at a time (:func:`_read_streamed`);
    any other valid document (reformatted, say), and any document with a problem, is read
    whole, and the problem reported from that read."""
    with collection_paused():
        streamed = _read_streamed(path)
    if streamed is not None:
        return streamed
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_PLAN_BYTES:
                raise PlanFileError(_too_large(path, size))
            raw = handle.read(MAX_PLAN_BYTES + 1)  # never more (a pipe has no size)
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanFileError(_too_large(path, None))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanFileError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start:,})"
        ) from None
    del raw
    try:
        data = json.loads(text)
        del text
    except json.JSONDecodeError as exc:
        raise PlanFileError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise PlanFileError(f"{path}: not a runner plan: nested too deeply") from None
    except ValueError:  # Python reads whole numbers of at most 4,300 digits
        raise PlanFileError(f"{path}: not a runner plan: a whole number too long to read") from None
    checksum = str(data.get("checksum")) if isinstance(data, dict) else ""
    return plan_from_json(data, source=str(path), consume=True), checksum


#: How :func:`write_document` lays out a step's changes: this line, one change a line (at
#: ``_CHANGE_INDENT``, a comma after each but the last), then ``_CHANGES_END``.
_CHANGES_START = '      "changes": [\n'
_CHANGES_NONE = '      "changes": []'
_CHANGE_INDENT = "        {"
_CHANGES_END = "      ]\n"


def _read_streamed(path: str | Path) -> tuple[Plan, str] | None:
    """Read a plan written by :func:`write_document` a change at a time: its JSON is never
    held whole (for 100,000 changes, ~200 MB of JSON objects besides the plan). None when
    the file is not in that layout, or has any problem at all: the whole-document read then
    reads it, and reports the problem as it always has.

    Two passes over the file. The first keeps everything but the change lines: the outline,
    which gives the canonical text around the changes. The second reads each change line,
    feeds its canonical text to the checksum in the document's order, and converts it."""
    try:
        with open(path, encoding="utf-8") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_PLAN_BYTES:
                return None
            outline, blocks = _outline_of(handle)
            if outline is None:
                return None
            handle.seek(0)
            return _changes_of(handle, outline, blocks, str(path))
    except (OSError, ValueError, RecursionError, PlanFileError):
        return None  # the whole-document read reports it


def _outline_of(lines: TextIO) -> tuple[dict[str, Any] | None, list[bool]]:
    """The document without its changes, and for each step whether it has changes (None:
    not laid out as runner writes)."""
    kept: list[str] = []
    blocks: list[bool] = []
    inside = False
    for line in lines:
        if inside:
            if line == _CHANGES_END:
                inside = False
                kept.append(line)
            elif not line.startswith(_CHANGE_INDENT):
                return None, []
        elif line == _CHANGES_START:
            inside = True
            blocks.append(True)
            kept.append(line)
        else:
            if line.startswith(_CHANGES_NONE):
                blocks.append(False)
            kept.append(line)
    data = json.loads("".join(kept))
    if inside or not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        return None, []
    if data.get("version") != PLAN_VERSION or not isinstance(data.get("checksum"), str):
        return None, []
    steps = data.get("steps")
    if not isinstance(steps, list) or len(steps) != len(blocks):
        return None, []
    if not all(isinstance(step, dict) and step.get("changes") == [] for step in steps):
        return None, []
    return data, blocks


def _changes_of(
    lines: TextIO, outline: dict[str, Any], blocks: list[bool], source: str
) -> tuple[Plan, str] | None:
    """The second pass of :func:`_read_streamed`."""
    body = {k: v for k, v in outline.items() if k != "checksum"}
    steps: list[dict[str, Any]] = body["steps"]
    checksum = _Checksum()
    top_before, top_after = _canonical_around(body, skip="steps")
    checksum.feed(top_before + "[")
    reader = _Reader(source)
    given: dict[int, tuple[Change, ...]] = {}
    fed = 0  # the steps whose changes are fed to the checksum

    def feed_step(index: int, changes: list[str]) -> None:
        before, after = _canonical_around(steps[index], skip="changes")
        checksum.feed(("," if index else "") + before + "[" + ",".join(changes) + "]" + after)

    with_changes = [i for i, has in enumerate(blocks) if has]
    inside = False
    index = -1
    count = 0
    converted: list[Change] = []
    for line in lines:
        if not inside:
            if line == _CHANGES_START:
                index = with_changes.pop(0)
                while fed < index:
                    feed_step(fed, [])
                    fed += 1
                before, _ = _canonical_around(steps[index], skip="changes")
                checksum.feed(("," if index else "") + before + "[")
                inside, count, converted = True, 0, []
            continue
        if line == _CHANGES_END:
            _, after = _canonical_around(steps[index], skip="changes")
            checksum.feed("]" + after)
            fed = index + 1
            inside = False
            if steps[index].get("target", "flow_runs") == "flow_runs":
                given[index] = tuple(converted)
            continue
        data = json.loads(line.rstrip().removesuffix(","))
        checksum.feed(("," if count else "") + _canonical(data))
        if steps[index].get("target", "flow_runs") == "flow_runs":
            converted.append(reader.change(index, ("steps", index, "changes", count), data))
        else:
            steps[index]["changes"].append(data)  # objects: a handful, read as before
        count += 1
    while fed < len(steps):
        feed_step(fed, [])
        fed += 1
    checksum.feed("]" + top_after)
    if checksum.value() != outline["checksum"]:
        return None  # the whole-document read says so
    return reader.plan(body, given), outline["checksum"]


def _too_large(path: str | Path, size: int | None) -> str:
    what = f"{size:,} bytes" if size is not None else f"over {MAX_PLAN_BYTES:,} bytes"
    return (
        f"{path}: too large ({what}): a plan file is at most"
        f" {MAX_PLAN_BYTES // 1024**3} GiB ({MAX_PLAN_BYTES:,} bytes, about a million changes)"
    )


def write_plan(plan: Plan, path: str | Path) -> str:
    """Write atomically (a temp file in the same folder, then ``os.replace``); return the
    document's checksum, computed as it was written."""
    import os
    import tempfile

    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            checksum = write_document(plan, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checksum


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
                f"the plan is {plural(round(age / 60), 'minute')} old (the limit is"
                f" {max_age_seconds / 60:.0f}): make a new plan, or pass --max-plan-age to allow it"
            )
    if plan.violations:
        raise PlanFileError("the plan breaks its guards: " + "; ".join(plan.violations))
