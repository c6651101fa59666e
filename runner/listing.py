"""List what each step of a playbook selects (``runner ls``): the runs a plan would select,
step by step, read page by page and handed on as each page comes, never all held at once.

The same selection as planning (:mod:`runner.observe`): the server's filter from
:func:`~runner.selection.build_query`, runner's own check of every run it returns
(:func:`~runner.observe.check_run`: a run failing a key the server was trusted with stops the
listing), exclusions, claims (a run selected by an earlier step is not selected by a later
one) and, for a step with ``limit``, its ``sort`` and ``limit``. The action is never looked
at, and only reads are sent.

Memory: a step without ``limit`` is handed on page by page, in the order it is read (run id,
descending); a step with ``limit`` N keeps its best N runs so far (a bounded heap) and is
handed on whole at its end, in its ``sort`` order. What grows with the number of runs is
ids only: the client's record of the runs it has read (each run once, however the pages
shift), and, for a playbook whose later steps need them, the ids earlier steps selected
(claims): about 100 bytes a run, never the runs themselves.

The rows as a table, JSON Lines or CSV: :class:`ListingWriter`.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TextIO, cast
from uuid import UUID

from runner.client import PrefectClient
from runner.errors import PlaybookError
from runner.loader import SELECT_OPTION, select_error
from runner.models import FlowRun
from runner.observe import READ_CONCURRENCY, Names, check_names, checked_views
from runner.plan import RunView
from runner.playbook import Playbook, Select
from runner.render import _printable, _tag, _time
from runner.selection import SORT_KEYS, Capabilities, ServerQuery, build_query
from runner.words import plural

#: What a run the server should not have returned leaves (the end of its error message).
STOPPED = "The listing stopped there; each run listed before it was checked and matches."
Format = Literal["table", "json", "csv"]


@dataclass(frozen=True, slots=True)
class StepStarted:
    """A step's listing begins (``index`` from 0)."""

    index: int
    name: str


@dataclass(frozen=True, slots=True)
class Rows:
    """Runs step ``index`` selects: a page of them (a step without ``limit``), or all of
    them in its ``sort`` order (a step with ``limit``)."""

    index: int
    name: str
    runs: tuple[RunView, ...]


@dataclass(frozen=True, slots=True)
class StepDone:
    """A step's listing ended: how many runs it selected, and what became of the others
    the server returned for it."""

    index: int
    name: str
    selected: int
    #: The runs the server returned for the step.
    read: int
    #: Returned, but failing a key runner applies itself (``dropped_by``: those keys).
    dropped: int
    dropped_by: tuple[str, ...]
    #: Each exclusion's label and how many of the matching runs it left out.
    excluded: tuple[tuple[str, int], ...]
    #: Matching, but selected by an earlier step.
    claimed: int
    #: Matching, but past the step's ``limit``.
    past_limit: int


@dataclass(frozen=True, slots=True)
class Capped:
    """The listing stopped after ``limit`` runs in all (``--limit``): more runs match."""

    limit: int


Listed = StepStarted | Rows | StepDone | Capped


class _Best:
    """The first ``size`` runs in a step's ``sort`` order among those offered: a heap whose
    top is the worst kept run, so memory stays at ``size`` runs."""

    def __init__(self, size: int, sort: str | None) -> None:
        self.size = size
        self.key = SORT_KEYS[sort or "EXPECTED_START_TIME_ASC"]
        self.heap: list[_Reversed] = []
        self.offered = 0

    def offer(self, run: RunView) -> None:
        self.offered += 1
        item = _Reversed(self.key(run), run)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, item)
        elif self.size and item.key < self.heap[0].key:
            heapq.heapreplace(self.heap, item)

    def best(self) -> list[RunView]:
        return [item.run for item in sorted(self.heap, reverse=True)]


