"""Adversarial review of keyset paging (runner/paging.py, PrefectClient.iter_flow_runs).

Each test asserts the promise -- every run the selection matches listed exactly once, or the
read refused with a ServerError -- against a real server (Prefect 3.9.1 by default), a
transport in between tampering with what the server answers where a real server cannot be
made to misbehave. A test here that fails is a finding (see the review's report)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, cast
from uuid import UUID, uuid4

import httpx
import pytest

from runner import paging
from runner.client import PrefectClient
from runner.errors import ServerError
from runner.filters import AnyIds, FlowFilter, FlowRunQuery, TimeWindow
from runner.loader import load_text
from runner.models import FlowRun
from runner.observe import plan_playbook
from runner.plan import RunView
from runner.selection import order
from runner.settings import ConnectionSettings
from tests.support.prefect_server import PrefectServer
from tests.support.seed import Seeder, unique
from tests.support.seed_db import clone_runs_at, remove_runs_of_flow

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]

PAGE = 10

Runs = list[dict[str, Any]]


class Tamper(httpx.AsyncBaseTransport):
    """The real server; each filter request's body may be rewritten (``ask``) and each page's
    runs edited (``answer``: body sent, runs -> runs) before the client sees them. ``before``
    is called with the body before the request is sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.ask: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body
        self.answer: Callable[[dict[str, Any], Runs], Runs] = lambda body, runs: runs
        self.before: Callable[[dict[str, Any]], None] = lambda body: None
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not (request.method == "POST" and request.url.path.endswith("/flow_runs/filter")):
            return await self.inner.handle_async_request(request)
        body = self.ask(json.loads(request.content))
        self.bodies.append(body)
        self.before(body)
        sent = httpx.Request(
            request.method,
            request.url,
            headers={k: v for k, v in request.headers.items() if k.lower() != "content-length"},
            json=body,
        )
        response = await self.inner.handle_async_request(sent)
        content = await response.aread()
        if response.status_code == 200:
            content = json.dumps(self.answer(body, json.loads(content))).encode()
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        }
        return httpx.Response(response.status_code, headers=headers, content=content)


Seed = Callable[[list[timedelta | None]], tuple[dict[str, Any], list[str]]]


@pytest.fixture
def seed(prefect_server: PrefectServer, seeder: Seeder) -> Iterator[Seed]:
    """A new flow with a run through the API (the first id) and a clone of it in the database
    for each shift of its expected start; removed afterwards."""
    db = prefect_server.home / "prefect.db"
    flows: list[dict[str, Any]] = []

    def make(shifts: list[timedelta | None]) -> tuple[dict[str, Any], list[str]]:
        flow = seeder.flow(unique("adv"))
        flows.append(flow)
        template = seeder.run(flow, "Scheduled")
        clones = clone_runs_at(db, template["id"], shifts, name_prefix=unique("a"))
        return flow, [template["id"], *clones]

    yield make
    for flow in flows:
        remove_runs_of_flow(db, flow["id"])


def of_flow(flow: dict[str, Any]) -> FlowRunQuery:
    return FlowRunQuery(flows=FlowFilter(id=AnyIds(any_=(UUID(flow["id"]),))))


async def read(client: PrefectClient, query: FlowRunQuery, **kwargs: Any) -> list[FlowRun]:
    return [run async for page in client.iter_flow_runs(query, **kwargs) for run in page]


async def read_or_refuse(
    settings: ConnectionSettings,
    tamper: httpx.AsyncBaseTransport,
    query: FlowRunQuery,
    **kwargs: Any,
) -> list[FlowRun] | None:
    """The runs read through ``tamper``, or None if the client refused the answers."""
    async with PrefectClient(settings, transport=tamper, page_size=PAGE) as client:
        try:
            return await read(client, query, **kwargs)
        except ServerError:
            return None


def is_cluster_page(body: dict[str, Any]) -> bool:
    return body.get("sort") == "ID_DESC" and body.get("limit", 0) > 1


def is_second_cluster_page(body: dict[str, Any]) -> bool:
    """The cluster page after the first (asked with one run of overlap, at offset PAGE - 1;
    the attacks were written against offset PAGE, before the overlap)."""
    return is_cluster_page(body) and body.get("offset") in (PAGE - 1, PAGE)


# -- findings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 4])
async def test_a_cluster_page_not_in_id_order_is_refused_not_a_run_skipped(
    settings: ConnectionSettings, seed: Seed, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """A time shared by more runs than MAX_EXCLUDED is read by ID_DESC and offset; the
    answer's id order is never checked, so a server (or proxy) that ignores that sort on one
    page makes the offset walk skip runs silently."""
    monkeypatch.setattr(paging, "MAX_EXCLUDED", 3)
    flow, ids = seed([timedelta(0)] * 39)  # 40 runs at one time
    tamper = Tamper()

    def ask(body: dict[str, Any]) -> dict[str, Any]:
        if is_second_cluster_page(body):
            return {**body, "sort": "NAME_ASC"}  # this one page, in another order
        return body

    tamper.ask = ask
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window)
    assert any(is_cluster_page(b) for b in tamper.bodies)  # the cluster path was taken
    if runs is not None:  # not refused: then every run, each once
        assert Counter(str(r.id) for r in runs) == Counter(ids)


