"""Keyset paging: a selection's runs read page after page by expected start time, each page
asking for the runs after the last one read rather than for an offset.

Pure: :class:`Keyset` says what to ask next from the runs read so far; the client sends it
(:meth:`runner.client.PrefectClient.iter_flow_runs`). An offset page makes the server skip
every earlier row (a read grows with the square of the history) and shifts when runs are
added or deleted meanwhile (a run skipped or read twice); a keyset page costs the same
wherever it starts, and a run present for the whole read is read exactly once, whatever else
is written meanwhile.

How, given what Prefect's flow-run filter has (the same on 2.20 and 3.x): a sort by
``expected_start_time``, an inclusive ``expected_start_time: {after_, before_}``, and
``id: {any_, not_any_}``; no range on ids, no tie-break on the server's sort (runs sharing one
time come back in any order), no ``is_null_`` on the expected start.

- **By time, ties left out by id.** Each page asks for the runs from the last time read on
  (inclusive), less the ids already read at exactly that time. Runs sharing one time across
  pages are so neither skipped nor doubled, in whatever order the server gives them.
- **One time shared by more runs than that list may hold** (:data:`MAX_EXCLUDED`): that time
  alone, sorted by id, by offset, each page after the first overlapping the one before by a
  run: it must begin at or above the last id read, else a run deleted there meanwhile moved
  the offset on and the read steps back a page (:data:`MAX_BACKOFFS`); then on from the next
  microsecond.
- **A page shorter than asked ends the read only once the server has filled one** as large:
  a server or proxy may cap pages below the size asked without saying so, and a page that
  came back full shows the cap is no lower. Until then the read goes on from the page's last
  run and ends on an empty page. A page longer than asked, or naming a run twice, is refused.
- **Runs without an expected start** (Prefect's API makes none; a database may hold them) match
  no time bound, and sort first one way and last the other (SQLite first ascending,
  PostgreSQL first descending). Two one-run reads, one each way, find them; then they are read
  in the direction that puts them first, less the ids already read, after the timed ones.
  A selection that bounds the expected start has none and skips this. More of them than
  :data:`MAX_EXCLUDED`: the rest of the selection is read by offset (``Phase.OFFSET``).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from uuid import UUID

from runner.filters import AnyIds, FlowRunFilter, FlowRunQuery, FlowRunSort, TimeWindow

#: Bounds that leave out the runs without an expected start and nothing else.
EARLIEST = datetime(1, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc)
#: The server keeps times to the microsecond: the least step past one.
TICK = timedelta(microseconds=1)
#: The most run ids one page's request leaves out by id (its body then ~200 kB; SQLite and
#: PostgreSQL both take a list of this length).
MAX_EXCLUDED = 5_000
#: The most times a read of one such time steps back a page (runs deleted there meanwhile
#: moved the offset on) before it gives up.
MAX_BACKOFFS = 100

#: A read with several pages in flight cuts its time span in slices of about this many pages
#: (from a count), at most :data:`MAX_SLICES` of them.
PAGES_PER_SLICE = 8
MAX_SLICES = 256

ASC = FlowRunSort.EXPECTED_START_TIME_ASC
DESC = FlowRunSort.EXPECTED_START_TIME_DESC


class Key(NamedTuple):
    """What paging needs of a run: its id and expected start."""

    id: UUID
    time: datetime | None


class PagingError(Exception):
    """A page contradicts the request it answers (the server ignored a filter or the sort)."""


class Phase(enum.Enum):
    TIMES = "times"  # by time, from the last one read on, ties left out by id
    CLUSTER = "cluster"  # one time shared by more runs than MAX_EXCLUDED: by id, offset
    NULLS = "nulls"  # the runs without an expected start
    OFFSET = "offset"  # too many of those: the rest by offset (the client's old path)
    DONE = "done"


@dataclass(frozen=True)
class PageRequest:
    """One ``POST /flow_runs/filter``: the filter, sort, page size and offset."""

    query: FlowRunQuery
    sort: FlowRunSort
    limit: int
    offset: int = 0


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def page_keys(raw: Any) -> list[Key] | None:
    """Each run's id and expected start, from a page's JSON as the server sent it (before the
    runs are parsed: the next page can be asked for at once); None if it is not a list of
    runs that have them (parsing the page then says what is wrong)."""
    if not isinstance(raw, list):
        return None
    keys: list[Key] = []
    for item in raw:
        if not isinstance(item, dict):
            return None
        run_id, stamp = item.get("id"), item.get("expected_start_time")
        if not isinstance(run_id, str) or not (stamp is None or isinstance(stamp, str)):
            return None
        try:
            keys.append(Key(UUID(run_id), None if stamp is None else _aware(_parse(stamp))))
        except ValueError:
            return None
    return keys


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _with(
    query: FlowRunQuery,
    *,
    exclude: tuple[UUID, ...] = (),
    window: TimeWindow | None = None,
) -> FlowRunQuery:
    """``query`` less the runs ``exclude`` names, within ``window`` (replacing its own)."""
    runs = query.flow_runs or FlowRunFilter()
    update: dict[str, Any] = {}
    if exclude:
        ids = runs.id or AnyIds()
        update["id"] = ids.model_copy(update={"not_any_": (*(ids.not_any_ or ()), *exclude)})
    if window is not None:
        update["expected_start_time"] = window
    if not update:
        return query
    return query.model_copy(update={"flow_runs": runs.model_copy(update=update)})


@dataclass
class Keyset:
    """Where a keyset read of ``query`` is, ``descending`` or not, ``size`` runs a page."""

    query: FlowRunQuery
    descending: bool
    size: int
    phase: Phase = Phase.TIMES
    #: The last time read, and the ids read at exactly that time.
    at: datetime | None = None
    at_ids: set[UUID] = field(default_factory=set)
    #: In a cluster: the ids left out (those read before it began) and the offset.
    cluster_excluded: tuple[UUID, ...] = ()
    offset: int = 0
    #: In a cluster: the lowest id read without a gap from the top (``ID_DESC``), and how
    #: often a page did not join on to it (runs deleted above it meanwhile).
    cluster_last: UUID | None = None
    cluster_backoffs: int = 0
    #: The sort that puts runs without an expected start first, once a probe found one.
    nulls_sort: FlowRunSort | None = None
    null_ids: list[UUID] = field(default_factory=list)
    #: The largest page the server answered in full: it caps pages no lower, so a page asked
    #: for at most this many that comes back shorter holds every run left (0: none yet).
    filled: int = 0
    #: What the last request asked for, to check its answer against.
    _low: datetime | None = None
    _high: datetime | None = None
    _excluded: frozenset[UUID] = frozenset()
    _offset: int = 0

    def _bounds(self) -> tuple[datetime | None, datetime | None]:
        window = self.query.flow_runs.expected_start_time if self.query.flow_runs else None
        if window is None:
            return None, None
        low = _aware(window.after_) if window.after_ is not None else None
        high = _aware(window.before_) if window.before_ is not None else None
        return low, high

    def probes(self) -> list[PageRequest]:
        """The one-run reads, one each way, that find runs without an expected start; none
        when the query bounds the expected start (no such run matches a bound)."""
        if self._bounds() != (None, None):
            return []
        return [PageRequest(self.query, ASC, 1), PageRequest(self.query, DESC, 1)]

    def probed(self, sort: FlowRunSort, keys: list[Key]) -> None:
        """A probe's answer: a run without an expected start first means they come first
        in ``sort`` on this server."""
        if keys and keys[0].time is None and self.nulls_sort is None:
            self.nulls_sort = sort

    def request(self, want: int | None = None) -> PageRequest | None:
        """The next page to read (at most ``want`` runs), or None when the read is over."""
        limit = self.size if want is None else min(self.size, want)
        if limit <= 0 or self.phase in (Phase.DONE, Phase.OFFSET):
            return None
        if self.phase is Phase.NULLS:
            assert self.nulls_sort is not None
            self._low = self._high = None
            self._excluded = frozenset(self.null_ids)
            query = _with(self.query, exclude=tuple(self.null_ids))
            return PageRequest(query, self.nulls_sort, limit)
        low, high = self._bounds()
        if self.phase is Phase.CLUSTER:
            assert self.at is not None
            self._low = self._high = self.at
            self._excluded = frozenset(self.cluster_excluded)
            window = TimeWindow(after_=self.at, before_=self.at)
            query = _with(self.query, exclude=self.cluster_excluded, window=window)
            # One run of overlap: the page must begin at or above the last id read, else runs
            # deleted above it meanwhile shifted the offset past runs never read.
            # (Pages of one run cannot overlap: read without, quiet-server exact only.)
            offset = self.offset
            if self.cluster_last is not None and self.size > 1 and offset > 0:
                offset, limit = offset - 1, min(self.size, limit + 1)
            self._offset = offset
            return PageRequest(query, FlowRunSort.ID_DESC, limit, offset)
        if self.descending:
            high = min(high or LATEST, self.at or LATEST)
        else:
            low = max(low or EARLIEST, self.at or EARLIEST)
        if low is not None and high is not None and low > high:
            self.phase = Phase.DONE
            return None
        self._low, self._high = low, high
        self._excluded = frozenset(self.at_ids)
        window = TimeWindow(after_=low, before_=high)
        query = _with(self.query, exclude=tuple(self.at_ids), window=window)
        return PageRequest(query, DESC if self.descending else ASC, limit)

    def advance(self, keys: list[Key], sent: int) -> int:
        """Take the answer to the last :meth:`request` (``sent``: the page size it asked
        for): how many of its runs, from the first, belong to the selection (the rest are
        past the runs without an expected start). Raises :class:`PagingError` when the page
        contradicts its request.

        A page shorter than asked ends the read only when the server has answered a page
        at least as large in full (a server or proxy may cap pages below the size asked
        without saying so): else the read ends on an empty page, or on a page that goes past
        what it reads (the runs without an expected start)."""
        if len(keys) > sent:
            raise PagingError(f"the page has {len(keys)} runs, more than the {sent} asked for")
        named: set[UUID] = set()
        for key in keys:
            if key.id in self._excluded:
                raise PagingError(f"run {key.id} was read again although the page left it out")
            if key.id in named:
                raise PagingError(f"run {key.id} is twice in the page")
            named.add(key.id)
        if keys and len(keys) == sent:
            self.filled = max(self.filled, sent)
        if self.phase is Phase.NULLS:
            return self._advance_nulls(keys, sent)
        self._check_times(keys)
        if self.phase is Phase.CLUSTER:
            self._advance_cluster(keys)
            return len(keys)
        if keys:
            last = keys[-1].time
            if last != self.at:
                self.at, self.at_ids = last, set()
            self.at_ids.update(k.id for k in keys if k.time == last)
        if not keys or self._last_page(keys, sent):
            self.phase = Phase.NULLS if self.nulls_sort is not None else Phase.DONE
        elif len(self.at_ids) > MAX_EXCLUDED:
            self.phase, self.offset, self.cluster_last = Phase.CLUSTER, 0, None
            self.cluster_excluded = tuple(self.at_ids)
        return len(keys)

    def _last_page(self, keys: list[Key], sent: int) -> bool:
        """Whether a page holds every run left to read: shorter than asked, where the server
        has filled a page at least as large (so no cap cut it)."""
        return len(keys) < sent <= self.filled

    def _check_times(self, keys: list[Key]) -> None:
        previous: datetime | None = None
        for key in keys:
            time = key.time
            if time is None or (self._low is not None and time < self._low):
                raise PagingError(f"run {key.id} is before the page it was asked for")
            if self._high is not None and time > self._high:
                raise PagingError(f"run {key.id} is past the page it was asked for")
            backwards = previous is not None and (
                time > previous if self.descending else time < previous
            )
            if backwards and self.phase is not Phase.CLUSTER:
                raise PagingError(f"run {key.id} is out of the page's order")
            previous = time

    def _advance_cluster(self, keys: list[Key]) -> None:
        """A page of the time read by id: checked in id order; joined on to the ids read
        before (it begins at or above the last of them), or the walk steps back a page (runs
        deleted above meanwhile moved the offset on); the time is read through when a joined
        page has no run below the last id read."""
        for before, key in itertools.pairwise(keys):
            if key.id >= before.id:
                raise PagingError(f"run {key.id} is out of the page's order by id")
        last, at = self.cluster_last, self._offset
        if self.size < 2:  # no overlap: the end is an empty page
            last = None
        if last is not None and at > 0 and not (keys and keys[0].id >= last):
            self._step_back()
            self.offset = max(1, at - self.size + 1)  # the page before, with its overlap
            return
        if last is not None and not any(key.id < last for key in keys) and len(keys) > 1:
            self._step_back()  # a page of runs read before (after a step back): on
            self.offset = at + len(keys)
            return
        if not any(last is None or key.id < last for key in keys):
            # Nothing past the last id read (the page is at most the overlap run).
            assert self.at is not None  # that time is read through: on from the next tick
            self.at = self.at - TICK if self.descending else self.at + TICK
            self.at_ids = set()
            self.cluster_last, self.cluster_backoffs = None, 0
            self.phase = Phase.TIMES
            return
        if self.size > 1:
            self.cluster_last = keys[-1].id
        self.offset = at + len(keys)

    def _step_back(self) -> None:
        self.cluster_backoffs += 1
        if self.cluster_backoffs > MAX_BACKOFFS:
            raise PagingError(
                f"the runs at {self.at} kept moving while read by offset (deleted meanwhile)"
            )

    def _advance_nulls(self, keys: list[Key], sent: int) -> int:
        leading = 0
        while leading < len(keys) and keys[leading].time is None:
            leading += 1
        self.null_ids.extend(k.id for k in keys[:leading])
        if leading < len(keys) or not keys or self._last_page(keys, sent):
            self.phase = Phase.DONE
        elif len(self.null_ids) > MAX_EXCLUDED:
            self.phase = Phase.OFFSET
        return leading


def bounds_probes(query: FlowRunQuery) -> list[PageRequest]:
    """The one-run reads of the earliest and the latest expected start ``query`` matches."""
    probe = Keyset(query, descending=False, size=1)
    low, high = probe._bounds()
    earliest = TimeWindow(after_=low or EARLIEST, before_=high)
    latest = TimeWindow(after_=low, before_=high or LATEST)
    return [
        PageRequest(_with(query, window=earliest), ASC, 1),
        PageRequest(_with(query, window=latest), DESC, 1),
    ]


def slices(
    query: FlowRunQuery, size: int, *, first: datetime, last: datetime, count: int
) -> list[Keyset]:
    """Cursors that read ``query``'s timed runs in order, a slice of time each, so that
    several can be read at once: ``first`` to ``last`` cut in equal spans, about
    :data:`PAGES_PER_SLICE` pages each (``count`` runs in all). The first slice is open
    before ``first`` and the last after ``last``: a run given a time out there meanwhile
    falls in one. Each time is in exactly one slice."""
    parts = max(1, min(MAX_SLICES, -(-count // (size * PAGES_PER_SLICE))))
    span = last - first
    cuts = sorted({first + span * i / parts for i in range(1, parts)} - {first})
    low, high = Keyset(query, descending=False, size=size)._bounds()
    starts: list[datetime | None] = [low, *cuts]
    ends: list[datetime | None] = [*(c - TICK for c in cuts), high]
    return [
        Keyset(_with(query, window=TimeWindow(after_=a, before_=b)), descending=False, size=size)
        for a, b in zip(starts, ends, strict=True)
    ]


def nulls(query: FlowRunQuery, size: int, sort: FlowRunSort) -> Keyset:
    """A cursor that reads ``query``'s runs without an expected start (first in ``sort``)."""
    return Keyset(query, descending=False, size=size, phase=Phase.NULLS, nulls_sort=sort)