class _Reversed:
    """A heap item ordered worst first (``heapq`` keeps the smallest on top)."""

    __slots__ = ("key", "run")

    def __init__(self, key: tuple[object, ...], run: RunView) -> None:
        self.key = key
        self.run = run

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.key < self.key)


async def _deployment_ids(client: PrefectClient, playbook: Playbook) -> dict[str, UUID]:
    """:func:`~runner.observe.check_names`; an ad-hoc selection's problems at its keys."""
    try:
        return await check_names(client, playbook)
    except PlaybookError as exc:
        if playbook.path == SELECT_OPTION:
            raise select_error(exc.problems) from None
        raise


async def list_selections(
    client: PrefectClient,
    playbook: Playbook,
    *,
    now: datetime | None = None,
    limit: int | None = None,
) -> AsyncGenerator[Listed, None]:
    """What each step of ``playbook`` selects, as a plan made ``now`` would select it.

    Every flow, deployment, work pool and work queue the playbook names is checked first
    (:class:`PlaybookError`, before any run is read). Then, step by step: a
    :class:`StepStarted`, the :class:`Rows` it selects as they are read, a
    :class:`StepDone`. With ``limit``, at most that many runs in all: where more match, the
    listing ends with :class:`Capped` (found at the first run past them). A run the server
    should not have returned raises :class:`~runner.errors.SelectionError` where it is
    found (rows handed on before stay handed on). Sends only reads.
    """
    moment = now or datetime.now(timezone.utc)
    info = await client.server_info()
    capabilities = Capabilities.for_version(info.version)
    deployment_ids = await _deployment_ids(client, playbook)
    names = Names(client)
    claimed: set[int] = set()  # run ids as ints: half the memory of UUIDs
    cap = _Cap(limit)
    last = len(playbook.steps) - 1
    for index, step in enumerate(playbook.steps):
        if step.target != "flow_runs":
            continue  # deployments, work pools, work queues: runner plan shows them
        select = step.select
        yield StepStarted(index=index, name=step.name)
        sq = build_query(
            select,
            now=moment,
            deployment_ids=[deployment_ids[n] for n in select.deployments],
            capabilities=capabilities,
        )
        best = _Best(select.limit, select.sort) if select.limit is not None else None
        counts = _Counts(select)
        where = _where(playbook, index)
        if sq.query is not None:
            # An async generator: closed at once when the listing stops early (--limit).
            pages = cast(
                AsyncGenerator[list[FlowRun], None],
                client.iter_flow_runs(sq.query, concurrency=READ_CONCURRENCY),
            )
            async with contextlib.aclosing(pages):
                async for page in pages:
                    checked = await checked_views(
                        client,
                        names,
                        page,
                        select,
                        sq,
                        keep_parameters=True,
                        where=where,
                        now=moment,
                        deployment_ids=deployment_ids,
                        version=info.version,
                        outcome=STOPPED,
                    )
                    kept: list[RunView] = []
                    for view, excluded in checked:
                        if not counts.selects(view, excluded, claimed):
                            continue
                        if best is not None:
                            best.offer(view)
                        else:
                            kept.append(view)
                    if not kept:
                        continue
                    if index < last:
                        claimed.update(v.id.int for v in kept)
                    counts.selected += len(kept)
                    shown = cap.take(kept)
                    if shown:
                        yield Rows(index=index, name=step.name, runs=shown)
                    if cap.reached:
                        yield Capped(limit=cap.limit)
                        return
        if best is not None:
            chosen = best.best()
            counts.past_limit = best.offered - len(chosen)
            counts.selected = len(chosen)
            if index < last:
                claimed.update(v.id.int for v in chosen)
            shown = cap.take(chosen)
            if shown:
                yield Rows(index=index, name=step.name, runs=shown)
            if cap.reached:
                yield Capped(limit=cap.limit)
                return
        yield counts.done(index, step.name, sq)


