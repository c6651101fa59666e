"""From a step's ``select`` to the server's filter body, and what runner checks itself.

The server filters what it can, and runner checks every run it returns against the whole
selection (:func:`failed_keys`): a run the server should not have returned stops the plan.
Prefect 2.x servers lack some filters (``tags.any_``, ``end_time``, ``state.*.not_any_``);
for those servers the same conditions are applied here only. Sorting and ``limit`` are
always applied here, with the run id as tie-breaker, so the order is the same however the
runs were paged.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from uuid import UUID

from runner.filters import (
    AnyIds,
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
from runner.playbook import Exclusion, JSONValue, Select, StateSelect, Window


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


@dataclass(frozen=True)
class ServerQuery:
    """What is sent for a step, and which of its conditions the server is not trusted with.

    ``query`` is None when the selection can match nothing (``type: SCHEDULED`` with
    ``not_type: [SCHEDULED]``): nothing is read. ``loose`` names the selection keys the
    server is known to apply only in part, or not at all (a filter Prefect 2.x lacks, a
    ``LIKE`` pattern whose ``%`` or ``_`` the server reads as a wildcard): a run that fails
    one of those is dropped quietly; a run that fails any other key stops the plan.
    """

    query: FlowRunQuery | None
    loose: frozenset[str] = frozenset()
    #: Read by the expected start window alone (:func:`wide_query`).
    wide: bool = False


_WILDCARDS = ("%", "_")

#: Selection keys no Prefect server filters on: runner reads more and applies them itself.
LOCAL_KEYS = ("state.since", "tags.none", "created", "parameters")


def local_keys(select: Select) -> list[str]:
    """The keys of ``select`` that runner applies itself on every server (see
    :data:`LOCAL_KEYS`)."""
    keys = []
    if select.state is not None and select.state.since is not None:
        keys.append("state.since")
    if select.tags is not None and select.tags.none:
        keys.append("tags.none")
    if select.created is not None:
        keys.append("created")
    if select.parameters:
        keys.append("parameters")
    return keys


def _window(window: Window | None, now: datetime) -> TimeWindow | None:
    if window is None:
        return None
    return TimeWindow(
        before_=window.before.resolve(now) if window.before else None,
        after_=window.after.resolve(now) if window.after else None,
    )


def _in_window(value: datetime | None, window: TimeWindow | None) -> bool:
    if window is None:
        return True
    if value is None:
        return False
    if window.before_ is not None and value > window.before_:
        return False
    return not (window.after_ is not None and value < window.after_)


def _one_sided(include: Sequence[str], exclude: Sequence[str]) -> NamesAnyNotAny | None:
    """``any_`` or ``not_any_``, never both: Prefect 3.8 drops a state filter that has both
    (it then matches every state). An inclusion list minus the exclusions says the same."""
    if include:
        return NamesAnyNotAny(any_=tuple(v for v in include if v not in exclude))
    if exclude:
        return NamesAnyNotAny(not_any_=tuple(exclude))
    return None


def build_query(
    select: Select,
    *,
    now: datetime,
    deployment_ids: Sequence[UUID] = (),
    capabilities: Capabilities = Capabilities(),
) -> ServerQuery:
    """The filter body for the server, and the keys it is not trusted to apply exactly.

    ``deployment_ids`` are the ids of ``select.deployments`` (resolved from their names) and
    ``select.deployment_ids`` together.
    """
    loose: set[str] = set(local_keys(select))
    state = None
    if select.state is not None:
        s = select.state
        not_types = [t.value for t in s.not_type] if capabilities.state_not_any else []
        not_names = list(s.not_name) if capabilities.state_not_any else []
        if not capabilities.state_not_any:
            loose.update(
                k for k, v in (("state.not_type", s.not_type), ("state.not_name", s.not_name)) if v
            )
        types = _one_sided([t.value for t in s.type], not_types)
        names = _one_sided(list(s.name), not_names)
        if (types is not None and types.any_ == ()) or (names is not None and names.any_ == ()):
            return ServerQuery(query=None)  # every state it names, it also excludes
        state = StateFilter(type=types, name=names) if types or names else None
    tags = None
    if select.tags is not None:
        any_ok = capabilities.tags_any
        tags = Tags(
            all_=select.tags.all or None, any_=(select.tags.any or None) if any_ok else None
        )
        if select.tags.any and not any_ok:
            loose.add("tags.any")
    end = _window(select.end, now)
    if end is not None and not capabilities.end_time:
        loose.add("end")
        end = None
    # The server's LIKE folds the case of ASCII letters only (SQLite): a pattern with other
    # letters is not sent, and runner matches it itself.
    name_like = select.name_like if select.name_like and select.name_like.isascii() else None
    deployment_like = (
        select.deployment_like
        if select.deployment_like and select.deployment_like.isascii()
        else None
    )
    if select.name_like and (name_like is None or any(w in select.name_like for w in _WILDCARDS)):
        loose.add("name_like")
    if select.deployment_like and (
        deployment_like is None or any(w in select.deployment_like for w in _WILDCARDS)
    ):
        loose.add("deployment_like")
    parent = None
    if select.parent == "top_level":
        parent = IdsOrNull(is_null_=True)
    elif select.parent == "subflow":
        parent = IdsOrNull(is_null_=False)
    all_deployments = tuple(dict.fromkeys([*deployment_ids, *select.deployment_ids]))
    flow_runs = FlowRunFilter(
        name=Names(like_=name_like) if name_like else None,
        tags=tags if tags and (tags.all_ or tags.any_) else None,
        deployment_id=IdsOrNull(any_=all_deployments) if all_deployments else None,
        state=state,
        parent_task_run_id=parent,
        expected_start_time=_window(select.expected_start, now),
        next_scheduled_start_time=_window(select.next_scheduled_start, now),
        parent_flow_run_id=AnyIds(any_=select.parent_id) if select.parent_id else None,
        start_time=_window(select.start, now),
        end_time=end,
    )
    query = FlowRunQuery(
        flows=FlowFilter(name=Names(any_=select.flows)) if select.flows else None,
        flow_runs=flow_runs if flow_runs.model_dump(exclude_none=True) else None,
        deployments=(
            DeploymentFilter(name=Names(like_=deployment_like)) if deployment_like else None
        ),
        work_pools=WorkPoolFilter(name=NamesAnyOf(any_=select.work_pools))
        if select.work_pools
        else None,
        work_pool_queues=WorkQueueFilter(name=NamesAnyOf(any_=select.work_queues))
        if select.work_queues
        else None,
    )
    return ServerQuery(query=query, loose=frozenset(loose))


#: The keys a wide read (:func:`wide_query`) leaves to runner: those whose check in
#: :func:`failed_keys` is exactly the server's filter. Kept on the server: the expected
#: start window, ``name_like`` and ``deployment_like`` (SQLite folds the case of ASCII
#: letters only, PostgreSQL of every letter: runner's check is a superset of both) and
#: ``work_queues`` (the server follows a run's link to its queue; a run keeps the name of a
#: queue deleted since). State type and name are not sent but stay trusted: runner first
#: reads them from the run's state columns as the server's filter would
#: (:func:`state_failed`), then checks its state record as for any read.
WIDE_LOOSE = frozenset(
    {
        "state.since",
        "flows",
        "deployments",
        "deployment_ids",
        "tags.all",
        "tags.any",
        "tags.none",
        "work_pools",
        "parent",
        "parent_id",
        "parameters",
        "next_scheduled_start",
        "start",
        "end",
        "created",
    }
)


def wide_query(sq: ServerQuery) -> ServerQuery:
    """The *wide read* of the selection ``sq`` was built for: the server is sent its
    expected start window (none: every run), and the filters runner cannot match exactly
    itself (see :data:`WIDE_LOOSE`); runner applies every other key (:func:`failed_keys`).

    For a selection that is most of its window. Prefect's SQLite schema has no index that
    serves a state (or flow) filter sorted by expected start: the server sorts every run of
    the state in a temporary B-tree for each keyset page, so a read's cost per run grows with
    the history. The window alone is a range on ``ix_flow_run__expected_start_time_desc``,
    the same cost per page wherever it starts."""
    query = sq.query
    assert query is not None
    runs = query.flow_runs or FlowRunFilter()
    kept = FlowRunFilter(expected_start_time=runs.expected_start_time, name=runs.name)
    wide = FlowRunQuery(
        flow_runs=kept if kept.model_dump(exclude_none=True) else None,
        deployments=query.deployments,
        work_pool_queues=query.work_pool_queues,
    )
    return ServerQuery(query=wide, loose=sq.loose | WIDE_LOOSE, wide=True)


def _contains(text: str, part: str) -> bool:
    """``LIKE '%part%'`` as the server means it: case-insensitive, ``%``/``_`` taken literally
    (a superset of what either backend matches, so a run the server returned is not refused
    for a case folding the database did and Python did not)."""
    return part.lower() in text.lower() or part.casefold() in text.casefold()


_MISSING = object()


def parameter_at(parameters: Mapping[str, object] | None, path: str) -> object:
    """The value at a dotted ``path`` into a run's parameters (``_MISSING`` if none); a
    part of digits indexes a list (``batches.0``)."""
    value: object = parameters if parameters is not None else {}
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]  # a list item by its index: batches.0
        else:
            return _MISSING
    return value


def json_equal(left: object, right: object) -> bool:
    """Equality as JSON means it: 1 == 1.0, but true != 1 and "1" != 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(
            json_equal(a, b) for a, b in zip(left, right, strict=True)
        )
    return type(left) is type(right) and left == right


