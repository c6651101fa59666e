"""``runner ls``: what each step selects, against a real server (3.x, and 2.x: marker
prefect2): the same runs a plan selects (exclusions, claims, sort and limit), an ad-hoc
``--select``, the JSON Lines, CSV and table output word for word, rows written before the
last page is read, only reads sent, and the errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from runner.client import PrefectClient
from runner.errors import SelectionError
from runner.listing import FIELDS, Rows, StepDone, list_selections
from runner.loader import load_select, load_text
from runner.observe import plan_playbook
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli, start_cli
from tests.support.fault_proxy import FaultProxy
from tests.support.seed import Seeder, unique

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2_nightly]

#: The page limit the transports and the proxy below give the server: a few runs make pages.
PAGE = 4


def _limit_answer(limit: int) -> bytes:
    """What a Prefect server started with a smaller page limit answers a bigger ``limit``."""
    detail = [
        {
            "type": "less_than_equal",
            "loc": ["body", "limit"],
            "msg": f"Input should be less than or equal to {limit}",
        }
    ]
    return json.dumps({"detail": detail}).encode()


def _read_only(requests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The requests that are not reads (POST to a ``/filter`` or ``/count`` route reads)."""
    return [(m, p) for m, p in requests if m != "GET" and not p.endswith(("/filter", "/count"))]


class SmallPages(httpx.AsyncBaseTransport):
    """The real server with a page limit of :data:`PAGE`; records every request."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        path = request.url.path
        if request.method == "POST" and path.endswith("/flow_runs/filter"):  # noqa: SIM102
            if json.loads(request.content).get("limit", 0) > PAGE:
                return httpx.Response(422, content=_limit_answer(PAGE), request=request)
        return await self.inner.handle_async_request(request)


class HoldingProxy(FaultProxy):
    """A loopback proxy in front of the real server: a page limit of :data:`PAGE`, every
    page but the first held until :meth:`release`, every request recorded."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, seed=0, rate=0.0)
        self.seen: list[tuple[str, str]] = []
        self.held = 0
        self._open: asyncio.Event | None = None

    def __enter__(self) -> HoldingProxy:
        self.start()
        return self

    def release(self) -> None:
        def go() -> None:
            if self._open is None:
                self._open = asyncio.Event()
            self._open.set()

        self._loop.call_soon_threadsafe(go)

    async def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        self.seen.append((method, target.partition("?")[0]))
        if method == "POST" and target.endswith("/flow_runs/filter"):
            data = json.loads(body)
            if data.get("limit", 0) > PAGE:
                return 422, {"content-type": "application/json"}, _limit_answer(PAGE)
            # A page after the first: by keyset it leaves out the runs read at its time.
            excluded = (data.get("flow_runs") or {}).get("id", {}).get("not_any_")
            if data.get("offset", 0) > 0 or excluded:
                self.held += 1
                if self._open is None:
                    self._open = asyncio.Event()
                await self._open.wait()
        return await super()._forward(method, target, headers, body)


def _lines(stream: io.TextIOBase | Any) -> queue.Queue[str | None]:
    """Lines of ``stream`` as they come (None at its end), read by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _iso(value: str | None) -> str | None:
    """A time as the server wrote it, as runner ls writes it: UTC, ``Z``."""
    if value is None:
        return None
    when = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def _expected(
    run: dict[str, Any], *, flow: str, deployment: str | None, step: int = 1, step_name: str
) -> dict[str, Any]:
    """The JSON object runner ls writes for ``run`` (as the server reads it back)."""
    return {
        "step": step,
        "step_name": step_name,
        "id": run["id"],
        "name": run["name"],
        "flow": flow,
        "deployment": deployment,
        "deployment_id": run["deployment_id"],
        "state_type": run["state"]["type"],
        "state_name": run["state"]["name"],
        "state_since": _iso(run["state"]["timestamp"]),
        "expected_start": _iso(run["expected_start_time"]),
        "next_scheduled_start": _iso(run["next_scheduled_start_time"]),
        "start": _iso(run["start_time"]),
        "end": _iso(run["end_time"]),
        "created": _iso(run["created"]),
        "tags": run["tags"],
        "work_pool": run.get("work_pool_name"),
        "work_queue": run["work_queue_name"],
        "parent_task_run_id": run["parent_task_run_id"],
        "parameters": run["parameters"],
    }


# -- the same selection as a plan ------------------------------------------------------------


def _three_steps(flow: str) -> str:
    return f"""
