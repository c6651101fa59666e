"""Keyset paging against a real server: runs sharing one time across pages, runs without an
expected start, a time shared by more runs than a request may leave out, writers adding and
deleting runs during the read, and plans that are the same read either way. Pages of 50 (the
client's ``page_size``), runs seeded in the server's database. Runs on Prefect 3.x and
(marker prefect2) 2.x."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import anyio
import httpx
import pytest

from runner import paging
from runner.client import PrefectClient
from runner.errors import ServerError
from runner.filters import AnyIds, FlowFilter, FlowRunFilter, FlowRunQuery, FlowRunSort, TimeWindow
from runner.loader import load_text
from runner.models import FlowRun
from runner.observe import plan_playbook
from runner.settings import ConnectionSettings
from tests.support.prefect_server import PrefectServer
from tests.support.seed import Seeder, unique
from tests.support.seed_db import clone_runs_at, remove_runs_of_flow

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]

PAGE = 50


class Recorder(httpx.AsyncBaseTransport):
    """The real server; keeps every filter request's body and how many times each run came
    back in a page it is read from (one-run reads left out), and calls ``on_filter`` (if set) before
    sending a filter request."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[dict[str, Any]] = []
        self.returned: Counter[str] = Counter()
        #: Each page's size asked and runs answered (one-run reads left out).
        self.pages: list[tuple[int, int]] = []
        self.on_filter: Any = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not (request.method == "POST" and request.url.path.endswith("/flow_runs/filter")):
            return await self.inner.handle_async_request(request)
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.on_filter is not None:
            self.on_filter()
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        if response.status_code == 200 and body.get("limit", 0) > 1:
            # A page by time, or one of runs without a time (past them: not read from it).
            timed = "expected_start_time" in (body.get("flow_runs") or {})
            runs = json.loads(content)
            self.pages.append((body["limit"], len(runs)))
            self.returned.update(r["id"] for r in runs if timed or r["expected_start_time"] is None)
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        }
        return httpx.Response(response.status_code, headers=headers, content=content)


Seed = Callable[[list[timedelta | None]], tuple[dict[str, Any], list[str]]]


@pytest.fixture
def seed(prefect_server: PrefectServer, seeder: Seeder) -> Iterator[Seed]:
    """Makes a new flow with a run an hour from now (through the API; the first id) and one
    cloned from it in the database for each of the shifts given (its time moved by it, or
    none). The runs are removed afterwards: the session's server stays small."""
    db = prefect_server.home / "prefect.db"
    flows: list[dict[str, Any]] = []

    def make(shifts: list[timedelta | None]) -> tuple[dict[str, Any], list[str]]:
        flow = seeder.flow(unique("paging"))
        flows.append(flow)
        template = seeder.run(flow, "Scheduled")
        clones = clone_runs_at(db, template["id"], shifts, name_prefix=unique("p"))
        return flow, [template["id"], *clones]

    yield make
    for flow in flows:
        remove_runs_of_flow(db, flow["id"])