def _parameters_match(wanted: Sequence[tuple[str, JSONValue]], run: RunView) -> bool:
    return all(json_equal(parameter_at(run.parameters, k), v) for k, v in wanted)


def state_failed(state: StateSelect, state_type: str | None, state_name: str | None) -> list[str]:
    """The keys of ``state`` (type, name, not_type, not_name; not ``since``) a run in the
    state ``state_type``/``state_name`` fails, as the server's filter reads them: a run
    without a state matches none of them (SQL's ``NOT IN`` leaves it out too)."""
    failed: list[str] = []
    if state.type and state_type not in {t.value for t in state.type}:
        failed.append("state.type")
    if state.name and state_name not in state.name:
        failed.append("state.name")
    not_types = {t.value for t in state.not_type}
    if state.not_type and (state_type is None or state_type in not_types):
        failed.append("state.not_type")
    if state.not_name and (state_name is None or state_name in state.not_name):
        failed.append("state.not_name")
    return failed


def failed_keys(
    select: Select,
    run: RunView,
    *,
    now: datetime,
    deployment_ids: Collection[UUID] = (),
    parents: Mapping[UUID, UUID] | None = None,
) -> list[str]:
    """The keys of ``select`` that ``run`` does not satisfy (empty: it is selected).

    runner's own reading of the whole selection, applied to every run the server returns:
    the server is never trusted to have applied a filter (an unknown key, or a state filter
    it mis-reads, matches every run). ``run`` must be named (flow, ``flow/deployment``).
    ``parents`` maps a subflow run's parent task run to that task's flow run (for
    ``parent_id``); ``run.parameters`` must be kept when ``select.parameters`` is set.
    Exclusions are not looked at here (:func:`matching_exclusions`).
    """
    failed: list[str] = []
    s = select.state
    if s is not None:
        failed += state_failed(s, run.state_type, run.state_name)
        if s.since is not None and not _in_window(run.state_since, _window(s.since, now)):
            failed.append("state.since")
    if select.flows and run.flow not in select.flows:
        failed.append("flows")
    wanted = {*deployment_ids, *select.deployment_ids}
    if wanted and run.deployment_id not in wanted:
        failed.append("deployments" if select.deployments else "deployment_ids")
    if select.deployment_like:
        name = run.deployment.partition("/")[2] if run.deployment else None
        if name is None or not _contains(name, select.deployment_like):
            failed.append("deployment_like")
    if select.tags is not None:
        if not set(select.tags.all) <= set(run.tags):
            failed.append("tags.all")
        if select.tags.any and not set(select.tags.any) & set(run.tags):
            failed.append("tags.any")
        if set(select.tags.none) & set(run.tags):
            failed.append("tags.none")
    if select.work_pools and run.work_pool not in select.work_pools:
        failed.append("work_pools")
    if select.work_queues and run.work_queue not in select.work_queues:
        failed.append("work_queues")
    if select.name_like and not _contains(run.name, select.name_like):
        failed.append("name_like")
    if select.parent == "top_level" and run.parent_task_run_id is not None:
        failed.append("parent")
    if select.parent == "subflow" and run.parent_task_run_id is None:
        failed.append("parent")
    if select.parent_id:
        parent = (parents or {}).get(run.parent_task_run_id) if run.parent_task_run_id else None
        if parent not in select.parent_id:
            failed.append("parent_id")
    if select.parameters and not _parameters_match(select.parameters, run):
        failed.append("parameters")
    for key, value in (
        ("expected_start", run.expected_start),
        ("next_scheduled_start", run.next_scheduled_start),
        ("start", run.start),
        ("end", run.end),
        ("created", run.created),
    ):
        if not _in_window(value, _window(getattr(select, key), now)):
            failed.append(key)
    return failed