version: 1
name: listing
steps:
  - name: latest late
    select: {{flows: {flow}, state: {{name: Late}}, sort: EXPECTED_START_TIME_DESC, limit: 3}}
    action: delete
  - name: scheduled, but not kept
    select:
      flows: {flow}
      state: {{type: SCHEDULED}}
      exclude: {{tags: {{any: [keep]}}}}
    action: delete
  - name: the rest, but not running
    select: {{flows: {flow}, state: {{not_type: [RUNNING]}}}}
    action: delete
"""


async def test_each_step_lists_what_a_plan_selects(
    settings: ConnectionSettings, seeder: Seeder, api_url: str, tmp_path: Path
) -> None:
    flow = seeder.flow(unique("ls-plan"))
    pool = seeder.work_pool()
    dep = seeder.deployment(flow, "nightly", work_pool=pool["name"])
    seeder.late_runs(6, flow, deployment=dep)
    seeder.late_runs(3, flow, deployment=dep, tags=["keep"])
    seeder.runs(2, flow, "Failed")
    seeder.run(flow, "Running")
    seeder.run(flow, "Scheduled", tags=["keep"])
    text = _three_steps(flow["name"])
    playbook = load_text(text, env={})
    # Pages of 4: the sorted step's best 3 and the claims span pages.
    plan_transport, ls_transport = SmallPages(), SmallPages()
    async with PrefectClient(settings, transport=plan_transport, bulk=False) as client:
        plan = await plan_playbook(playbook, client)
    async with PrefectClient(settings, transport=ls_transport, bulk=False) as client:
        events = [e async for e in list_selections(client, playbook)]

    listed: dict[int, list[UUID]] = {0: [], 1: [], 2: []}
    for event in events:
        if isinstance(event, Rows):
            listed[event.index] += [r.id for r in event.runs]
    planned = {s.index: [c.run.id for c in s.changes] for s in plan.steps}
    assert listed[0] == planned[0]  # the limited step: in its sort order
    assert sorted(listed[1]) == sorted(planned[1])
    assert sorted(listed[2]) == sorted(planned[2])
    # 9 Late runs, 3 of them kept; a kept Scheduled run, 2 Failed, 1 Running.
    kept_in_first = sum(1 for c in plan.steps[0].changes if "keep" in c.run.tags)
    assert [len(ids) for ids in listed.values()] == [3, 6 - (3 - kept_in_first), 4]
    done = [e for e in events if isinstance(e, StepDone)]
    assert [d.selected for d in done] == [3, len(listed[1]), 4]
    assert [d.read for d in done][:2] == [9, 10]
    assert done[0].past_limit == 6
    assert done[1].excluded == (("exclude.tags", 4),)  # counted before claims, as plans do
    assert done[1].claimed == 3 - kept_in_first
    assert done[2].claimed == 8
    assert ls_transport.requests and _read_only(ls_transport.requests) == []
    pages = sum(p.endswith("/flow_runs/filter") for _, p in ls_transport.requests)
    assert pages > 6  # paged (pages of 4)

    # The command line lists the same, step by step.
    path = tmp_path / "listing.yaml"
    path.write_text(text)
    result = run_cli("ls", str(path), "--format", "json", api_url=api_url)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_step = {n: [UUID(r["id"]) for r in rows if r["step"] == n + 1] for n in range(3)}
    assert by_step[0] == listed[0]
    assert sorted(by_step[1]) == sorted(listed[1]) and sorted(by_step[2]) == sorted(listed[2])
    assert {r["step_name"] for r in rows if r["step"] == 2} == {"scheduled, but not kept"}

    table = run_cli("ls", str(path), api_url=api_url)
    assert table.returncode == 0, table.stderr
    assert "Step 1: latest late\n" in table.stdout
    assert "  3 runs selected (read 9: 6 past its limit)\n" in table.stdout
    claimed = 3 - kept_in_first
    assert (
        f"  {len(listed[1])} runs selected (read 10: 4 left out by select.exclude.tags;"
        f" {claimed} selected by an earlier step)\n"
    ) in table.stdout
    assert "  4 runs selected (read 1" in table.stdout  # 12, or 13 where runner drops one


async def test_a_step_without_limit_comes_in_expected_start_order_and_a_run_once(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    flow = seeder.flow(unique("ls-order"))
    made = seeder.read_runs(r["id"] for r in seeder.runs(9, flow, "Completed"))
    async with PrefectClient(settings, transport=SmallPages(), bulk=False) as client:
        book = load_select(f"{{flows: {flow['name']}}}")
        pages = [e for e in [e async for e in list_selections(client, book)] if isinstance(e, Rows)]
    assert [len(p.runs) for p in pages] == [4, 4, 1]  # handed on page by page
    ids = [str(r.id) for p in pages for r in p.runs]
    assert ids == [r["id"] for r in sorted(made, key=lambda r: str(_iso(r["expected_start_time"])))]


# -- an ad-hoc selection, and the output word for word ---------------------------------------


def _seed_known(seeder: Seeder) -> dict[str, Any]:
    flow = seeder.flow(unique("ls-known"))
    pool = seeder.work_pool()
    dep = seeder.deployment(flow, "nightly", work_pool=pool["name"])
    first = seeder.run(
        flow,
        "Scheduled",
        deployment=dep,
        name="first-run",
        tags=["b", "a,c"],
        scheduled=datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        parameters={"n": 1, "nested": {"k": [1, "é", None]}},
    )
    parent = seeder.run(flow, "Running", name="parent-run")
    task = seeder.task_run(parent["id"])
    child = seeder.run(flow, "Failed", name="child\x1bsub", parent_task_run_id=task["id"])
    seeder.run(seeder.flow(), "Scheduled")  # another flow's: not listed
    ids = [first["id"], parent["id"], child["id"]]
    runs = {r["id"]: r for r in seeder.read_runs(ids)}
    return {"flow": flow, "dep": dep, "runs": [runs[i] for i in ids]}


def _expected_rows(known: dict[str, Any], step_name: str = "--select") -> list[dict[str, Any]]:
    flow = known["flow"]["name"]
    rows = [
        _expected(
            run,
            flow=flow,
            deployment=f"{flow}/nightly" if run["deployment_id"] else None,
            step_name=step_name,
        )
        for run in known["runs"]
    ]
    return sorted(rows, key=lambda r: str(r["expected_start"]))  # oldest expected start first


def test_select_as_json_lines_word_for_word(seeder: Seeder, api_url: str) -> None:
    known = _seed_known(seeder)
    result = run_cli(
        "ls", "--select", f"{{flows: {known['flow']['name']}}}", "--format", "json", api_url=api_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == _expected_rows(known)
    assert all(list(row) == list(FIELDS) for row in rows)


def test_select_as_csv_word_for_word(seeder: Seeder, api_url: str) -> None:
    known = _seed_known(seeder)
    result = run_cli(
        "ls", "--select", f"{{flows: {known['flow']['name']}}}", "--format", "csv", api_url=api_url
    )
    assert result.returncode == 0, result.stderr
    header, _, _ = result.stdout.partition("\n")
    assert header == ",".join(FIELDS)
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    expected = [
        {
            k: (
                json.dumps(v, ensure_ascii=False)
                if k in ("tags", "parameters")
                else ""
                if v is None
                else str(v).replace("\x1b", "\\x1b")  # escaped, as in the table
            )
            for k, v in row.items()
        }
        for row in _expected_rows(known)
    ]
    assert rows == expected
    tags = [json.loads(row["tags"]) for row in rows]
    assert sorted(map(sorted, tags)) == [[], [], ["a,c", "b"]]  # a comma in a tag: one tag


def test_select_as_a_table_word_for_word(seeder: Seeder, api_url: str) -> None:
    known = _seed_known(seeder)
    flow = known["flow"]["name"]
    result = run_cli("ls", "--select", f"{{flows: {flow}}}", api_url=api_url)
    assert result.returncode == 0, result.stderr

    def when(value: str | None) -> str:
        return "-" if value is None else f"{value[:10]} {value[11:19]}Z"

    cells = [
        (
            r["id"],
            r["name"].replace("\x1b", "\\x1b"),  # escaped: it never moves the cursor
            r["deployment"] or r["flow"],
            r["state_name"],
            when(r["expected_start"]),
            when(r["start"]),
            when(r["end"]),
            ", ".join(t if "," not in t else json.dumps(t) for t in r["tags"]) or "-",
        )
        for r in _expected_rows(known)
    ]
    headers = ("id", "name", "flow/deployment", "state", "expected start", "start", "end", "tags")
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(row: tuple[str, ...]) -> str:
        return "  " + "  ".join(c.ljust(widths[i]) if i < 7 else c for i, c in enumerate(row))

    expected = "\n".join([line(headers), *(line(c) for c in cells), "  3 runs selected", "", ""])
    assert result.stdout == expected
    assert "2031-01-02 03:04:05Z" in result.stdout
    assert '"a,c", b' in result.stdout or 'b, "a,c"' in result.stdout


def test_select_takes_variables_exclusions_and_sort(seeder: Seeder, api_url: str) -> None:
    known = _seed_known(seeder)
    flow = known["flow"]["name"]
    select = "{flows: ${flow}, exclude: {state: {type: RUNNING}}, sort: NAME_ASC, limit: 5}"
    result = run_cli(
        "ls", "--select", select, "--var", f"flow={flow}", "--format", "json", api_url=api_url
    )
    assert result.returncode == 0, result.stderr
    names = [json.loads(line)["name"] for line in result.stdout.splitlines()]
    assert names == ["child\x1bsub", "first-run"]  # NAME_ASC; the Running parent left out


def test_limit_stops_the_listing_and_says_so(seeder: Seeder, api_url: str) -> None:
    flow = seeder.flow(unique("ls-limit"))
    seeder.runs(3, flow, "Completed")
    select = f"{{flows: {flow['name']}}}"
    capped = run_cli("ls", "--select", select, "--format", "json", "--limit", "2", api_url=api_url)
    assert capped.returncode == 0, capped.stderr
    assert len(capped.stdout.splitlines()) == 2
    assert capped.stderr == "runner: stopped at --limit 2: more runs match\n"
    exact = run_cli("ls", "--select", select, "--format", "json", "--limit", "3", api_url=api_url)
    assert exact.returncode == 0, exact.stderr
    assert len(exact.stdout.splitlines()) == 3
    assert exact.stderr == ""


# -- streamed, and only reads ----------------------------------------------------------------


def test_rows_are_written_before_the_last_page_is_read(seeder: Seeder, api_url: str) -> None:
    flow = seeder.flow(unique("ls-stream"))
    made = seeder.runs(10, flow, "Late")
    with HoldingProxy(api_url) as proxy:
        process = start_cli(
            "ls", "--select", f"{{flows: {flow['name']}}}", "--format", "json",
            api_url=proxy.api_url,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            lines = _lines(process.stdout)
            # The first page's rows arrive while every later page is held at the proxy.
            first = [lines.get(timeout=120) for _ in range(PAGE)]
            assert all(first), first
            deadline = time.monotonic() + 120
            while not proxy.held and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proxy.held  # the next pages are asked for, and held...
            assert process.poll() is None and lines.empty()  # ...so nothing more came yet
            proxy.release()
            rest = []
            while (line := lines.get(timeout=120)) is not None:
                rest.append(line)
            assert process.wait(timeout=120) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    ids = [json.loads(line)["id"] for line in [*first, *rest]]  # type: ignore[arg-type]
    assert sorted(ids) == sorted(r["id"] for r in made)
    assert _read_only(proxy.seen) == []  # only reads were sent


def test_a_reader_that_stops_early_ends_the_listing_quietly(seeder: Seeder, api_url: str) -> None:
    """``runner ls ... | head -1``: the pipe closes; runner stops reading, exits 0, says
    nothing."""
    flow = seeder.flow(unique("ls-head"))
    seeder.runs(6, flow, "Completed")
    with HoldingProxy(api_url) as proxy:
        process = start_cli(
            "ls", "--select", f"{{flows: {flow['name']}}}", "--format", "json",
            api_url=proxy.api_url,
        )  # fmt: skip
        try:
            assert process.stdout is not None and process.stderr is not None
            assert process.stdout.readline()
            process.stdout.close()  # as head does after its line
            proxy.release()
            assert process.wait(timeout=120) == 0
            assert process.stderr.read() == ""
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "message"),
    [
        (
            "{state: {name: Lat}}",
            "--select:1:16: state.name: 'Lat' is not a Prefect state name; did you mean 'Late'?"
            " (a name your code sets: add custom: true to the state selection)",
        ),
        (
            "{state: {name: Late}, limit: 3}",
            "--select:1:30: limit: 'limit' needs a 'sort' (which runs are the first N depends"
            " on it)",
        ),
        (
            "{state: {name: Late}, flow: etl}",
            "--select:1:23: flow: unknown key 'flow'; did you mean 'flows'?",
        ),
        ("[Late]", "--select:1:1: a selection is a mapping (state, flows, ...), got a list"),
        (
            "Late",
            "--select:1:1: a selection is a mapping (state, flows, ...), got 'Late' (a string)",
        ),
        (" ", "--select:1:1: an empty selection: give its keys, e.g. '{state: {name: Late}}'"),
        (
            "{flows: ${flow}}",
            "--select:1:9: flows: undefined variable 'flow' (no --var given)",
        ),
        (
            "{state: {name: Late}",
            "--select:2:1: invalid YAML: did not find expected ',' or '}'",
        ),
    ],
)
def test_a_bad_select_is_refused_naming_the_option_and_the_key(
    select: str, message: str, api_url: str
) -> None:
    result = run_cli("ls", "--select", select, api_url=api_url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == message + "\n"


def test_an_unknown_name_in_select_is_refused_before_anything_is_listed(
    seeder: Seeder, api_url: str
) -> None:
    flow = seeder.flow(unique("ls-names"))
    select = f"{{flows: [{flow['name']}, {flow['name']}x]}}"
    result = run_cli("ls", "--select", select, api_url=api_url)
    assert result.returncode == 1
    assert result.stdout == ""
    as_csv = run_cli("ls", "--select", select, "--format", "csv", api_url=api_url)
    assert (as_csv.returncode, as_csv.stdout) == (1, "")  # not even the header
    assert result.stderr.startswith(
        f"--select:1:{10 + len(flow['name']) + 2}: flows[1]: no flow '{flow['name']}x' on {api_url}"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("ls",),
        ("ls", "playbooks/retry-failed.yaml", "--select", "{}"),
        ("ls", "--select", "{}", "--limit", "0"),
    ],
)
def test_wrong_usage_exits_2(args: tuple[str, ...], api_url: str) -> None:
    result = run_cli(*args, api_url=api_url)
    assert result.returncode == 2
    assert result.stdout == ""


async def test_a_run_the_server_should_not_return_stops_the_listing(
    settings: ConnectionSettings, seeder: Seeder, server_version: str
) -> None:
    """A server that drops the flow filter returns other flows' runs: the listing stops at
    the first, naming the filter."""
    flow = seeder.flow(unique("ls-ignored"))
    seeder.runs(2, flow, "Completed")
    seeder.run(seeder.flow(), "Completed")

    class DropFlows(httpx.AsyncBaseTransport):
        def __init__(self, drop: Callable[[dict[str, Any]], None]) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.drop = drop

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and request.url.path.endswith("/flow_runs/filter"):
                body = json.loads(request.content)
                self.drop(body)
                request = httpx.Request(request.method, request.url, json=body)
            return await self.inner.handle_async_request(request)

    book = load_select(f"{{flows: {flow['name']}}}")
    async with PrefectClient(
        settings, transport=DropFlows(lambda b: b.pop("flows", None)), bulk=False
    ) as client:
        with pytest.raises(SelectionError) as info:
            async for _ in list_selections(client, book):
                pass
    message = str(info.value)
    assert message.startswith("--select: the server returned run ")
    assert message.endswith(
        f", which does not match select.flows: the server (Prefect {server_version}) ignored"
        " or mis-read that filter. The listing stopped there; each run listed before it was"
        " checked and matches."
    )


def test_ls_of_a_playbook_sends_no_write(seeder: Seeder, api_url: str, tmp_path: Path) -> None:
    """Every kind of name a playbook can check, a parent, parameters: still only reads."""
    flow = seeder.flow(unique("ls-reads"))
    pool = seeder.work_pool()
    dep = seeder.deployment(flow, "nightly", work_pool=pool["name"])
    parent = seeder.run(flow, "Running")
    task = seeder.task_run(parent["id"])
    child = seeder.run(flow, "Failed", parent_task_run_id=task["id"], parameters={"x": 1})
    seeder.run(flow, "Scheduled", deployment=dep)
    path = tmp_path / "reads.yaml"
    path.write_text(
        f"""
