"""Observe: read, for every step, the runs its selection matches, before anything changes;
and :func:`plan_playbook`, which observes and hands the observation to the pure planner.

This is the I/O half of planning; :mod:`runner.planner` is the pure half.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timezone
from typing import TypeVar
from uuid import UUID

from runner.client import PrefectClient
from runner.collector import collection_paused
from runner.errors import NotFound, PlaybookError, Problem, SelectionError
from runner.models import FlowRun
from runner.plan import ObjectView, Observation, Plan, RunView, StepObservation
from runner.planner import make_plan
from runner.playbook import Playbook, Reschedule, Select, Step
from runner.selection import (
    DEFAULT_SORT,
    LOCAL_KEYS,
    SORT_KEYS,
    Capabilities,
    ServerQuery,
    build_query,
    failed_keys,
    matching_exclusions,
    state_failed,
    wide_query,
)
from runner.spool import Spool
from runner.states import PREFECT_STATE_NAMES
from runner.targets import (
    FILTER_ROUTES,
    NOUNS,
    TARGET_KINDS,
    deleted_with_write,
    excluded,
    is_glob,
    lacks_pause,
    literal_names,
    name_matches,
    server_filter,
    view_of,
    writes,
)
from runner.targets import failed_keys as object_failed_keys

#: Pages of a selection read at once when it is read by offset (the client's fallback; a read
#: by keyset has one page in flight, the next asked for while one is parsed). On SQLite an
#: offset page's cost grows with its offset and a state filter (20,000 runs of one state:
#: 0.19 s a page at the start, 0.45 s at the end); reading four at a time took 26 s instead
#: of 38 s, and eight no less.
READ_CONCURRENCY = 4
#: A selection is read wide (:func:`runner.selection.wide_query`: the server sent its expected
#: start window alone) when that window holds at least this many runs and the selection is
#: at least ``WIDE_SHARE`` of them: then it reads at most a quarter more runs than it keeps,
#: and each page costs SQLite the same wherever it starts (100 pages and fewer: the server's
#: sort costs little either way).
WIDE_MIN_RUNS = 20_000
WIDE_SHARE = 0.8

_T = TypeVar("_T")


#: What each kind of name is called in a problem, and the key that selects by it.
_KINDS = {
    "flows": "flow",
    "deployments": "deployment",
    "work_pools": "work pool",
    "work_queues": "work queue",
}


def _named_values(playbook: Playbook, kind: str) -> list[tuple[str, str]]:
    """Every ``(path, name)`` of ``kind`` a step or an exclusion selects by."""
    found: list[tuple[str, str]] = []
    for i, step in enumerate(playbook.steps):
        parts = [(f"steps[{i}].select", step.select)]
        for exclusion in step.select.exclude:
            under = exclusion.label if exclusion.label.startswith("exclude[") else "exclude"
            parts.append((f"steps[{i}].select.{under}", exclusion.select))
        for prefix, select in parts:
            names: tuple[str, ...] = getattr(select, kind)
            for j, name in enumerate(names):
                item = f"{prefix}.{kind}[{j}]"
                found.append((item if item in playbook.positions else f"{prefix}.{kind}", name))
    return found


#: For a step with a target: which kind of name each of its selection keys holds.
_OBJECT_KEYS = {
    "deployments": {
        "names": "deployments",
        "flows": "flows",
        "work_pools": "work_pools",
        "work_queues": "work_queues",
        "exclude": "deployments",
    },
    "work_pools": {"names": "work_pools", "exclude": "work_pools"},
    "work_queues": {"names": "work_queues", "work_pools": "work_pools", "exclude": "work_queues"},
}


def _object_names(playbook: Playbook, kind: str) -> list[tuple[str, str]]:
    """Every ``(path, name)`` of ``kind`` a step with a target names (globs are patterns,
    not names: not checked)."""
    found: list[tuple[str, str]] = []
    for i, step in enumerate(playbook.steps):
        if step.objects is None:
            continue
        for key, holds in _OBJECT_KEYS[step.target].items():
            if holds != kind:
                continue
            for j, name in enumerate(getattr(step.objects, key)):
                if is_glob(name):
                    continue
                item = f"steps[{i}].select.{key}[{j}]"
                path = item if item in playbook.positions else f"steps[{i}].select.{key}"
                found.append((path, name))
    return found


async def _deployment_ids(client: PrefectClient, names: list[str]) -> dict[str, UUID]:
    found: dict[str, UUID] = {}
    for name in names:
        with contextlib.suppress(NotFound):
            found[name] = (await client.read_deployment_by_name(name)).id
    return found


def _suggestion(name: str, known: list[str]) -> str:
    folded = {k.casefold(): k for k in known}
    close = [folded[name.casefold()]] if name.casefold() in folded else []
    close = close or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


async def check_names(client: PrefectClient, playbook: Playbook) -> dict[str, UUID]:
    """Every flow, deployment, work pool and work queue the playbook names must exist on
    the server: a misspelled one would select nothing, or leave nothing out. Returns the
    deployments' ids by name; raises :class:`PlaybookError` listing every unknown name,
    each with the closest name the server has."""
    problems: list[Problem] = []
    deployment_ids: dict[str, UUID] = {}
    for kind, noun in _KINDS.items():
        used = _named_values(playbook, kind) + _object_names(playbook, kind)
        if not used:
            continue
        names = sorted({name for _, name in used})
        if kind == "deployments":
            deployment_ids = await _deployment_ids(client, names)
            known = set(deployment_ids)
        else:
            known = set(await client.read_names(kind, among=names))
        missing = [(path, name) for path, name in used if name not in known]
        if not missing:
            continue
        try:
            everything = await client.read_names(kind)
        except NotFound:  # no list to suggest from (a route this server lacks)
            everything = []
        for path, name in missing:
            line, column = playbook.where(path)
            problems.append(
                Problem(
                    file=playbook.path,
                    line=line,
                    column=column,
                    path=path,
                    message=f"no {noun} {name!r} on {client.settings.display_url}"
                    + _suggestion(name, everything),
                )
            )
    if problems:
        raise PlaybookError(problems)
    return deployment_ids


def _custom_state_names(playbook: Playbook) -> list[tuple[str, str]]:
    """Every ``(path, name)`` of a state name that is not Prefect's own (``custom: true``) a
    step or an exclusion selects by."""
    found: list[tuple[str, str]] = []
    for i, step in enumerate(playbook.steps):
        parts = [(f"steps[{i}].select", step.select)]
        for exclusion in step.select.exclude:
            under = exclusion.label if exclusion.label.startswith("exclude[") else "exclude"
            parts.append((f"steps[{i}].select.{under}", exclusion.select))
        for prefix, select in parts:
            if select.state is None or not select.state.custom:
                continue
            for key in ("name", "not_name"):
                for j, name in enumerate(getattr(select.state, key)):
                    if name in PREFECT_STATE_NAMES:
                        continue
                    item = f"{prefix}.state.{key}[{j}]"
                    path = item if item in playbook.positions else f"{prefix}.state.{key}"
                    found.append((path, name))
    return found


async def check_custom_states(client: PrefectClient, playbook: Playbook) -> list[str]:
    """A note for each custom state name no run on the server has been in, as far as its
    retained history says (Prefect 3.9's ``/observed-states``; older servers cannot say):
    a misspelled one selects nothing, or leaves nothing out."""
    used = _custom_state_names(playbook)
    if not used:
        return []
    notes: list[str] = []
    everything: list[str] | None = None
    for path, name in used:
        seen = await client.read_observed_states(name)
        if seen is None:
            return []
        if any(state_name == name for _, state_name in seen):
            continue
        if everything is None:
            everything = sorted({n for _, n in await client.read_observed_states() or []})
        line, column = playbook.where(path)
        notes.append(
            f"{playbook.path}:{line}:{column}: {path}: no run on"
            f" {client.settings.display_url} has been in a state named {name!r}"
            " (its retained history)" + _suggestion(name, everything)
        )
    return notes


class _Shared:
    """One object for each distinct value many runs repeat (a state name, a work queue, a
    deployment id, a tag set): 100,000 runs of one deployment hold one copy, not 100,000."""

    def __init__(self) -> None:
        self._seen: dict[object, object] = {}

    def __call__(self, value: _T) -> _T:
        if value is None:
            return value
        return self._seen.setdefault(value, value)  # type: ignore[return-value]


class _Unshared(_Shared):
    """Every value as it is: for views not held together (``runner ls`` writes each page out)."""

    def __call__(self, value: _T) -> _T:
        return value


class Names:
    """Flow and deployment names by id, read as pages bring new ids and kept (there are as
    many as the server has flows and deployments, whatever the number of runs)."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client
        self.flows: dict[UUID, str] = {}
        self.deployments: dict[UUID, str] = {}
        self.asked: set[UUID] = set()  # gone ones too: named by their id, not asked again

    async def learn(self, page: Sequence[FlowRun]) -> None:
        new_deployments = sorted({r.deployment_id for r in page if r.deployment_id} - self.asked)
        found = await self.client.read_deployments(new_deployments) if new_deployments else []
        new_flows = sorted(({r.flow_id for r in page} | {d.flow_id for d in found}) - self.asked)
        if new_flows:
            self.flows.update((f.id, f.name) for f in await self.client.read_flows(new_flows))
        for deployment in found:
            flow = self.flows.get(deployment.flow_id, str(deployment.flow_id))
            self.deployments[deployment.id] = f"{flow}/{deployment.name}"
        self.asked.update(new_deployments, new_flows)

    def flow(self, flow_id: UUID) -> str:
        return self.flows.get(flow_id, str(flow_id))

    def deployment(self, deployment_id: UUID | None) -> str | None:
        return self.deployments.get(deployment_id) if deployment_id else None


async def read_parents(client: PrefectClient, page: Sequence[FlowRun]) -> dict[UUID, UUID]:
    """The parent flow run of each subflow run of ``page``, by its parent task run."""
    tasks = sorted({r.parent_task_run_id for r in page if r.parent_task_run_id})
    return await client.read_parent_runs(tasks) if tasks else {}


def _state_time(run: FlowRun) -> datetime | None:
    """The time of the run's Scheduled-type state, where ``next_scheduled_start_time`` does
    not already say it (Prefect copies it there on every move into such a state)."""
    if run.state is None or run.state.type.value != "SCHEDULED":
        return None
    when = run.state.state_details.scheduled_time
    return None if when == run.next_scheduled_start_time else when


def run_view(
    run: FlowRun,
    keep_parameters: bool,
    same: _Shared | None = None,
    names: Names | None = None,
) -> RunView:
    """A slim view of ``run`` (``same`` shares the values many runs repeat), its flow and
    deployment named by ``names`` (without: its flow's id, and no deployment name)."""
    same = same or _Unshared()
    return RunView(
        id=run.id,
        name=run.name,
        flow=names.flow(run.flow_id) if names else same(str(run.flow_id)),
        deployment=names.deployment(run.deployment_id) if names else None,
        deployment_id=same(run.deployment_id),
        state_type=run.state.type.value if run.state else None,
        state_name=same(run.state.name) if run.state else None,
        state_id=run.state.id if run.state else None,
        state_since=run.state.timestamp if run.state else None,
        expected_start=run.expected_start_time,
        next_scheduled_start=run.next_scheduled_start_time,
        state_scheduled_time=_state_time(run),
        start=run.start_time,
        end=run.end_time,
        created=run.created,
        tags=same(run.tags),
        work_queue=same(run.work_queue_name),
        work_pool=same(run.work_pool_name),
        parent_task_run_id=run.parent_task_run_id,
        parameters=dict(run.parameters) if keep_parameters else None,
        job_variables=(
            dict(run.job_variables) if keep_parameters and run.job_variables is not None else None
        ),
        idempotency_key=run.idempotency_key if keep_parameters else None,
    )


def _uses(select: Select, key: str) -> bool:
    """Whether ``select`` or one of its exclusions selects by ``key``."""
    return bool(getattr(select, key)) or any(getattr(e.select, key) for e in select.exclude)


def _left_out_by_columns(select: Select, run: FlowRun) -> bool:
    """Whether the server's state filter, not sent in a wide read, would have left ``run``
    out: it reads the run's state columns, which the answer has beside its state record.
    A run that passes them is checked against its record as in any read (a disagreement
    then stops the plan, as the narrow read's would)."""
    if select.state is None or "column_state_type" not in run.model_fields_set:
        return False
    return bool(state_failed(select.state, run.column_state_type, run.column_state_name))


async def _widened(client: PrefectClient, sq: ServerQuery) -> ServerQuery:
    """``sq``, or its wide read when that is the cheaper read (see
    :data:`WIDE_MIN_RUNS`): two counts decide."""
    if sq.query is None:
        return sq
    wide = wide_query(sq)
    if sq.query == wide.query:
        return sq
    # The selection first: a small one costs one count, never a count of the whole window
    # (on a large history, all of it).
    selected = await client.count_flow_runs(sq.query)
    if selected < WIDE_MIN_RUNS * WIDE_SHARE:
        return sq
    total = await client.count_flow_runs(wide.query)
    return wide if total >= WIDE_MIN_RUNS and selected >= total * WIDE_SHARE else sq


async def observe(client: PrefectClient, playbook: Playbook, *, now: datetime) -> Observation:
    """Read every step's candidate runs (paged to the end by keyset: each run once, even
    while other writers add and delete runs)."""
    info = await client.server_info()
    capabilities = Capabilities.for_version(info.version)
    deployment_ids = await check_names(client, playbook)
    state_notes = await check_custom_states(client, playbook)
    # Each page becomes slim, named views at once (holding 100,000 pydantic runs costs
    # gigabytes), checked against the whole selection, and the kept ones spooled: a large
    # selection's views go to disk a chunk at a time (runner.spool). Names are read as pages
    # bring new flows and deployments.
    names = Names(client)
    shared = _Shared()
    read: list[tuple[ServerQuery, Sequence[RunView], int, dict[str, int]] | None] = []
    for index, step in enumerate(playbook.steps):
        if step.target != "flow_runs":
            read.append(None)
            continue
        sq = build_query(
            step.select,
            now=now,
            deployment_ids=[deployment_ids[n] for n in step.select.deployments],
            capabilities=capabilities,
        )
        sq = await _widened(client, sq)
        recreates = isinstance(step.action, Reschedule) and step.action.recreates
        keep = recreates or _uses(step.select, "parameters")
        matched = {e.label: 0 for e in step.select.exclude}
        spooled: Spool[RunView] = Spool(order=SORT_KEYS[step.select.sort or DEFAULT_SORT])
        fetched = 0
        where = f"steps[{index}] ({step.name!r})"
        if sq.query is not None:
            async for page in client.iter_flow_runs(sq.query, concurrency=READ_CONCURRENCY):
                fetched += len(page)
                if sq.wide:
                    page = [run for run in page if not _left_out_by_columns(step.select, run)]
                checked = await checked_views(
                    client,
                    names,
                    page,
                    step.select,
                    sq,
                    keep_parameters=keep,
                    where=where,
                    now=now,
                    deployment_ids=deployment_ids,
                    version=info.version,
                    same=shared,
                )
                for view, excluded in checked:
                    for label in excluded or ():
                        matched[label] += 1
                    if view.idempotency_key is not None and not recreates:
                        # Parameters stay (they guard the change: drift); the key is
                        # recreate's.
                        view = dataclasses.replace(view, idempotency_key=None)
                    # A run failing only conditions that runner applies itself
                    # (ServerQuery.loose), or matching an exclusion, is not selected.
                    if excluded is not None and not excluded:
                        spooled.append(view)
        read.append((sq, spooled.seal(), fetched, matched))
    steps: list[StepObservation] = []
    notes: list[str] = []
    for index, (step, seen) in enumerate(zip(playbook.steps, read, strict=True)):
        if seen is None:
            objects, left_out = await _observe_objects(client, step, index, info.version, now=now)
            steps.append(StepObservation(runs=(), objects=objects, exclusions=left_out))
            continue
        sq, kept, fetched, matched = seen
        if sq.wide:
            notes.append(
                f"step {step.name!r}: read by its expected start window alone, the selection"
                " being most of it (the server's own filter sorts every page on SQLite);"
                f" runner applied the rest of select itself: read {fetched} runs, kept {len(kept)}"
            )
            steps.append(StepObservation(runs=kept, exclusions=tuple(matched.items())))
            continue
        local = sorted(sq.loose - {"name_like", "deployment_like"})
        if step.select.exclude:
            local.append("exclude")
        if local:
            why = (
                "the server cannot filter on them"
                if set(local) <= {*LOCAL_KEYS, "exclude"}
                else f"the server (Prefect {info.version}) cannot filter on all of them"
            )
            notes.append(
                f"step {step.name!r}: runner applied select.{', select.'.join(local)} itself"
                f" ({why}): read {fetched} runs, kept {len(kept)}"
            )
        steps.append(StepObservation(runs=kept, exclusions=tuple(matched.items())))
    return Observation(
        now=now,
        server_url=client.settings.display_url,
        server_version=info.version,
        steps=tuple(steps),
        notes=(*state_notes, *notes),
    )


async def _observe_objects(
    client: PrefectClient, step: Step, index: int, version: str | None, *, now: datetime
) -> tuple[tuple[ObjectView, ...], tuple[tuple[str, int], ...]]:
    """The deployments, work pools or work queues a step with a target selects (each checked
    by runner against the whole selection, less its exclusions), by name; and how many each
    ``exclude`` pattern left out. A deployment the step writes carries the scheduled runs the
    server deletes with the write (a request a deployment)."""
    select = step.objects
    assert select is not None
    kind = TARGET_KINDS[step.target]
    noun = NOUNS[kind]
    body, trusted = server_filter(step.target, select)
    items = await client.read_objects(FILTER_ROUTES[step.target], body)
    where = f"steps[{index}] ({step.name!r})"
    for item in items:
        if lacks_pause(kind, item):
            raise SelectionError(
                f"{where}: the server (Prefect {version or 'unknown version'}) gives its"
                f" {noun}s no paused flag: it cannot pause or resume them (runner needs"
                " Prefect 2.20 or later). Nothing was planned and nothing was sent."
            )
    flows: dict[str, str] = {}
    if kind == "deployment":
        ids = sorted({UUID(str(i["flow_id"])) for i in items if i.get("flow_id")})
        flows = {str(f.id): f.name for f in await client.read_flows(ids)}
    views: list[ObjectView] = []
    left_out: list[str] = []
    seen = [view_of(kind, item, flows) for item in items]
    literal = literal_names((*select.names, *select.exclude), (v.name for v in seen))
    for view in seen:
        failed = object_failed_keys(select, view, literal)
        ignored = [key for key in failed if key in trusted]
        if ignored:
            raise SelectionError(
                f"{where}: the server returned {noun} {view.name} ({view.id}), which does not"
                f" match select.{', select.'.join(ignored)}: the server (Prefect"
                f" {version or 'unknown version'}) ignored or mis-read that filter."
                " Nothing was planned and nothing was sent."
            )
        if failed:
            continue
        if excluded(select, view, literal):
            left_out.append(view.name)
            continue
        if kind == "deployment" and writes(view, step.action.kind):
            runs = await client.read_scheduled_runs(view.id)
            view = dataclasses.replace(
                view, scheduled_runs=deleted_with_write(runs, version=version, now=now)
            )
        views.append(view)
    counts = tuple(
        (pattern, sum(1 for name in left_out if name_matches(pattern, name, literal)))
        for pattern in select.exclude
    )
    return tuple(sorted(views, key=lambda v: (v.name, v.id.int))), counts


#: What a plan's selection error ends with.
NOTHING_SENT = "Nothing was planned and nothing was sent."


async def checked_views(
    client: PrefectClient,
    names: Names,
    page: Sequence[FlowRun],
    select: Select,
    sq: ServerQuery,
    *,
    keep_parameters: bool,
    where: str,
    now: datetime,
    deployment_ids: Mapping[str, UUID],
    version: str | None,
    same: _Shared | None = None,
    outcome: str = NOTHING_SENT,
) -> list[tuple[RunView, list[str] | None]]:
    """Each run of a page the server returned for ``select``: its view, named (new flows
    and deployments read first), and :func:`check_run`'s verdict on it."""
    await names.learn(page)
    parents = await read_parents(client, page) if _uses(select, "parent_id") else {}
    checked = []
    for run in page:
        view = run_view(run, keep_parameters, same, names)
        verdict = check_run(
            select,
            sq,
            view,
            where=where,
            now=now,
            deployment_ids=deployment_ids,
            parents=parents,
            version=version,
            outcome=outcome,
        )
        checked.append((view, verdict))
    return checked


def check_run(
    select: Select,
    sq: ServerQuery,
    run: RunView,
    *,
    where: str,
    now: datetime,
    deployment_ids: Mapping[str, UUID],
    parents: Mapping[UUID, UUID],
    version: str | None,
    outcome: str = NOTHING_SENT,
) -> list[str] | None:
    """runner's own check of a run the server returned for ``select`` (sent as ``sq``):
    None when it fails a key runner applies itself (``sq.loose``: it is not selected),
    else the labels of the exclusions it matches (empty: it is selected). ``run`` must be
    named (:func:`run_view` with ``names``); ``deployment_ids`` are every named deployment's id.

    A run failing a key the server was trusted with raises :class:`SelectionError` (the
    server ignored or mis-read that filter), saying ``where`` the selection is, and then
    ``outcome``."""
    failed = failed_keys(
        select,
        run,
        now=now,
        deployment_ids=[deployment_ids[n] for n in select.deployments],
        parents=parents,
    )
    trusted = [key for key in failed if key not in sq.loose]
    if trusted:
        raise SelectionError(_ignored_filter(where, run, trusted, version) + " " + outcome)
    if failed:
        return None
    return matching_exclusions(
        select.exclude, run, now=now, deployment_ids=deployment_ids, parents=parents
    )


def _ignored_filter(where: str, run: RunView, keys: list[str], version: str | None) -> str:
    state = run.state_name or run.state_type or "no state"
    return (
        f"{where}: the server returned run {run.name} ({run.id}, {state}),"
        f" which does not match select.{', select.'.join(keys)}: the server"
        f" (Prefect {version or 'unknown version'}) ignored or mis-read that filter."
    )


def new_plan_id() -> str:
    return uuid.uuid4().hex[:12]


async def plan_playbook(
    playbook: Playbook,
    client: PrefectClient,
    *,
    now: datetime | None = None,
    exclude: Collection[UUID] = (),
) -> Plan:
    """Read what the playbook selects and return the plan. Sends no write to the server."""
    moment = now or datetime.now(timezone.utc)
    observation = await observe(client, playbook, now=moment)
    with collection_paused():
        return make_plan(playbook, observation, plan_id=new_plan_id(), exclude=exclude)