@pytest.mark.parametrize("window", [1, 4])
async def test_a_run_twice_in_one_page_is_listed_once(
    settings: ConnectionSettings, seed: Seed, window: int
) -> None:
    """A page that names one run twice (in time order, so the order check passes): the read
    hands it on twice (``_Reading.fresh`` drops only runs seen in earlier pages), and the
    page, longer than asked, is not refused either."""
    flow, ids = seed([timedelta(seconds=i) for i in range(1, 25)])
    tamper = Tamper()
    doubled: list[bool] = []

    def answer(body: dict[str, Any], runs: Runs) -> Runs:
        timed = "expected_start_time" in (body.get("flow_runs") or {})
        if timed and body.get("limit", 0) > 1 and runs and not doubled:
            doubled.append(True)
            return [runs[0], *runs]
        return runs

    tamper.answer = answer
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window)
    assert doubled
    if runs is not None:
        assert Counter(str(r.id) for r in runs) == Counter(ids)


@pytest.mark.parametrize("window", [1, 4])
async def test_pages_silently_smaller_than_asked_do_not_end_the_read(
    settings: ConnectionSettings, seed: Seed, window: int
) -> None:
    """A server (or proxy) that caps pages below the asked size without saying so: a short
    page ends the read, the rest of the selection is dropped without a word -- even on the
    sliced path, which has just counted the selection."""
    flow, ids = seed([timedelta(seconds=i) for i in range(1, 30)])  # 30 runs
    tamper = Tamper()
    tamper.answer = lambda body, runs: runs[:7] if body.get("limit", 0) > 1 else runs
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window)
    if runs is not None:
        assert Counter(str(r.id) for r in runs) == Counter(ids)


async def test_a_run_deleted_at_a_cluster_time_skips_no_other_run(
    settings: ConnectionSettings,
    seed: Seed,
    prefect_server: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The documented 'quiet-server exact only' window of the cluster path: another writer
    deletes one run already read at the shared time between two cluster pages; the offset
    then passes over a run that was there for the whole read (never listed, no error)."""
    monkeypatch.setattr(paging, "MAX_EXCLUDED", 3)
    flow, ids = seed([timedelta(0)] * 39)
    db = prefect_server.home / "prefect.db"
    tamper = Tamper()
    read_in_cluster: list[str] = []
    deleted: list[str] = []

    def answer(body: dict[str, Any], runs: Runs) -> Runs:
        if is_cluster_page(body):
            read_in_cluster.extend(r["id"] for r in runs)
        return runs

    def before(body: dict[str, Any]) -> None:
        if is_second_cluster_page(body) and not deleted:
            victim = read_in_cluster[0]
            connection = sqlite3.connect(db, timeout=60)
            with connection:
                connection.execute("DELETE FROM flow_run_state WHERE flow_run_id = ?", (victim,))
                connection.execute("DELETE FROM flow_run WHERE id = ?", (victim,))
            connection.close()
            deleted.append(victim)

    tamper.answer, tamper.before = answer, before
    runs = await read_or_refuse(settings, tamper, of_flow(flow))
    assert deleted
    if runs is not None:
        listed = {str(r.id) for r in runs}
        assert set(ids) - set(deleted) <= listed  # every run present throughout, listed


def test_a_steps_sort_keeps_microseconds_apart_far_in_the_future() -> None:
    """A step's ``sort`` (and so which runs its ``limit`` keeps) orders times by a float
    timestamp: past ~2255 two runs a microsecond apart compare equal and are ordered by id,
    not as Prefect's (and an offset read's) EXPECTED_START_TIME_ASC orders them."""
    at = datetime(2400, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)
    later, earlier = sorted((uuid4(), uuid4()), key=lambda u: u.int)  # later has the smaller id
    views = [
        RunView(id=earlier, name="r", flow="f", expected_start=at),
        RunView(id=later, name="r", flow="f", expected_start=at + timedelta(microseconds=1)),
    ]
    assert [v.id for v in order(views, "EXPECTED_START_TIME_ASC")] == [earlier, later]


async def test_a_run_twice_in_one_page_is_planned_once(
    settings: ConnectionSettings, seed: Seed
) -> None:
    """The same doubled page, through a plan: the plan then changes that run twice (two
    changes for one run id; nothing between the read and the planner drops the copy)."""
    flow, ids = seed([timedelta(seconds=i) for i in range(1, 25)])
    playbook = load_text(
        "version: 1\nname: adv\nguards: {max_affected: 1000}\nsteps:\n"
        f"  - name: all\n    select: {{flows: {flow['name']}}}\n    action: delete\n",
        name="adv.yaml",
        env={},
    )
    tamper = Tamper()
    doubled: list[bool] = []

    def answer(body: dict[str, Any], runs: Runs) -> Runs:
        timed = "expected_start_time" in (body.get("flow_runs") or {})
        if timed and body.get("limit", 0) > 1 and runs and not doubled:
            doubled.append(True)
            return [runs[0], *runs]
        return runs

    tamper.answer = answer
    async with PrefectClient(settings, transport=tamper, page_size=PAGE) as client:
        try:
            plan = await plan_playbook(playbook, client, now=datetime.now().astimezone())
        except ServerError:
            return  # refused: holds
    assert doubled
    planned = [str(c.run.id) for c in plan.steps[0].changes]
    assert Counter(planned) == Counter(ids)


@pytest.mark.parametrize("window", [1, 4])
async def test_a_read_left_early_leaves_no_task_running(
    settings: ConnectionSettings, seed: Seed, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """The reader stops after its first page (as on Ctrl-C in the consumer): once the read is
    closed, none of its request or slice tasks is left pending. They are cancelled in the
    generators' ``finally`` but not awaited, so they outlive ``aclose()`` (low severity: they
    end at the loop's next turns; a client closed at once may still see them)."""
    import asyncio

    monkeypatch.setattr(paging, "PAGES_PER_SLICE", 1)
    flow, _ = seed([timedelta(seconds=i) for i in range(1, 60)])
    async with PrefectClient(settings, page_size=PAGE) as client:
        before = asyncio.all_tasks()
        pages = cast(
            AsyncGenerator[list[FlowRun], None],
            client.iter_flow_runs(of_flow(flow), concurrency=window),
        )
        assert await pages.__anext__()
        await pages.aclose()
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        left = [t for t in left if t is not asyncio.current_task()]
        assert left == []


