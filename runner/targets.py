"""Steps on deployments, work pools and work queues (a step's ``target``): the server's
objects as a plan sees them, runner's own check of each against the step's selection, the
change a step proposes, and what drift means for them.

No I/O here: :mod:`runner.observe` reads the objects, :mod:`runner.executor` writes.

What pause means, on Prefect 3.9.1 and 2.20 alike (seen on both servers): a deployment's
``paused`` flag (what the UI's toggle sets; the scheduler makes no runs for a paused
deployment), a work pool's or queue's ``is_paused`` (workers get no runs from it). A
deployment's schedules each keep their own ``active`` flag, which runner never writes: a
resume sets ``paused`` back, and a schedule that was inactive stays inactive.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any
from uuid import UUID

from runner.plan import ObjectChange, ObjectKind, ObjectView, ScheduledRun, ScheduleView
from runner.playbook import ObjectSelect, TagSelect

#: A step's ``target`` -> the kind of each object it selects.
TARGET_KINDS: dict[str, ObjectKind] = {
    "deployments": "deployment",
    "work_pools": "work_pool",
    "work_queues": "work_queue",
}
#: What one object of a kind is called in plans and messages.
NOUNS: dict[str, str] = {
    "deployment": "deployment",
    "work_pool": "work pool",
    "work_queue": "work queue",
}
#: The server's filter route of each target.
FILTER_ROUTES = {
    "deployments": "deployments/filter",
    "work_pools": "work_pools/filter",
    "work_queues": "work_queues/filter",
}
_GLOB_CHARS = frozenset("*?[")


def is_glob(name: str) -> bool:
    return any(c in _GLOB_CHARS for c in name)


def literal_names(patterns: tuple[str, ...], names: Iterable[str]) -> frozenset[str]:
    """The patterns with ``*``, ``?`` or ``[`` that are the very name of one of ``names``
    (the objects the server returned): such a pattern is that name, matched literally (a
    pool named ``prod[1]`` is ``prod[1]``, never ``prod1``). A pattern no object has as its
    name is a glob."""
    have = set(names)
    return frozenset(p for p in patterns if is_glob(p) and p in have)


def name_matches(pattern: str, name: str | None, literal: frozenset[str] = frozenset()) -> bool:
    if name is None:
        return False
    return name == pattern if pattern in literal else fnmatchcase(name, pattern)


def _matches(
    patterns: tuple[str, ...], name: str | None, literal: frozenset[str] = frozenset()
) -> bool:
    return any(name_matches(p, name, literal) for p in patterns)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _schedule_text(schedule: Any) -> str:
    if not isinstance(schedule, dict):
        return "schedule"
    if schedule.get("interval") is not None:
        seconds = schedule["interval"]
        return f"every {int(seconds) if float(seconds).is_integer() else seconds}s"
    if schedule.get("cron") is not None:
        return f"cron {schedule['cron']}"
    if schedule.get("rrule") is not None:
        return f"rrule {schedule['rrule']}"
    return "schedule"


def _timezone(schedule: Any) -> str | None:
    if isinstance(schedule, dict) and isinstance(schedule.get("timezone"), str):
        return str(schedule["timezone"])
    return None


def schedule_content(schedule: Any) -> str:
    """A schedule as the server gave it, canonical JSON: what drift compares."""
    return json.dumps(schedule, sort_keys=True, separators=(",", ":"), default=str)


def _major(version: str | None) -> int | None:
    head = (version or "").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def deleted_with_write(
    runs: list[dict[str, Any]], *, version: str | None, now: datetime
) -> tuple[ScheduledRun, ...]:
    """The runs of a deployment (``runs``: its Scheduled-type runs as the server returned
    them) that the server deletes when the deployment is PATCHed, ``paused`` included.

    Prefect's ``update_deployment`` deletes the deployment's auto-scheduled runs (the
    scheduler's) in a Scheduled-type state: on 2.20 all of them (Late and AwaitingRetry
    too); on 3.x only those not started yet (``run_count`` 0), not AwaitingConcurrencySlot,
    and scheduled after ``now``. A server of unknown version: the 2.20 set, the wider one.
    Runs made by hand or by ``create_flow_run_from_deployment`` are not auto-scheduled and
    stay. Ordered by scheduled time, then id."""
    three = (_major(version) or 0) >= 3
    found: list[ScheduledRun] = []
    for run in runs:
        state = run.get("state") if isinstance(run.get("state"), dict) else {}
        assert isinstance(state, dict)
        if run.get("auto_scheduled") is not True or state.get("type") != "SCHEDULED":
            continue
        when = _parse_time(run.get("next_scheduled_start_time"))
        if three and (
            (run.get("run_count") or 0) != 0
            or state.get("name") == "AwaitingConcurrencySlot"
            or when is None
            or when <= now
        ):
            continue
        found.append(
            ScheduledRun(
                id=UUID(str(run["id"])),
                name=str(run.get("name")),
                state_name=str(state.get("name")),
                scheduled=when,
            )
        )
    far = datetime.max.replace(tzinfo=now.tzinfo)
    return tuple(sorted(found, key=lambda r: (r.scheduled or far, r.id.int)))


def writes(view: ObjectView, action: str) -> bool:
    """Whether a step's ``action`` writes ``view``'s paused flag (else it is a no-op)."""
    return view.paused != (action == "pause")


def lacks_pause(kind: ObjectKind, data: Mapping[str, Any]) -> bool:
    """Whether the server's object has no paused flag (a server older than runner knows):
    such a server cannot be asked to pause it."""
    return ("paused" if kind == "deployment" else "is_paused") not in data


def view_of(kind: ObjectKind, data: Mapping[str, Any], flows: Mapping[str, str]) -> ObjectView:
    """The plan's view of one object as the server returned it; ``flows`` names a
    deployment's flow by its id."""
    if kind == "deployment":
        flow = flows.get(str(data.get("flow_id")), str(data.get("flow_id")))
        return ObjectView(
            kind=kind,
            id=UUID(str(data["id"])),
            name=f"{flow}/{data['name']}",
            paused=bool(data.get("paused")),
            updated=_parse_time(data.get("updated")),
            flow=flow,
            tags=tuple(data.get("tags") or ()),
            work_pool=data.get("work_pool_name"),
            work_queue=data.get("work_queue_name"),
            schedules=tuple(
                ScheduleView(
                    id=UUID(str(s["id"])),
                    active=bool(s.get("active", True)),
                    schedule=_schedule_text(s.get("schedule")),
                    timezone=_timezone(s.get("schedule")),
                    content=schedule_content(s.get("schedule")),
                )
                for s in sorted(
                    data.get("schedules") or (),
                    key=lambda s: (_schedule_text(s.get("schedule")), str(s.get("id"))),
                )
            ),
        )
    return ObjectView(
        kind=kind,
        id=UUID(str(data["id"])),
        name=str(data["name"]),
        paused=bool(data.get("is_paused")),
        updated=_parse_time(data.get("updated")),
        work_pool=data.get("work_pool_name") if kind == "work_queue" else None,
        type=data.get("type") if kind == "work_pool" else None,
    )


def _tags_fail(tags: TagSelect, have: tuple[str, ...]) -> bool:
    owned = set(have)
    return (
        (bool(tags.all) and not set(tags.all) <= owned)
        or (bool(tags.any) and not owned & set(tags.any))
        or bool(owned & set(tags.none))
    )


def failed_keys(
    select: ObjectSelect, view: ObjectView, literal: frozenset[str] = frozenset()
) -> list[str]:
    """The selection keys ``view`` does not match (empty: it is selected, unless excluded);
    ``literal``: the patterns read as names (:func:`literal_names`)."""
    failed: list[str] = []
    if select.names and not _matches(select.names, view.name, literal):
        failed.append("names")
    if select.flows and view.flow not in select.flows:
        failed.append("flows")
    if select.tags is not None and _tags_fail(select.tags, view.tags):
        failed.append("tags")
    if select.work_pools and view.work_pool not in select.work_pools:
        failed.append("work_pools")
    if select.work_queues and view.work_queue not in select.work_queues:
        failed.append("work_queues")
    if select.types and view.type not in select.types:
        failed.append("types")
    if select.paused is not None and view.paused != select.paused:
        failed.append("paused")
    return failed


def excluded(select: ObjectSelect, view: ObjectView, literal: frozenset[str] = frozenset()) -> bool:
    return _matches(select.exclude, view.name, literal)


def server_filter(target: str, select: ObjectSelect) -> tuple[dict[str, Any], frozenset[str]]:
    """The filter body sent for a step, and the selection keys the server is trusted with:
    an object the server returns that fails one of those stops the plan (a filter the server
    ignored). Everything else runner checks itself. (``/work_queues/filter`` ignores a
    ``work_pools`` filter, seen on 3.9.1 and 2.20: never sent.)"""
    body: dict[str, Any] = {}
    sent: set[str] = set()
    plain = [n for n in select.names if not is_glob(n)]
    all_plain = bool(select.names) and len(plain) == len(select.names)
    if target == "deployments":
        deployments: dict[str, Any] = {}
        if select.flows:
            body["flows"] = {"name": {"any_": list(select.flows)}}
            sent.add("flows")
        if select.work_pools:
            body["work_pools"] = {"name": {"any_": list(select.work_pools)}}
            sent.add("work_pools")
        if select.work_queues:
            deployments["work_queue_name"] = {"any_": list(select.work_queues)}
            sent.add("work_queues")
        if select.paused is not None:
            deployments["paused"] = {"eq_": select.paused}
            sent.add("paused")
        if all_plain:
            deployments["name"] = {"any_": sorted({n.partition("/")[2] for n in plain})}
        if deployments:
            body["deployments"] = deployments
    elif target == "work_pools":
        pools: dict[str, Any] = {}
        if all_plain:
            pools["name"] = {"any_": plain}
            sent.add("names")
        if select.types:
            pools["type"] = {"any_": list(select.types)}
            sent.add("types")
        if pools:
            body["work_pools"] = pools
    else:
        if all_plain:
            body["work_queues"] = {"name": {"any_": plain}}
            sent.add("names")
    return body, frozenset(sent)


def plan_change(index: int, view: ObjectView, action: str) -> ObjectChange:
    """Pause what is not paused, resume what is; the rest is a no-op with its reason."""
    if action == "pause":
        if view.paused:
            return ObjectChange(step=index, object=view, op="noop", reason="already paused")
        return ObjectChange(step=index, object=view, op="pause")
    if not view.paused:
        return ObjectChange(step=index, object=view, op="noop", reason="not paused")
    return ObjectChange(step=index, object=view, op="resume")


def paused_word(paused: bool, kind: ObjectKind) -> str:
    return "paused" if paused else ("active" if kind == "deployment" else "ready")


def drift(planned: ObjectView, current: ObjectView | None) -> str | None:
    """Why ``current`` is no longer the object the plan saw (None: it is), apart from its
    paused flag (the caller compares that with the change's before and after).

    Compared: what the step's selection reads and what the reviewer saw. Not ``updated``:
    the server moves it for a work queue each time a worker polls it (seen on 3.9.1 and
    2.20), which is not a change of what the plan is about."""
    noun = NOUNS[planned.kind]
    if current is None:
        return f"the {noun} is gone since the plan"
    if current.name != planned.name:
        return f"renamed {current.name} since the plan"
    if current.tags != planned.tags:
        return "its tags changed since the plan"
    if current.work_pool != planned.work_pool:
        return f"its work pool changed since the plan (now {current.work_pool})"
    if current.work_queue != planned.work_queue:
        return f"its work queue changed since the plan (now {current.work_queue})"
    if current.type != planned.type:
        return f"its type changed since the plan (now {current.type})"
    if {(s.id, s.active, s.content) for s in current.schedules} != {
        (s.id, s.active, s.content) for s in planned.schedules
    }:
        return "its schedules changed since the plan"
    return None
