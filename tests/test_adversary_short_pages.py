"""Adversarial review of "a short page after a full one ends the read" (runner/paging.py
``Keyset.filled``, ``PrefectClient._keyset_pages`` / ``_sliced_pages``) and of the batched plan
writer (runner/planfile.py ``write_document``).

Each test asserts the promise against a real Prefect server: every run present for the whole
read is listed exactly once (or the read is refused with a ServerError); a transport in
between only tampers with the real server's answers. A failing test here is a finding."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import paging, planfile
from runner.client import PrefectClient
from runner.filters import FlowRunSort, TimeWindow
from runner.loader import load_text
from runner.models import FlowRun
from runner.observe import plan_playbook
from runner.settings import ConnectionSettings
from tests import test_adversary_paging
from tests.support.prefect_server import PrefectServer
from tests.support.seed import unique
from tests.support.seed_db import clone_runs_at
from tests.test_adversary_paging import of_flow, read, read_or_refuse

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2_nightly]

#: The fixture that makes a flow's runs at the times given (tests/test_adversary_paging.py).
seed = test_adversary_paging.seed

PAGE = 10
Runs = list[dict[str, Any]]
Seed = Callable[[list[timedelta | None]], tuple[dict[str, Any], list[str]]]


class Tamper(httpx.AsyncBaseTransport):
    """The real server. ``before(body)`` runs before each filter request is sent; ``answer``
    may edit each page (body, runs -> runs); ``refuse(body)`` may answer instead with a 400
    detail (a server with a smaller page limit). Keeps (limit asked, runs answered) a page."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.before: Callable[[dict[str, Any]], None] = lambda body: None
        self.answer: Callable[[dict[str, Any], Runs], Runs] = lambda body, runs: runs
        self.refuse: Callable[[dict[str, Any]], str | None] = lambda body: None
        self.pages: list[tuple[int, int]] = []
        self.returned: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not (request.method == "POST" and request.url.path.endswith("/flow_runs/filter")):
            return await self.inner.handle_async_request(request)
        body = json.loads(request.content)
        detail = self.refuse(body)
        if detail is not None:
            return httpx.Response(400, json={"detail": detail})
        self.before(body)
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        if response.status_code == 200:
            runs = self.answer(body, json.loads(content))
            if body.get("limit", 0) > 1:
                self.pages.append((body["limit"], len(runs)))
                timed = "expected_start_time" in (body.get("flow_runs") or {})
                self.returned.update(
                    r["id"] for r in runs if timed or r["expected_start_time"] is None
                )
            content = json.dumps(runs).encode()
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        }
        return httpx.Response(response.status_code, headers=headers, content=content)


def delete_runs(db: Path, ids: list[str]) -> None:
    if not ids:
        return
    connection = sqlite3.connect(db, timeout=60)
    try:
        with connection:
            marks = ",".join("?" * len(ids))
            connection.execute(f"DELETE FROM flow_run_state WHERE flow_run_id IN ({marks})", ids)
            connection.execute(f"DELETE FROM flow_run WHERE id IN ({marks})", ids)
    finally:
        connection.close()


def counts(runs: list[FlowRun]) -> Counter[str]:
    return Counter(str(r.id) for r in runs)