# -- attacks that held ------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 4])
async def test_held_runs_a_microsecond_apart_across_slice_cuts(
    settings: ConnectionSettings, seed: Seed, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """Runs a microsecond apart, two at each time, slices of one page: the cuts fall on runs'
    very times (and a run inserted at the last time read is read as well)."""
    monkeypatch.setattr(paging, "PAGES_PER_SLICE", 1)
    flow, ids = seed([timedelta(microseconds=i // 2) for i in range(1, 60)])
    async with PrefectClient(settings, page_size=PAGE) as client:
        runs = await read(client, of_flow(flow), concurrency=window)
    assert Counter(str(r.id) for r in runs) == Counter(ids)


async def test_held_a_run_added_at_the_last_time_read_is_read(
    settings: ConnectionSettings, seed: Seed, prefect_server: PrefectServer
) -> None:
    """Three runs a time; after the first page another writer adds a run at that page's
    last time: the next page (that time on, less the ids read at it) reads it."""
    flow, ids = seed([timedelta(seconds=i // 3) for i in range(1, 30)])
    db = prefect_server.home / "prefect.db"
    tamper = Tamper()
    last: list[str] = []
    added: list[str] = []

    def answer(body: dict[str, Any], runs: Runs) -> Runs:
        if body.get("limit", 0) > 1 and runs and not last:
            last.append(runs[-1]["expected_start_time"])
            shift = datetime.fromisoformat(last[0]) - datetime.fromisoformat(
                runs[0]["expected_start_time"]
            )
            added.extend(clone_runs_at(db, runs[0]["id"], [shift], name_prefix=unique("n")))
        return runs

    tamper.answer = answer
    runs = await read_or_refuse(settings, tamper, of_flow(flow))
    assert runs is not None and added
    assert Counter(str(r.id) for r in runs) == Counter(ids + added)


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("shape", ["empty", "one", "untimed-only", "bounded-with-untimed"])
async def test_held_small_and_odd_selections(
    settings: ConnectionSettings,
    seed: Seed,
    prefect_server: PrefectServer,
    window: int,
    shape: str,
) -> None:
    """No run, one run, only runs without a time, and a time-bounded selection over runs
    without one (the server leaves those out; no probe is made)."""
    if shape == "empty":
        query = FlowRunQuery(flows=FlowFilter(id=AnyIds(any_=(uuid4(),))))
        expected: list[str] = []
    else:
        flow, ids = seed([None] * 25 if shape != "one" else [])
        query = of_flow(flow)
        expected = ids
        if shape == "untimed-only":  # the API-made template too
            connection = sqlite3.connect(prefect_server.home / "prefect.db", timeout=60)
            with connection:
                connection.execute(
                    "UPDATE flow_run SET expected_start_time = NULL WHERE id = ?", (ids[0],)
                )
            connection.close()
        if shape == "bounded-with-untimed":  # only the template has a time
            window_all = TimeWindow(after_=datetime(2000, 1, 1, tzinfo=timezone.utc))
            query = paging._with(query, window=window_all)
            expected = ids[:1]
    async with PrefectClient(settings, page_size=PAGE) as client:
        runs = await read(client, query, concurrency=window)
    assert Counter(str(r.id) for r in runs) == Counter(expected)


@pytest.mark.parametrize("window", [1, 4])
async def test_held_a_page_out_of_time_order_or_outside_its_window_is_refused(
    settings: ConnectionSettings, seed: Seed, window: int
) -> None:
    """A page handed back reversed: refused (ServerError), never listed."""
    flow, _ = seed([timedelta(seconds=i) for i in range(1, 25)])
    tamper = Tamper()
    tamper.answer = lambda body, runs: runs[::-1] if body.get("limit", 0) > 1 else runs
    assert await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window) is None