def matching_exclusions(
    exclusions: Sequence[Exclusion],
    run: RunView,
    *,
    now: datetime,
    deployment_ids: Mapping[str, UUID],
    parents: Mapping[UUID, UUID] | None = None,
) -> list[str]:
    """The labels of the exclusions ``run`` matches (any one leaves it out of the step)."""
    return [
        exclusion.label
        for exclusion in exclusions
        if not failed_keys(
            exclusion.select,
            run,
            now=now,
            deployment_ids=[deployment_ids[n] for n in exclusion.select.deployments],
            parents=parents,
        )
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _key_time(value: datetime | None, descending: bool) -> tuple[int, int]:
    # Runs without the time sort last, in either direction. Whole microseconds since the
    # epoch: a float timestamp() merges times a microsecond apart past ~2255.
    if value is None:
        return (1, 0)
    stamp = (value.astimezone(timezone.utc) - _EPOCH) // timedelta(microseconds=1)
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


#: A step's order when it names none: oldest expected start first (the order a reviewer reads
#: best).
DEFAULT_SORT = "EXPECTED_START_TIME_ASC"


def order(runs: Iterable[RunView], sort: str | None) -> list[RunView]:
    """Runs in the step's order: ``sort`` (Prefect's meaning, run id breaking ties), or
    :data:`DEFAULT_SORT` when the step names none."""
    return sorted(runs, key=SORT_KEYS[sort or DEFAULT_SORT])
