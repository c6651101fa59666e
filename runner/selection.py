"""From a step's ``select`` to the server's filter body, and what runner checks itself.

The server filters what it can. Prefect 2.x servers lack some filters (``tags.any_``,
``end_time``, ``state.*.not_any_``); for those servers the same conditions are applied here,
on the runs read back. Sorting and ``limit`` are always applied here, with the run id as
tie-breaker, so the order is the same however the runs were paged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from runner.filters import (
    DeploymentFilter,
    FlowFilter,
    FlowRunFilter,
    FlowRunQuery,
    IdsOrNull,
    Names,
    NamesAnyNotAny,
    NamesAnyOf,
    StateFilter,
    Tags,
    TimeWindow,
    WorkPoolFilter,
    WorkQueueFilter,
)
from runner.plan import RunView
from runner.playbook import Select, Window

RunPredicate = Callable[[RunView], bool]


@dataclass(frozen=True)
class Capabilities:
    """Which filters the server understands (Prefect 2.x lacks the ones below)."""

    tags_any: bool = True
    end_time: bool = True
    state_not_any: bool = True

    @classmethod
    def for_version(cls, version: str | None) -> Capabilities:
        if version is not None and version.startswith("2."):
            return cls(tags_any=False, end_time=False, state_not_any=False)
        return cls()


def _window(window: Window | None, now: datetime) -> TimeWindow | None:
    if window is None:
        return None
    return TimeWindow(
        before_=window.before.resolve(now) if window.before else None,
        after_=window.after.resolve(now) if window.after else None,
    )


def _in_window(value: datetime | None, window: TimeWindow) -> bool:
    if value is None:
        return False
    if window.before_ is not None and value > window.before_:
        return False
    return not (window.after_ is not None and value < window.after_)


def build_query(
    select: Select,
    *,
    now: datetime,
    deployment_ids: Sequence[UUID] = (),
    capabilities: Capabilities = Capabilities(),
) -> tuple[FlowRunQuery, list[RunPredicate]]:
    """The filter body for the server, and the predicates runner applies to what it returns.

    ``deployment_ids`` are the ids of ``select.deployments`` (resolved from their names) and
    ``select.deployment_ids`` together.
    """
    local: list[RunPredicate] = []
    state = None
    if select.state is not None:
        s = select.state
        types = NamesAnyNotAny(
            any_=tuple(t.value for t in s.type) or None,
            not_any_=(tuple(t.value for t in s.not_type) or None)
            if capabilities.state_not_any
            else None,
        )
        names = NamesAnyNotAny(
            any_=s.name or None,
            not_any_=(s.not_name or None) if capabilities.state_not_any else None,
        )
        state = StateFilter(
            type=types if types.any_ or types.not_any_ else None,
            name=names if names.any_ or names.not_any_ else None,
        )
        if not capabilities.state_not_any and (s.not_type or s.not_name):
            not_types = {t.value for t in s.not_type}
            not_names = set(s.not_name)
            local.append(
                lambda run: run.state_type not in not_types and run.state_name not in not_names
            )
    tags = None
    if select.tags is not None:
        any_ok = capabilities.tags_any
        tags = Tags(
            all_=select.tags.all or None, any_=(select.tags.any or None) if any_ok else None
        )
        if select.tags.any and not any_ok:
            wanted = set(select.tags.any)
            local.append(lambda run: bool(wanted & set(run.tags)))
    end = _window(select.end, now)
    if end is not None and not capabilities.end_time:
        end_window = end
        local.append(lambda run: _in_window(run.end, end_window))
        end = None
    parent = None
    if select.parent == "top_level":
        parent = IdsOrNull(is_null_=True)
    elif select.parent == "subflow":
        parent = IdsOrNull(is_null_=False)
    all_deployments = tuple(dict.fromkeys([*deployment_ids, *select.deployment_ids]))
    flow_runs = FlowRunFilter(
        name=Names(like_=select.name_like) if select.name_like else None,
        tags=tags if tags and (tags.all_ or tags.any_) else None,
        deployment_id=IdsOrNull(any_=all_deployments) if all_deployments else None,
        state=state if state and (state.type or state.name) else None,
        parent_task_run_id=parent,
        expected_start_time=_window(select.expected_start, now),
        next_scheduled_start_time=_window(select.next_scheduled_start, now),
        start_time=_window(select.start, now),
        end_time=end,
    )
    query = FlowRunQuery(
        flows=FlowFilter(name=Names(any_=select.flows)) if select.flows else None,
        flow_runs=flow_runs if flow_runs.model_dump(exclude_none=True) else None,
        deployments=(
            DeploymentFilter(name=Names(like_=select.deployment_like))
            if select.deployment_like
            else None
        ),
        work_pools=WorkPoolFilter(name=NamesAnyOf(any_=select.work_pools))
        if select.work_pools
        else None,
        work_pool_queues=WorkQueueFilter(name=NamesAnyOf(any_=select.work_queues))
        if select.work_queues
        else None,
    )
    return query, local


def _key_time(value: datetime | None, descending: bool) -> tuple[int, float]:
    # Runs without the time sort last, in either direction.
    if value is None:
        return (1, 0.0)
    stamp = value.timestamp()
    return (0, -stamp if descending else stamp)


SORT_KEYS: dict[str, Callable[[RunView], tuple[object, ...]]] = {
    "ID_DESC": lambda r: (-r.id.int,),
    "START_TIME_ASC": lambda r: (*_key_time(r.start or r.expected_start, False), r.id.int),
    "START_TIME_DESC": lambda r: (*_key_time(r.start or r.expected_start, True), r.id.int),
    "EXPECTED_START_TIME_ASC": lambda r: (*_key_time(r.expected_start, False), r.id.int),
    "EXPECTED_START_TIME_DESC": lambda r: (*_key_time(r.expected_start, True), r.id.int),
    "NAME_ASC": lambda r: (r.name, r.id.int),
    # Descending text: negated code points, and a sentinel so "abc" comes before "ab".
    "NAME_DESC": lambda r: ((*(-ord(c) for c in r.name), 1), r.id.int),
    "NEXT_SCHEDULED_START_TIME_ASC": lambda r: (
        *_key_time(r.next_scheduled_start, False),
        r.id.int,
    ),
    "END_TIME_DESC": lambda r: (*_key_time(r.end, True), r.id.int),
}


def order(runs: Iterable[RunView], sort: str | None) -> list[RunView]:
    """Runs in the step's order: ``sort`` (Prefect's meaning, run id breaking ties), or
    oldest expected start first when the step names none (the order a reviewer reads best)."""
    return sorted(runs, key=SORT_KEYS[sort or "EXPECTED_START_TIME_ASC"])