version: 1
steps:
  - name: children
    select: {{flows: {flow["name"]}, parent_id: {parent["id"]}, parameters: {{x: 1}}}}
    action: delete
  - name: the deployment's
    select:
      deployments: {flow["name"]}/nightly
      work_pools: {pool["name"]}
      work_queues: default
    action: cancel
"""
    )
    with HoldingProxy(api_url) as proxy:
        proxy.release()
        result = run_cli("ls", str(path), "--format", "json", api_url=proxy.api_url)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["step"], r["id"]) for r in rows if r["step"] == 1] == [(1, child["id"])]
    assert len([r for r in rows if r["step"] == 2]) == 1
    assert _read_only(proxy.seen) == []
    assert any(p.endswith("/task_runs/filter") for _, p in proxy.seen)


def test_cli_help_lists_ls() -> None:
    result = run_cli("--help")
    assert "  ls " in result.stdout


def test_nothing_selected_is_an_empty_listing(seeder: Seeder, api_url: str) -> None:
    flow = seeder.flow(unique("ls-empty"))  # no runs
    select = f"{{flows: {flow['name']}}}"
    as_csv = run_cli("ls", "--select", select, "--format", "csv", api_url=api_url)
    assert (as_csv.returncode, as_csv.stdout) == (0, ",".join(FIELDS) + "\n")
    as_json = run_cli("ls", "--select", select, "--format", "json", api_url=api_url)
    assert (as_json.returncode, as_json.stdout) == (0, "")
    table = run_cli("ls", "--select", select, api_url=api_url)
    assert (table.returncode, table.stdout) == (0, "  0 runs selected\n\n")