class _Cap:
    """``--limit``: at most ``limit`` runs in all. Reached at the first run past them, so a
    listing of exactly ``limit`` runs ends as an uncapped one does."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit or 0
        self.remaining = limit
        self.reached = False

    def take(self, runs: list[RunView]) -> tuple[RunView, ...]:
        if self.remaining is None:
            return tuple(runs)
        shown = tuple(runs[: self.remaining])
        self.remaining -= len(shown)
        self.reached = len(runs) > len(shown)
        return shown


def _where(playbook: Playbook, index: int) -> str:
    if playbook.path == SELECT_OPTION:
        return SELECT_OPTION
    return f"steps[{index}] ({playbook.steps[index].name!r})"


class _Counts:
    """What became of the runs the server returned for one step."""

    def __init__(self, select: Select) -> None:
        self.read = 0
        self.dropped = 0
        self.excluded = {e.label: 0 for e in select.exclude}
        self.claimed = 0
        self.selected = 0
        self.past_limit = 0

    def selects(self, view: RunView, excluded: list[str] | None, claimed: set[int]) -> bool:
        """Whether the step selects ``view`` (before its ``limit``), counting why not."""
        self.read += 1
        if excluded is None:
            self.dropped += 1
            return False
        for label in excluded:
            self.excluded[label] += 1
        if excluded:
            return False
        if view.id.int in claimed:
            self.claimed += 1
            return False
        return True

    def done(self, index: int, name: str, sq: ServerQuery) -> StepDone:
        return StepDone(
            index=index,
            name=name,
            selected=self.selected,
            read=self.read,
            dropped=self.dropped,
            dropped_by=tuple(sorted(sq.loose)),
            excluded=tuple(self.excluded.items()),
            claimed=self.claimed,
            past_limit=self.past_limit,
        )


# -- writing -------------------------------------------------------------------------------

#: The fields of a listed run, in the order of the JSON objects and the CSV columns.
FIELDS = (
    "step",
    "step_name",
    "id",
    "name",
    "flow",
    "deployment",
    "deployment_id",
    "state_type",
    "state_name",
    "state_since",
    "expected_start",
    "next_scheduled_start",
    "start",
    "end",
    "created",
    "tags",
    "work_pool",
    "work_queue",
    "parent_task_run_id",
    "parameters",
)
_TABLE_HEADERS = (
    "id",
    "name",
    "flow/deployment",
    "state",
    "expected start",
    "start",
    "end",
    "tags",
)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def run_fields(index: int, step_name: str, run: RunView) -> dict[str, Any]:
    """A listed run as JSON: :data:`FIELDS` (``step`` counts from 1, as plans number steps;
    times in UTC, ISO 8601)."""
    return {
        "step": index + 1,
        "step_name": step_name,
        "id": str(run.id),
        "name": run.name,
        "flow": run.flow,
        "deployment": run.deployment,
        "deployment_id": str(run.deployment_id) if run.deployment_id else None,
        "state_type": run.state_type,
        "state_name": run.state_name,
        "state_since": _iso(run.state_since),
        "expected_start": _iso(run.expected_start),
        "next_scheduled_start": _iso(run.next_scheduled_start),
        "start": _iso(run.start),
        "end": _iso(run.end),
        "created": _iso(run.created),
        "tags": list(run.tags),
        "work_pool": run.work_pool,
        "work_queue": run.work_queue,
        "parent_task_run_id": str(run.parent_task_run_id) if run.parent_task_run_id else None,
        "parameters": run.parameters if run.parameters is not None else {},
    }


def _table_cells(run: RunView) -> tuple[str, ...]:
    cells = (
        str(run.id),
        run.name,
        run.deployment or run.flow,
        run.state_name or run.state_type or "-",
        _time(run.expected_start),
        _time(run.start),
        _time(run.end),
        ", ".join(_tag(t) for t in run.tags) if run.tags else "-",
    )
    return tuple(_printable(cell) for cell in cells)


def step_footer(done: StepDone) -> str:
    """How many runs a step selected, and why the others it read were not."""
    parts = []
    if done.dropped:
        keys = " or select.".join(done.dropped_by)
        which = "it" if len(done.dropped_by) == 1 else "these"
        parts.append(f"{done.dropped} not matching select.{keys} (runner applies {which} itself)")
    for label, count in done.excluded:
        parts.append(
            f"{count} left out by select.{label}" if count else f"select.{label} matched none"
        )
    if done.claimed:
        parts.append(f"{done.claimed} selected by an earlier step")
    if done.past_limit:
        parts.append(f"{done.past_limit} past its limit")
    shown = f"{plural(done.selected, 'run')} selected"
    return f"{shown} (read {done.read}: {'; '.join(parts)})" if parts else shown


#: Fields written by runner or the playbook's author, not run data: as they are.
_OURS = frozenset({"step", "step_name"})
#: What a spreadsheet reads as the start of a formula in a cell.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    """A CSV cell as a spreadsheet should take it: text with control characters escaped (as
    the table does), and text that would start a formula (a run named ``=HYPERLINK(..)``)
    led by a ``'``, as OWASP advises; numbers and the JSON of tags and parameters as they
    are."""
    if not isinstance(value, str):
        return value
    text = _printable(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class ListingWriter:
    """Writes :class:`Listed` events to ``out`` as they come, flushing after each page.

    - ``table``: per step a title (unless ``titles`` is false), a header and a line a run
      (control characters escaped), then how many runs it selected and why others were not.
      Column widths come from the step's first page; a longer cell later widens its row.
    - ``json``: JSON Lines, one object a run (:data:`FIELDS`).
    - ``csv``: a header row, then a row a run (:data:`FIELDS`; tags and parameters as JSON,
      a missing value empty).
    """

    def __init__(self, fmt: Format, out: TextIO, *, titles: bool = True) -> None:
        self.fmt = fmt
        self.out = out
        self.titles = titles
        self.widths: list[int] | None = None
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None

    def __call__(self, event: Listed) -> None:
        handler: Callable[[Any], None] = getattr(self, f"_{self.fmt}")
        handler(event)
        self.out.flush()

    def _json(self, event: Listed) -> None:
        if isinstance(event, Rows):
            for run in event.runs:
                self.out.write(json.dumps(run_fields(event.index, event.name, run)) + "\n")

    def _csv(self, event: Listed) -> None:
        assert self.csv is not None
        if isinstance(event, StepStarted) and event.index == 0:
            self.csv.writerow(FIELDS)  # once the names are checked: no header before an error
        if isinstance(event, Rows):
            for run in event.runs:
                fields = run_fields(event.index, event.name, run)
                fields["tags"] = json.dumps(fields["tags"], ensure_ascii=False)
                fields["parameters"] = json.dumps(fields["parameters"], ensure_ascii=False)
                self.csv.writerow(
                    [
                        ""
                        if fields[k] is None
                        else fields[k]
                        if k in _OURS
                        else _csv_cell(fields[k])
                        for k in FIELDS
                    ]
                )

    def _table(self, event: Listed) -> None:
        if isinstance(event, StepStarted):
            self.widths = None
            if self.titles:
                self.out.write(f"Step {event.index + 1}: {_printable(event.name)}\n")
        elif isinstance(event, Rows):
            rows = [_table_cells(run) for run in event.runs]
            if self.widths is None:
                self.widths = [
                    max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_TABLE_HEADERS)
                ]
                self._line(_TABLE_HEADERS)
            for row in rows:
                self._line(row)
        elif isinstance(event, StepDone):
            self.out.write(f"  {step_footer(event)}\n\n")

    def _line(self, cells: Sequence[str]) -> None:
        assert self.widths is not None
        last = len(cells) - 1
        padded = [c if i == last else c.ljust(self.widths[i]) for i, c in enumerate(cells)]
        self.out.write("  " + "  ".join(padded) + "\n")