@pytest.fixture(params=[1, 4], ids=["one-in-flight", "four-slices-at-once"])
def window(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Pages in flight: one (a page asked for while the one before is parsed), or four
    (the time span in slices read at once, here of about a page each: many of them)."""
    if request.param > 1:
        monkeypatch.setattr(paging, "PAGES_PER_SLICE", 1)
    return int(request.param)


def clusters(sizes: list[int], *, start: int = 0) -> list[timedelta | None]:
    """Runs sharing one time in groups of ``sizes``, one second apart."""
    return [timedelta(seconds=start + i) for i, size in enumerate(sizes) for _ in range(size)]


def of_flow(flow: dict[str, Any]) -> FlowRunQuery:
    return FlowRunQuery(flows=FlowFilter(id=AnyIds(any_=(UUID(flow["id"]),))))


async def read(client: PrefectClient, query: FlowRunQuery, **kwargs: Any) -> list[FlowRun]:
    return [run async for page in client.iter_flow_runs(query, **kwargs) for run in page]


def times_in_order(runs: list[FlowRun], *, descending: bool = False) -> bool:
    """Timed runs in order of time, then the runs without one."""
    timed = [r.expected_start_time for r in runs if r.expected_start_time is not None]
    untimed_after = all(
        r.expected_start_time is None for r in runs[len(timed) :]
    )  # every untimed run after every timed one
    return untimed_after and timed == sorted(timed, reverse=descending)


# A cluster of each size around a page of 50: within one page, exactly one, one more, two
# pages and more; and more runs without an expected start than fit one page.
SIZES = [1, 3, 49, 50, 51, 120, 7, 2]
UNTIMED = 60


async def test_every_run_once_across_ties_and_runs_without_a_time(
    settings: ConnectionSettings, seed: Seed, window: int
) -> None:
    shifts = clusters(SIZES) + [None] * UNTIMED
    flow, ids = seed(shifts)
    recorder = Recorder()
    async with PrefectClient(settings, transport=recorder, page_size=PAGE) as client:
        runs = await read(client, of_flow(flow), concurrency=window)
        assert Counter(str(r.id) for r in runs) == Counter(ids)
        assert recorder.returned == Counter(ids)  # by the pages themselves, not only the client
        assert times_in_order(runs)
        if window > 1:  # in slices, each its own span of time
            spans = {
                b["flow_runs"]["expected_start_time"].get("before_")
                for b in recorder.bodies
                if b["limit"] > 1 and "expected_start_time" in b.get("flow_runs", {})
            }
            assert len(spans) > 4
        assert sum(r.expected_start_time is None for r in runs) == UNTIMED
        # By keyset: never an offset, never a page past the server's (or the client's) size.
        assert {b["offset"] for b in recorder.bodies} == {0}
        assert max(b["limit"] for b in recorder.bodies) == PAGE
        # Newest first: the same runs.
        newest = await read(client, of_flow(flow), sort=FlowRunSort.EXPECTED_START_TIME_DESC)
        assert Counter(str(r.id) for r in newest) == Counter(ids)
        assert times_in_order(newest, descending=True)
        # With a limit: that many, each once, the earliest (ties at the cut in any order).
        first = await read(client, of_flow(flow), limit=120, concurrency=window)
        assert len({r.id for r in first}) == len(first) == 120
        assert [r.expected_start_time for r in first] == [r.expected_start_time for r in runs][:120]
        # The old path, by offset and id, reads the same runs (nothing is written meanwhile).
        by_id = await read(client, of_flow(flow), sort=FlowRunSort.ID_DESC, concurrency=4)
        assert sorted(r.id for r in by_id) == sorted(r.id for r in runs)


@pytest.mark.parametrize("width", [1, 4])
async def test_a_short_page_after_a_full_one_ends_the_read_without_an_empty_page(
    settings: ConnectionSettings, seed: Seed, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    """333 runs, pages of 50: read by one cursor, six full pages and one of 33; in four
    slices of about 83 runs (two pages a slice), a full page and a short one each. No page
    comes back empty: the short page after a full one is the end."""
    monkeypatch.setattr(paging, "PAGES_PER_SLICE", 2)
    flow, ids = seed([timedelta(seconds=i) for i in range(1, 333)])
    recorder = Recorder()
    async with PrefectClient(settings, transport=recorder, page_size=PAGE) as client:
        runs = await read(client, of_flow(flow), concurrency=width)
    assert Counter(str(r.id) for r in runs) == Counter(ids)
    assert len(recorder.pages) == (7 if width == 1 else 8)
    assert all(answered for _, answered in recorder.pages)


async def test_past_the_id_list_a_time_is_read_by_id_and_timeless_runs_by_offset(
    settings: ConnectionSettings, seed: Seed, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    monkeypatch.setattr(paging, "MAX_EXCLUDED", 70)
    shifts = clusters([5, 230, 4]) + [None] * 130
    flow, ids = seed(shifts)
    recorder = Recorder()
    async with PrefectClient(settings, transport=recorder, page_size=PAGE) as client:
        runs = await read(client, of_flow(flow), concurrency=window)
    assert Counter(str(r.id) for r in runs) == Counter(ids)
    # The 230 runs at one time: once 70 are read, that time alone, by id and offset...
    cluster = [b for b in recorder.bodies if b["sort"] == "ID_DESC" and "flow_runs" in b]
    bound = cluster[0]["flow_runs"]["expected_start_time"]
    assert bound["after_"] == bound["before_"]
    # Each page after the first with one run of overlap (it must join on to the last id
    # read); the last page has only that run: the time is read through.
    offsets = [b["offset"] for b in cluster]  # 94 or 100 read first: 130 or 136 at it
    assert offsets[:3] == [0, 49, 98] and offsets[3] in (129, 135) and len(offsets) == 4
    # ...then the runs without a time, past 70 of them, by offset and id as before keyset.
    by_offset = [b for b in recorder.bodies if b["sort"] == "ID_DESC" and "flow_runs" not in b]
    assert sorted(b["offset"] for b in by_offset)[:2] == [0, 50]


class Churn:
    """Another writer: until stopped, deletes runs of ``doomed`` and adds runs at the
    seeded times, straight in the database."""

    def __init__(self, db: Path, template: str, doomed: list[str], times: list[timedelta]) -> None:
        self.db, self.template, self.times = db, template, times
        self.doomed = list(doomed)
        self.added: list[str] = []
        self.deleted: list[str] = []
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._random = random.Random(21)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            shifts: list[timedelta | None] = [self._random.choice(self.times) for _ in range(5)]
            added = clone_runs_at(self.db, self.template, shifts, name_prefix="churn")
            self.added += added
            self.doomed += added
            gone = [self.doomed.pop(self._random.randrange(len(self.doomed))) for _ in range(5)]
            connection = sqlite3.connect(self.db, timeout=60)
            try:
                with connection:
                    marks = ",".join("?" * len(gone))
                    connection.execute(
                        f"DELETE FROM flow_run_state WHERE flow_run_id IN ({marks})", gone
                    )
                    connection.execute(f"DELETE FROM flow_run WHERE id IN ({marks})", gone)
            finally:
                connection.close()
            self.deleted += gone
            self.writes += 1
            self._stop.wait(0.005)


async def test_writers_during_the_read_never_make_a_run_skipped_or_read_twice(
    settings: ConnectionSettings, seed: Seed, prefect_server: PrefectServer, window: int
) -> None:
    """A few thousand runs in clusters (and some without a time), read 50 a page while
    another writer adds and deletes runs at the same times: every run there for the whole
    read is read exactly once."""
    rng = random.Random(7)
    sizes = [rng.choice([1, 2, 5, 30, 60, 120]) for _ in range(90)]
    times = clusters(sizes)
    shifts: list[timedelta | None] = [*times, *[None] * 70]
    rng.shuffle(shifts)
    flow, ids = seed(shifts)
    doomed = rng.sample(ids, len(ids) // 5)  # deleted during the read, some of them
    distinct = sorted({t for t in times if t is not None})
    recorder = Recorder()
    writes_at_page: list[int] = []
    async with PrefectClient(settings, transport=recorder, page_size=PAGE) as client:
        with Churn(prefect_server.home / "prefect.db", ids[0], doomed, distinct) as churn:
            recorder.on_filter = lambda: writes_at_page.append(churn.writes)
            runs = await read(client, of_flow(flow), concurrency=window)
            during = churn.writes
    stable = set(ids) - set(doomed)
    counts = Counter(str(r.id) for r in runs)
    assert stable <= set(counts)  # none skipped
    assert max(counts.values()) == 1  # none twice
    assert max(recorder.returned.values()) == 1  # not even in the pages the client dropped
    assert set(counts) <= set(ids) | set(churn.added)
    # The writer did write while pages were read: between most of the pages.
    assert len(stable) > 2000 and during >= 10
    steps = sum(1 for a, b in itertools.pairwise(writes_at_page) if b > a)
    assert steps >= len(writes_at_page) // 4, (steps, len(writes_at_page))
    assert set(churn.deleted) & set(doomed)  # seeded runs were deleted mid-read


async def test_runs_deleted_behind_the_read_skip_offset_pages_but_not_keyset_ones(
    settings: ConnectionSettings, seed: Seed, prefect_server: PrefectServer
) -> None:
    """What keyset fixes: a writer deleting runs already read shifts every later offset
    page, so that runs never deleted are skipped. Deterministic: the first page's runs are
    deleted as soon as it is handed on."""
    async with PrefectClient(settings, page_size=PAGE) as client:
        for sort, skipped in ((None, 0), (FlowRunSort.ID_DESC, PAGE)):
            flow, ids = seed(clusters([40, 60, 80, 20]))
            pages = client.iter_flow_runs(of_flow(flow), sort=sort)
            first = [str(r.id) for r in await pages.__anext__()]
            seeder_db_delete(prefect_server.home / "prefect.db", first)
            rest = [str(r.id) for page in [p async for p in pages] for r in page]
            missing = set(ids) - set(first) - set(rest)
            assert len(missing) == skipped, sort
            assert len(rest) == len(set(rest))


def seeder_db_delete(db: Path, ids: list[str]) -> None:
    connection = sqlite3.connect(db, timeout=60)
    try:
        with connection:
            marks = ",".join("?" * len(ids))
            connection.execute(f"DELETE FROM flow_run_state WHERE flow_run_id IN ({marks})", ids)
            connection.execute(f"DELETE FROM flow_run WHERE id IN ({marks})", ids)
    finally:
        connection.close()


PLAYBOOK = """\
version: 1
name: keyset-vs-offset
guards: {{max_affected: 100000}}
steps:
  - name: newest 70
    select: {{flows: {flow}, sort: EXPECTED_START_TIME_DESC, limit: 70}}
    action: delete
  - name: oldest 45
    select: {{flows: {flow}, sort: EXPECTED_START_TIME_ASC, limit: 45}}
    action: delete
  - name: first 30 by name
    select: {{flows: {flow}, sort: NAME_ASC, limit: 30}}
    action: delete
  - name: the rest
    select: {{flows: {flow}}}
    action: delete
"""


async def test_a_plan_is_the_same_read_by_keyset_or_by_offset(
    settings: ConnectionSettings, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a quiet server, with ties across the limits' cuts and runs without a time."""
    monkeypatch.setattr(paging, "PAGES_PER_SLICE", 1)  # the plan reads in many slices
    flow, ids = seed(clusters([3, 60, 1, 55, 90, 2]) + [None] * 65)
    playbook = load_text(PLAYBOOK.format(flow=flow["name"]), name="k.yaml", env={})

    def shape(plan: Any) -> list[Any]:
        return [
            (s.name, s.selected, [(c.run.id, c.op, c.reason) for c in s.changes])
            for s in plan.steps
        ] + [plan.violations, plan.notes]

    moment = datetime.now().astimezone()
    async with PrefectClient(settings, page_size=PAGE) as client:
        keyset = await plan_playbook(playbook, client, now=moment)
        original = client.iter_flow_runs

        def by_offset(query: Any, **kwargs: Any) -> Any:
            return original(query, **{**kwargs, "sort": FlowRunSort.ID_DESC})

        monkeypatch.setattr(client, "iter_flow_runs", by_offset)
        offset = await plan_playbook(playbook, client, now=moment)
    assert shape(keyset) == shape(offset)
    assert [len(s.changes) for s in keyset.steps] == [70, 45, 30, len(ids) - 145]
    # The cut of the first step falls inside the 90 runs sharing its second newest time.
    assert len({c.run.expected_start for c in keyset.steps[0].changes}) == 2


class DropExclusions(httpx.AsyncBaseTransport):
    """A server that ignores ``flow_runs.id.not_any_`` (the real one, the field taken out)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/flow_runs/filter"):
            body = json.loads(request.content)
            (body.get("flow_runs") or {}).pop("id", None)
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            request = httpx.Request(request.method, request.url, headers=headers, json=body)
        return await self.inner.handle_async_request(request)


async def test_a_server_that_ignores_the_page_filter_stops_the_read(
    settings: ConnectionSettings, seed: Seed
) -> None:
    """Never an endless read, nor a run handed on twice: the page is checked against what
    it asked for."""
    flow, ids = seed(clusters([80]))
    async with PrefectClient(settings, transport=DropExclusions(), page_size=PAGE) as client:
        with pytest.raises(ServerError) as info:
            await read(client, of_flow(flow))
    message = str(info.value)
    run = message.split("run ")[1].split(" ")[0]
    assert run in ids
    assert message == (
        f"POST {settings.api_url}/flow_runs/filter: unexpected answer: run {run} was read again"
        " although the page left it out (the server did not filter or sort the page as asked)"
    )


async def test_the_next_page_is_asked_for_while_this_one_is_handed_on(
    settings: ConnectionSettings, seed: Seed
) -> None:
    """The overlap: once a page's answer is in, the next page is on its way, sent from the
    first page's last run, while the reader still holds the first."""
    flow, _ = seed(clusters([1] * 120))
    recorder = Recorder()
    async with PrefectClient(settings, transport=recorder, page_size=PAGE) as client:
        pages = cast(AsyncGenerator[list[FlowRun], None], client.iter_flow_runs(of_flow(flow)))
        first = await pages.__anext__()
        deadline = time.monotonic() + 30
        while len(recorder.bodies) < 4 and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        assert len(recorder.bodies) == 4  # two one-run reads, the first page, the next
        following = recorder.bodies[-1]["flow_runs"]
        last = first[-1]
        assert following["id"] == {"not_any_": [str(last.id)]}
        after = datetime.fromisoformat(following["expected_start_time"]["after_"])
        assert after == last.expected_start_time
        await pages.aclose()  # the reader stops: the page read ahead is dropped, quietly


async def test_a_selection_bounding_the_expected_start_is_paged_within_its_bounds(
    settings: ConnectionSettings, seed: Seed, seeder: Seeder
) -> None:
    """The page's bound and the selection's are one window; no run without a time can
    match it, so none is looked for."""
    flow, ids = seed(clusters([30, 70, 60, 40]) + [None] * 10)
    runs = {r["id"]: r for r in seeder.read_runs(ids)}
    start = datetime.fromisoformat(runs[ids[0]]["expected_start_time"])
    window = TimeWindow(after_=start + timedelta(seconds=1), before_=start + timedelta(seconds=2))
    query = of_flow(flow).model_copy(
        update={"flow_runs": FlowRunFilter(expected_start_time=window)}
    )
    recorder = Recorder()
    async with PrefectClient(settings, transport=recorder, page_size=PAGE) as client:
        got = await read(client, query)
    assert len(got) == len({r.id for r in got}) == 130  # the clusters at +1 s and +2 s
    assert all(b["limit"] == PAGE for b in recorder.bodies)  # no one-run reads
    assert {b["flow_runs"]["expected_start_time"]["before_"] for b in recorder.bodies} == {
        window.model_dump(mode="json")["before_"]
    }


# -- pages that contradict their request, without a server (paging is pure) -------------------


def _keys(*ints: int, at: datetime | None = None) -> list[paging.Key]:
    when = at or datetime(2030, 1, 1).astimezone()
    return [paging.Key(UUID(int=i), when) for i in ints]


def test_a_page_longer_than_asked_or_naming_a_run_twice_is_refused() -> None:
    cursor = paging.Keyset(FlowRunQuery(), descending=False, size=3)
    assert cursor.request() is not None
    with pytest.raises(paging.PagingError) as longer:
        cursor.advance(_keys(1, 2, 3, 4), 3)
    assert str(longer.value) == "the page has 4 runs, more than the 3 asked for"
    with pytest.raises(paging.PagingError) as twice:
        cursor.advance(_keys(1, 2, 1), 3)
    assert str(twice.value) == f"run {UUID(int=1)} is twice in the page"


def test_a_short_page_ends_nothing_an_empty_one_ends_the_read() -> None:
    """A page cut below the size asked (a proxy's cap) is read on from; only an empty
    page ends the read (one request more than trusting a short page)."""
    cursor = paging.Keyset(FlowRunQuery(), descending=False, size=3)
    assert cursor.request() is not None
    cursor.advance(_keys(1), 3)
    assert cursor.request() is not None  # on from the last time read
    cursor.advance([], 3)
    assert cursor.request() is None


def test_after_a_full_page_a_short_page_ends_the_read() -> None:
    """A page the server answered in full shows no cap below its size: a later page asked
    for at most as many that comes back shorter holds every run left (no empty page to
    confirm it). Asked for more than was ever answered in full, a short page ends nothing."""
    at = datetime(2030, 1, 1).astimezone()
    cursor = paging.Keyset(FlowRunQuery(), descending=False, size=3)
    assert cursor.request() is not None
    cursor.advance(_keys(1, 2, 3, at=at), 3)
    assert cursor.filled == 3
    assert cursor.request() is not None
    cursor.advance(_keys(4, 5, at=at + timedelta(seconds=1)), 3)
    assert cursor.request() is None and cursor.phase is paging.Phase.DONE

    capped = paging.Keyset(FlowRunQuery(), descending=False, size=3)
    assert capped.request(2) is not None
    capped.advance(_keys(1, 2, at=at), 2)  # full as asked (2): says nothing of a page of 3
    assert capped.request() is not None
    capped.advance(_keys(3, 4, at=at + timedelta(seconds=1)), 3)
    assert capped.request() is not None  # short of 3, never answered in full: read on


def test_after_a_full_page_a_short_page_of_runs_without_a_time_ends_them() -> None:
    cursor = paging.nulls(FlowRunQuery(), 3, FlowRunSort.EXPECTED_START_TIME_ASC)
    assert cursor.request() is not None
    cursor.advance([paging.Key(UUID(int=i), None) for i in (1, 2, 3)], 3)
    assert cursor.request() is not None
    assert cursor.advance([paging.Key(UUID(int=4), None)], 3) == 1
    assert cursor.request() is None


AT = datetime(2030, 1, 1).astimezone()


def _cluster(size: int = 3) -> paging.Keyset:
    cursor = paging.Keyset(FlowRunQuery(), descending=False, size=size)
    cursor.phase, cursor.at = paging.Phase.CLUSTER, AT
    return cursor


def test_a_cluster_page_out_of_id_order_is_refused() -> None:
    cursor = _cluster()
    assert cursor.request() is not None
    with pytest.raises(paging.PagingError) as info:
        cursor.advance(_keys(9, 10, 8, at=AT), 3)
    assert str(info.value) == f"run {UUID(int=10)} is out of the page's order by id"


def test_a_cluster_page_that_does_not_join_the_last_id_steps_back() -> None:
    """Pages after the first overlap by one run; one that begins below the last id read
    (runs deleted above it moved the offset on) is read again from a page before."""
    cursor = _cluster()
    at = AT
    assert (cursor.request() or pytest.fail()).offset == 0
    cursor.advance(_keys(90, 80, 70, at=at), 3)
    second = cursor.request() or pytest.fail()
    assert (second.offset, second.limit) == (2, 3)
    cursor.advance(_keys(50, 40, 30, at=at), 3)  # 70 not first: 60 may have been passed over
    assert (cursor.request() or pytest.fail()).offset == 0  # stepped back
    cursor.advance(_keys(80, 70, 60, at=at), 3)  # joined: 60 is new
    assert (cursor.request() or pytest.fail()).offset == 2
    cursor.advance(_keys(60, 50, 40, at=at), 3)
    assert (cursor.request() or pytest.fail()).offset == 4
    cursor.advance(_keys(40, 30, at=at), 3)
    assert (cursor.request() or pytest.fail()).offset == 5
    cursor.advance(_keys(30, at=at), 3)  # only the overlap: that time is read through
    assert cursor.phase is paging.Phase.TIMES and cursor.at == at + paging.TICK


def test_a_cluster_that_keeps_moving_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paging, "MAX_BACKOFFS", 1)
    cursor = _cluster()
    at = AT
    for page in [(90, 80, 70), (70, 60, 50), (30, 20, 10)]:  # the last one: a step back
        cursor.request()
        cursor.advance(_keys(*page, at=at), 3)
    assert (cursor.request() or pytest.fail()).offset == 1
    with pytest.raises(paging.PagingError) as info:
        cursor.advance(_keys(20, 10, at=at), 3)  # still below 50: a second step back
    assert str(info.value) == (
        f"the runs at {at} kept moving while read by offset (deleted meanwhile)"
    )