@pytest.fixture(params=[1, 4], ids=["one", "slices"])
def window(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    if request.param > 1:
        monkeypatch.setattr(paging, "PAGES_PER_SLICE", 1)
    return int(request.param)


# -- ties across the full/short boundary ------------------------------------------------------


async def test_ties_spanning_the_full_and_the_short_page(
    settings: ConnectionSettings, seed: Seed, window: int
) -> None:
    """The template at 0s, 6 runs at 1s and 7 at 2s (pages of 10): the full page ends inside
    the 2s tie; the short page that ends the read holds the rest of it. Repeated so that each
    slice has such a boundary too."""
    shifts: list[timedelta | None] = [timedelta(seconds=1)] * 6
    shifts += [timedelta(seconds=2)] * 7
    shifts += [timedelta(seconds=s // 13 * 10 + 3 + (s % 13 >= 6)) for s in range(13 * 6)]
    flow, ids = seed(shifts)
    tamper = Tamper()
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window)
    assert runs is not None and counts(runs) == Counter(ids)
    assert max(tamper.returned.values()) == 1


async def test_ties_spanning_the_boundary_with_a_run_added_there_after_the_full_page(
    settings: ConnectionSettings, seed: Seed, prefect_server: PrefectServer
) -> None:
    """After the first full page, another writer adds a run at that page's last time: the
    short page after it (that time on, less the ids read at it) holds it; read once."""
    shifts: list[timedelta | None] = [timedelta(seconds=1)] * 6
    shifts += [timedelta(seconds=2)] * 7
    flow, ids = seed(shifts)
    db = prefect_server.home / "prefect.db"
    tamper = Tamper()
    added: list[str] = []

    def answer(body: dict[str, Any], runs: Runs) -> Runs:
        if body.get("limit", 0) > 1 and len(runs) == PAGE and not added:
            shift = datetime.fromisoformat(
                runs[-1]["expected_start_time"]
            ) - datetime.fromisoformat(runs[0]["expected_start_time"])
            added.extend(clone_runs_at(db, runs[0]["id"], [shift], name_prefix=unique("n")))
        return runs

    tamper.answer = answer
    runs = await read_or_refuse(settings, tamper, of_flow(flow))
    assert runs is not None and added
    assert counts(runs) == Counter(ids + added)


# -- writers during the read ------------------------------------------------------------------


class Writer:
    """Adds and deletes runs at the given shifts (from the template's time) between pages,
    in a thread, as fast as it can."""

    def __init__(
        self, db: Path, template: str, doomed: list[str], shifts: list[timedelta | None]
    ) -> None:
        self.db, self.template, self.doomed = db, template, list(doomed)
        self.shifts = shifts
        self.added: list[str] = []
        self.deleted: list[str] = []
        self.writes = 0
        self._stop = threading.Event()
        self._random = random.Random(11)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            shifts = [self._random.choice(self.shifts) for _ in range(3)]
            added = clone_runs_at(self.db, self.template, shifts, name_prefix="w")
            self.added += added
            self.doomed += added
            take = min(len(self.doomed), 6)  # deletes outpace inserts: pages come back short
            gone = [self.doomed.pop(self._random.randrange(len(self.doomed))) for _ in range(take)]
            delete_runs(self.db, gone)
            self.deleted += gone
            self.writes += 1
            self._stop.wait(0.002)


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
async def test_runs_deleted_and_added_meanwhile_never_end_a_read_early(
    settings: ConnectionSettings,
    seed: Seed,
    prefect_server: PrefectServer,
    window: int,
    descending: bool,
) -> None:
    """Several hundred runs in small ties and some without a time, pages of 10 (slices of
    about a page); a writer deletes runs (many of them ahead of the read, so pages shrink)
    and adds runs at the same times and without one, within every slice, also in slices
    already read. Every run never deleted is listed, each once."""
    rng = random.Random(5)
    times: list[timedelta | None] = [timedelta(seconds=rng.randrange(120)) for _ in range(500)]
    shifts: list[timedelta | None] = [*times, *[None] * 40]
    flow, ids = seed(shifts)
    doomed = rng.sample(ids[1:], len(ids) // 2)
    tamper = Tamper()
    sort = FlowRunSort.EXPECTED_START_TIME_DESC if descending else None
    with Writer(prefect_server.home / "prefect.db", ids[0], doomed, shifts) as writer:
        runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window, sort=sort)
        during = writer.writes
    assert runs is not None
    stable = set(ids) - set(doomed)
    listed = counts(runs)
    assert stable - set(listed) == set()
    assert max(listed.values()) == 1
    assert max(tamper.returned.values()) == 1
    assert during >= 5
    assert any(answered < asked for asked, answered in tamper.pages)


async def test_a_slice_ended_by_a_short_page_then_written_into(
    settings: ConnectionSettings,
    seed: Seed,
    prefect_server: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slices of one page, four at once: once a slice's short page is answered, runs are added
    at times inside it (after the read of that slice ended). Every run present throughout is
    listed once; an added run at most once."""
    monkeypatch.setattr(paging, "PAGES_PER_SLICE", 1)
    rng = random.Random(9)
    flow, ids = seed([timedelta(seconds=rng.randrange(300)) for _ in range(134)])
    db = prefect_server.home / "prefect.db"
    tamper = Tamper()
    added: list[str] = []

    def answer(body: dict[str, Any], runs: Runs) -> Runs:
        window = (body.get("flow_runs") or {}).get("expected_start_time") or {}
        if body.get("limit", 0) > 1 and 0 < len(runs) < body["limit"] and window:
            first = runs[0]
            added.extend(clone_runs_at(db, first["id"], [timedelta(0), timedelta(microseconds=1)]))
        return runs

    tamper.answer = answer
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=4)
    assert runs is not None
    listed = counts(runs)
    assert set(ids) <= set(listed)
    assert max(listed.values()) == 1
    assert set(listed) <= set(ids) | set(added)
    assert added


# -- a proxy with a consistent cap ------------------------------------------------------------


def capped(cap: int) -> Callable[[dict[str, Any], Runs], Runs]:
    return lambda body, runs: runs[:cap]


@pytest.mark.parametrize("cap", [1, 3, 7, 9])
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
async def test_a_consistent_cap_still_reads_everything(
    settings: ConnectionSettings, seed: Seed, window: int, cap: int, descending: bool
) -> None:
    """Pages capped below the 10 asked (also the one-run probes: a cap of 1 is every
    page's): ties, runs without a time; every run once."""
    rng = random.Random(cap)
    shifts: list[timedelta | None] = [timedelta(seconds=rng.randrange(15)) for _ in range(60)]
    flow, ids = seed([*shifts, *[None] * 12])
    tamper = Tamper()
    tamper.answer = capped(cap)
    sort = FlowRunSort.EXPECTED_START_TIME_DESC if descending else None
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window, sort=sort)
    assert runs is not None and counts(runs) == Counter(ids)


@pytest.mark.parametrize("limit", [1, 3, 6, 7, 8, 13, 14, 20, 27, 29, 30, 31, 45])
@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
async def test_a_consistent_cap_with_a_limit_reads_the_first_runs(
    settings: ConnectionSettings, seed: Seed, limit: int, descending: bool
) -> None:
    """A limit makes pages asked for fewer than the cap (answered in full: ``filled``):
    the read still hands on the first ``limit`` runs in order, timed ones then the rest."""
    flow, ids = seed([*(timedelta(seconds=i) for i in range(1, 25)), *[None] * 15])
    sort = (
        FlowRunSort.EXPECTED_START_TIME_DESC if descending else FlowRunSort.EXPECTED_START_TIME_ASC
    )
    async with PrefectClient(settings, page_size=PAGE) as client:
        whole = await read(client, of_flow(flow), sort=sort)
    tamper = Tamper()
    tamper.answer = capped(7)
    runs = await read_or_refuse(settings, tamper, of_flow(flow), sort=sort, limit=limit)
    assert runs is not None
    assert len(runs) == min(limit, len(ids))
    timed = [r.id for r in whole if r.expected_start_time is not None]
    got_timed = [r.id for r in runs if r.expected_start_time is not None]
    assert got_timed == timed[: len(got_timed)]
    untimed = {r.id for r in whole if r.expected_start_time is None}
    assert {r.id for r in runs if r.expected_start_time is None} <= untimed
    assert len(got_timed) == min(limit, len(timed))


@pytest.mark.parametrize("cap", [3, 7])
async def test_a_consistent_cap_through_the_cluster_phase(
    settings: ConnectionSettings,
    seed: Seed,
    monkeypatch: pytest.MonkeyPatch,
    window: int,
    cap: int,
) -> None:
    """More runs at one time than MAX_EXCLUDED (made 3): read by id and offset, with a cap,
    then a few later times and runs without a time."""
    monkeypatch.setattr(paging, "MAX_EXCLUDED", 3)
    shifts: list[timedelta | None] = [timedelta(seconds=1)] * 33
    shifts += [timedelta(seconds=2)] * 2
    shifts += [timedelta(seconds=3)] * 5 + [None] * 4
    flow, ids = seed(shifts)
    tamper = Tamper()
    tamper.answer = capped(cap)
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window)
    assert runs is not None and counts(runs) == Counter(ids)


async def test_a_cluster_then_a_short_page_then_runs_without_a_time(
    settings: ConnectionSettings,
    seed: Seed,
    prefect_server: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
    window: int,
) -> None:
    """No cap: a cluster (full pages: ``filled``), then a short page ends the times; during
    the cluster another writer adds runs at later times (read or not, never twice); the
    runs without a time (more than MAX_EXCLUDED: by offset) all read."""
    monkeypatch.setattr(paging, "MAX_EXCLUDED", 3)
    shifts: list[timedelta | None] = [timedelta(seconds=1)] * 27
    shifts += [timedelta(seconds=2)] * 4
    shifts += [None] * 9
    flow, ids = seed(shifts)
    db = prefect_server.home / "prefect.db"
    tamper = Tamper()
    added: list[str] = []

    def before(body: dict[str, Any]) -> None:
        if body.get("sort") == "ID_DESC" and body.get("limit", 0) > 1 and len(added) < 6:
            added.extend(clone_runs_at(db, ids[0], [timedelta(seconds=2)] * 2 + [None]))

    tamper.before = before
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window)
    assert runs is not None and added
    listed = counts(runs)
    assert set(ids) <= set(listed) and max(listed.values()) == 1
    assert set(listed) <= set(ids) | set(added)


# -- the server's own page limit --------------------------------------------------------------


async def test_a_smaller_server_limit_learned_mid_read(
    settings: ConnectionSettings, seed: Seed, window: int
) -> None:
    """The server refuses pages over 7 (as Prefect does past PREFECT_API_DEFAULT_LIMIT):
    learned, pages of 7 answered in full, the short one ends the read."""
    rng = random.Random(3)
    flow, ids = seed([timedelta(seconds=rng.randrange(20)) for _ in range(70)] + [None] * 9)
    tamper = Tamper()
    tamper.refuse = lambda body: (
        "Invalid limit: must be less than or equal to 7." if body.get("limit", 0) > 7 else None
    )
    runs = await read_or_refuse(settings, tamper, of_flow(flow), concurrency=window)
    assert runs is not None and counts(runs) == Counter(ids)
    assert all(asked <= 7 for asked, _ in tamper.pages)


# -- selections bounded by expected start, first pages short ---------------------------------


async def test_a_bounded_selection_with_sparse_slices(
    settings: ConnectionSettings, seed: Seed, window: int
) -> None:
    """Most runs in a burst, a few far apart: most slices' first (and only) page is short,
    started with what slices before learned. Bounded by expected start on both sides."""
    shifts: list[timedelta | None] = [timedelta(seconds=i // 4) for i in range(1, 80)]
    shifts += [timedelta(minutes=m) for m in (5, 9, 17, 30, 31, 47, 58)]
    shifts += [timedelta(hours=3), None, None]
    flow, _ = seed(shifts)
    async with PrefectClient(settings, page_size=PAGE) as client:
        everything = await read(client, of_flow(flow))
    base = min(r.expected_start_time for r in everything if r.expected_start_time is not None)
    low, high = base + timedelta(seconds=2), base + timedelta(hours=1)
    expected = {
        str(r.id)
        for r in everything
        if r.expected_start_time is not None and low <= r.expected_start_time <= high
    }
    query = paging._with(of_flow(flow), window=TimeWindow(after_=low, before_=high))
    tamper = Tamper()
    runs = await read_or_refuse(settings, tamper, query, concurrency=window)
    assert runs is not None and counts(runs) == Counter(expected)


# -- documented, accepted: a cap that changes mid-read ----------------------------------------


async def test_confirm_a_cap_that_shrinks_mid_read_ends_the_read_early(
    settings: ConnectionSettings, seed: Seed
) -> None:
    """Known and documented: full pages first, then a proxy caps at 7 -> the read ends at its
    first short page (runs silently dropped). Asserts the documented behaviour."""
    flow, ids = seed([timedelta(seconds=i) for i in range(1, 40)])
    tamper = Tamper()
    seen: list[int] = []

    def answer(body: dict[str, Any], runs: Runs) -> Runs:
        if body.get("limit", 0) > 1:
            seen.append(1)
            return runs if len(seen) == 1 else runs[:7]
        return runs

    tamper.answer = answer
    runs = await read_or_refuse(settings, tamper, of_flow(flow))
    assert runs is not None and len(runs) == 17 < len(ids)


# -- the plan document ------------------------------------------------------------------------


async def test_a_plan_of_several_steps_over_500_changes_reads_back_with_its_checksum(
    settings: ConnectionSettings, seed: Seed, tmp_path: Path
) -> None:
    """Steps of 1,001, 500, 1, 0 and 1,234 changes: the document, written 500 change lines at
    a time, reads back (streamed) with the checksum written and the same plan, one change a
    line, and is byte-identical when written again from what was read."""
    sizes = [1001, 500, 1, 1234]
    flows = [seed([timedelta(seconds=i % 97) for i in range(n - 1)])[0] for n in sizes]
    steps = "".join(
        f"  - name: s{i}\n    select: {{flows: {flow['name']}}}\n    action: delete\n"
        for i, flow in enumerate(flows)
    )
    steps = steps.replace(
        "  - name: s3",
        "  - name: none\n    select: {name_like: no-such-run-name-x}\n    action: delete\n  - name: s3",
    )
    playbook = load_text(
        f"version: 1\nname: big\nguards: {{max_affected: 100000}}\nsteps:\n{steps}",
        name="big.yaml",
        env={},
    )
    async with PrefectClient(settings, page_size=200) as client:
        plan = await plan_playbook(playbook, client, now=datetime.now(timezone.utc))
    assert [len(s.changes) for s in plan.steps] == [1001, 500, 1, 0, 1234]
    path = tmp_path / "plan.json"
    with path.open("w", encoding="utf-8") as out:
        written = planfile.write_document(plan, out)
    text = path.read_text(encoding="utf-8")
    document = json.loads(text)
    assert document["checksum"] == written
    assert planfile.plan_to_json(plan)["checksum"] == written
    back, checksum = planfile.read_plan_checked(path)
    assert checksum == written
    assert planfile.dumps(back) == text
    lines = text.splitlines()
    change_lines = [line for line in lines if line.startswith("        {")]
    assert len(change_lines) == sum(sizes)
    for line in change_lines:
        json.loads(line.rstrip(","))  # one whole change a line
    # Exactly the layout of one change a line: a comma ends every change line but a step's last.
    for i, line in enumerate(lines):
        if line.startswith("        {"):
            last = not lines[i + 1].startswith("        {")
            assert line.endswith("}") if last else line.endswith("},"), (i, line[-5:])
