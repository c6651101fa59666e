"""Archive before delete: every run a delete removes is first written, whole, to a gzip JSON
Lines archive, fsynced before its delete is sent; ``runner show ARCHIVE`` lists it.

Against a real server: the archive holds each run before the request that deletes it leaves
(a transport in front of the server reads the file as each delete goes out), with its JSON,
its state history and (asked) its logs; a resume appends without duplicates, across a torn
last batch; ``archive: false`` writes nothing; a full disk stops the apply and deletes
nothing unarchived. Without a server: ``runner show`` word for word, a torn or foreign file,
and the plan document's ``archive``.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.apply import ApplyRequest, apply
from runner.archive import ArchiveWriter, archive_record
from runner.client import PrefectClient
from runner.errors import ArchiveError, PlanFileError, PlaybookError
from runner.executor import ApplyOptions, ApplyResult, Executor
from runner.journal import Journal, read_journal
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import ArchiveSpec, Plan, StepPlan
from runner.planfile import _checksum, plan_from_json, plan_to_json
from runner.render import to_text
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.seed import Seeder, utcnow

pytestmark = [pytest.mark.anyio]


def playbook(flow: str, action: str = "delete") -> Any:
    text = f"""
version: 1
name: retention
steps:
  - name: clean
    select: {{flows: {flow}}}
    action: {action}
"""
    return load_text(text, env={})


def records(path: Path) -> list[dict[str, Any]]:
    """The run records of an archive, read as any gzip reader would (headers left out)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    return [line for line in lines if "format" not in line]


async def make_plan(settings: ConnectionSettings, book: Any) -> Plan:
    async with PrefectClient(settings) as client:
        return await plan_playbook(book, client)


async def execute(
    settings: ConnectionSettings,
    plan: Plan,
    workdir: Path,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    options: ApplyOptions | None = None,
) -> ApplyResult:
    journal_path = workdir / "checkpoint.jsonl"
    previous = read_journal(journal_path, plan_id=plan.id) if journal_path.exists() else None
    async with PrefectClient(settings, transport=transport) as client:
        with Journal(journal_path, plan_id=plan.id, plan_checksum="test") as journal:
            return await Executor(
                client, plan, journal, previous=previous, options=options or ApplyOptions()
            ).run()


def delete_ids(request: httpx.Request) -> list[str]:
    """The runs a request deletes (bulk or one run), or none."""
    path = request.url.path
    if request.method == "POST" and path.endswith("/flow_runs/bulk_delete"):
        return [str(i) for i in json.loads(request.content)["flow_runs"]["id"]["any_"]]
    if request.method == "DELETE" and "/flow_runs/" in path:
        return [path.rstrip("/").rsplit("/", 1)[1]]
    return []


class ArchiveWatch(httpx.AsyncBaseTransport):
    """As each delete request leaves for the server, reads the archive on disk and notes
    every run it deletes that the file does not hold yet."""

    def __init__(self, archive: Path) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.archive = archive
        self.deleted: list[str] = []
        self.unarchived: list[str] = []
        self.requests: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        ids = delete_ids(request)
        if ids:
            held = (
                {r["run"]["id"] for r in records(self.archive)} if self.archive.exists() else set()
            )
            self.deleted += ids
            self.unarchived += [i for i in ids if i not in held]
        return await self.inner.handle_async_request(request)


class RefuseDeletes(httpx.AsyncBaseTransport):
    """Passes the first ``allowed`` runs' deletes; answers every later delete 422 (nothing
    deleted, the change failed: what a crash between the archive and the delete leaves).
    A delete takes its runs from the allowance as it is sent (one-run deletes go several at
    a time) and gives them back when the server did not carry it out (503: SQLite busy), so
    that the delete sent again passes."""

    def __init__(self, allowed: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.allowed = allowed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ids = delete_ids(request)
        if ids:
            if self.allowed < len(ids):
                return httpx.Response(422, json={"detail": "refused by the test"})
            self.allowed -= len(ids)
        response = await self.inner.handle_async_request(request)
        if ids and response.status_code >= 500:
            self.allowed += len(ids)
        return response


# -- against a real server -------------------------------------------------------------------


@pytest.mark.prefect2
@pytest.mark.parametrize("strategy", ["bulk", "per-run"])
async def test_each_run_is_in_the_archive_before_the_request_that_deletes_it(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path, strategy: str
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(55, flow, "Completed")  # bulk: a batch of 50, then one of 5
    plan = await make_plan(settings, playbook(flow["name"]))
    watch = ArchiveWatch(tmp_path / "archive.jsonl.gz")
    result = await execute(
        settings,
        plan,
        tmp_path,
        transport=watch,
        options=ApplyOptions(strategy=strategy),  # type: ignore[arg-type]
    )
    ids = sorted(r["id"] for r in runs)
    assert result.count("done") == 55
    assert sorted(set(watch.deleted)) == ids  # (a request the server was busy for goes twice)
    assert watch.unarchived == []
    assert sorted(r["run"]["id"] for r in records(tmp_path / "archive.jsonl.gz")) == ids
    assert seeder.read_runs(ids) == []
    # The cost: one more request a run (its state history), nothing else.
    histories = [p for m, p in watch.requests if m == "GET" and p.endswith("/flow_run_states/")]
    assert len(histories) == 55
    assert not [p for _, p in watch.requests if p.endswith("/logs/filter")]
    assert result.archive is not None
    assert (result.archive.path, result.archive.written, result.archive.runs) == (
        tmp_path / "archive.jsonl.gz",
        55,
        55,
    )
    journal = read_journal(tmp_path / "checkpoint.jsonl")
    assert (journal.archive, journal.archive_runs) == ("archive.jsonl.gz", 55)


@pytest.mark.prefect2
async def test_the_record_holds_the_run_its_state_history_and_its_logs(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow, other = seeder.flow(), seeder.flow()
    done = seeder.run(flow, "Scheduled", parameters={"day": "2026-11-21", "deep": {"n": [1, 2]}})
    for state_type, name in (("PENDING", "Pending"), ("RUNNING", "Running")):
        seeder.set_state(done["id"], state_type, name)
    seeder.set_state(done["id"], "COMPLETED", "Completed")
    failed = seeder.run(flow, "Failed", tags=["nightly"])
    # 230 lines at one time (more than a page of 200 share it), then 20 a millisecond apart.
    start = utcnow() - timedelta(minutes=5)
    seeder.logs_at_one_time(done["id"], 230, start)
    seeder.logs(done["id"], [f"line {i}" for i in range(20)], at=start + timedelta(seconds=1))
    seeder.logs(failed["id"], ["boom", "traceback", "the end"])
    bystander = seeder.run(other, "Completed")
    seeder.logs(bystander["id"], ["not mine"])
    expected_runs = {run["id"]: seeder.read_run(run["id"]) for run in (done, failed)}
    expected_states = {
        run["id"]: seeder._call("GET", "flow_run_states/", params={"flow_run_id": run["id"]})
        for run in (done, failed)
    }
    plan = await make_plan(settings, playbook(flow["name"], "{delete: {archive: {logs: true}}}"))
    assert plan.steps[0].archive == ArchiveSpec(logs=True)
    assert (
        "  Archived before the delete: each run as the API returns it, with its state history"
        " and logs.\n"
    ) in to_text(plan)
    result = await execute(settings, plan, tmp_path)
    assert result.count("done") == 2
    by_id = {r["run"]["id"]: r for r in records(tmp_path / "archive.jsonl.gz")}
    assert sorted(by_id) == sorted(expected_runs)
    for run_id, record in by_id.items():
        assert record["run"] == expected_runs[run_id]  # as the server answered, whole
        stamps = [s["timestamp"] for s in record["states"]]
        assert stamps == sorted(stamps)
        assert sorted(s["id"] for s in record["states"]) == sorted(
            s["id"] for s in expected_states[run_id]
        )
        assert {line["flow_run_id"] for line in record["logs"]} == {run_id}
        times = [line["timestamp"] for line in record["logs"]]
        assert times == sorted(times)
        assert len({line["id"] for line in record["logs"]}) == len(record["logs"])
        assert (record["flow"], record["deployment"], record["plan_id"], record["step"]) == (
            flow["name"],
            None,
            plan.id,
            0,
        )
    record = by_id[done["id"]]
    assert record["run"]["parameters"] == {"day": "2026-11-21", "deep": {"n": [1, 2]}}
    assert [s["name"] for s in record["states"]] == ["Scheduled", "Pending", "Running", "Completed"]
    assert len(record["logs"]) == 250
    assert [line["message"] for line in record["logs"][230:]] == [f"line {i}" for i in range(20)]
    assert [line["message"] for line in by_id[failed["id"]]["logs"]] == [
        "boom",
        "traceback",
        "the end",
    ]
    assert seeder.read_run(bystander["id"]) is not None


@pytest.mark.prefect2
async def test_archive_false_writes_nothing_and_reads_no_history(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    seeder.runs(3, flow, "Completed")
    plan = await make_plan(settings, playbook(flow["name"], "{delete: {archive: false}}"))
    assert plan.steps[0].archive is None
    assert (
        "  Not archived (archive: false): the runs, their state history and logs are gone once"
        " deleted.\n"
    ) in to_text(plan)
    watch = ArchiveWatch(tmp_path / "archive.jsonl.gz")
    result = await execute(settings, plan, tmp_path, transport=watch)
    assert result.count("done") == 3
    assert result.archive is None
    assert not (tmp_path / "archive.jsonl.gz").exists()
    assert not [p for _, p in watch.requests if "flow_run_states" in p or "logs" in p]
    assert read_journal(tmp_path / "checkpoint.jsonl").archive is None


@pytest.mark.prefect2
async def test_a_resume_appends_each_run_once_across_a_torn_last_batch(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """The first apply archives 60 runs but deletes only 50 (the rest are refused: what a
    crash between the archive and the delete leaves); then a crash while writing a batch
    leaves a torn end. The resume cuts the torn end off, does not archive the 10 again, and
    deletes them: every run is in the archive once, and ``runner show`` lists it whole."""
    flow = seeder.flow()
    runs = seeder.runs(60, flow, "Completed")
    plan = await make_plan(settings, playbook(flow["name"]))
    archive = tmp_path / "archive.jsonl.gz"
    first = await execute(settings, plan, tmp_path, transport=RefuseDeletes(50))
    assert (first.count("done"), first.count("failed")) == (50, 10)
    assert len(records(archive)) == 60
    left = {str(o.change.run.id) for o in first.outcomes.values() if o.status == "failed"}
    torn = gzip.compress(
        b"".join(json.dumps({"run": {"id": i}}).encode() + b"\n" for i in sorted(left))
    )
    with open(archive, "ab") as handle:
        handle.write(torn[: len(torn) // 2])
    listed = run_cli("show", str(archive))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-2:] == [
        f"60 runs archived: 60 runs by plan {plan.id}",
        f"Note: the last {len(torn) // 2} bytes (from byte"
        f" {archive.stat().st_size - len(torn) // 2}) are a batch cut off while it was written:"
        " its apply stopped before deleting those runs; skipped",
    ]

    second = await execute(settings, plan, tmp_path)
    assert second.count("done") == 60
    assert second.archive is not None
    assert (second.archive.written, second.archive.runs) == (0, 60)
    held = [r["run"]["id"] for r in records(archive)]
    assert sorted(held) == sorted(r["id"] for r in runs)  # each once
    assert seeder.read_runs(held) == []
    listed = run_cli("show", str(archive))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == f"60 runs archived: 60 runs by plan {plan.id}"


@pytest.mark.prefect2
async def test_a_full_disk_stops_the_apply_and_deletes_nothing_unarchived(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    is_prefect2: bool,
) -> None:
    """The disk fills up after the first batch's records (50 runs; on Prefect 2.x, one run a
    delete): only that batch is deleted, the apply stops, and a resume with the archive
    elsewhere deletes the rest, archived there."""
    flow = seeder.flow()
    runs = seeder.runs(70, flow, "Completed")
    path = tmp_path / "retention.yaml"
    path.write_text(
        f"version: 1\nname: retention\nsteps:\n  - name: clean\n"
        f"    select: {{flows: {flow['name']}}}\n    action: delete\n"
    )
    real_write = ArchiveWriter.write
    writes = [0]

    def full_after_one(self: ArchiveWriter, batch: Any) -> None:
        writes[0] += 1
        if writes[0] > 1:
            raise self._failed(OSError(errno.ENOSPC, "No space left on device"))
        real_write(self, batch)

    monkeypatch.setattr(ArchiveWriter, "write", full_after_one)
    out, err = io.StringIO(), io.StringIO()
    request = ApplyRequest(
        target=str(path),
        settings=settings,
        state_dir=tmp_path / "state",
        options=ApplyOptions(strategy="bulk", concurrency=1),
    )
    applied = await apply(request, out=out, err=err)
    assert applied.code == 1 and applied.plan is not None
    workdir = tmp_path / "state" / applied.plan.id
    archive = workdir / "archive.jsonl.gz"
    assert err.getvalue().splitlines()[-1] == (
        f"runner: {archive}: cannot write the archive: No space left on device (the runs it was"
        " archiving were not deleted); the apply stopped. What the checkpoint recorded stays;"
        f" with room again, resume with: runner apply --resume {workdir / 'checkpoint.jsonl'}"
    )
    archived = {r["run"]["id"] for r in records(archive)}
    remaining = {r["id"] for r in seeder.read_runs(r["id"] for r in runs)}
    first = 1 if is_prefect2 else 50
    assert (len(archived), len(remaining)) == (first, 70 - first)
    assert not archived & remaining  # deleted: exactly what was archived

    monkeypatch.setattr(ArchiveWriter, "write", real_write)
    elsewhere = tmp_path / "elsewhere.jsonl.gz"
    out = io.StringIO()
    resumed = await apply(
        ApplyRequest(settings=settings, resume=str(workdir), archive=str(elsewhere)),
        out=out,
        err=io.StringIO(),
    )
    assert resumed.code == 0, out.getvalue()
    assert (
        f"Archive: {70 - first} runs archived before the delete to {elsewhere} (runner show"
        f" {elsewhere} lists them).\n"
    ) in out.getvalue()
    assert {r["run"]["id"] for r in records(elsewhere)} == remaining
    assert seeder.read_runs(remaining) == []
    status = run_cli("status", str(workdir))
    assert status.stdout.splitlines()[1] == f"archive: {elsewhere} ({70 - first} runs)"


@pytest.mark.prefect2
def test_apply_and_show_from_the_command_line(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Completed")
    path = tmp_path / "retention.yaml"
    path.write_text(
        f"version: 1\nname: retention\nsteps:\n  - name: clean\n"
        f"    select: {{flows: {flow['name']}}}\n    action: delete\n"
    )
    applied = run_cli(
        "apply", str(path), "--yes", "--report", "report.json", api_url=api_url, cwd=tmp_path
    )
    assert applied.returncode == 0, applied.stderr
    [workdir] = (tmp_path / ".runner").iterdir()
    archive = Path(".runner") / workdir.name / "archive.jsonl.gz"
    assert (
        f"Archive: 3 runs archived before the delete to {archive} (runner show {archive} lists"
        " them).\n"
    ) in applied.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["archive"] == {"path": str(archive), "written": 3, "runs": 3}
    shown = run_cli("show", str(archive), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Archive {archive}"
    assert lines[1].split() == [
        "archived", "run", "id", "name", "state", "end", "states", "logs", "flow/deployment"
    ]  # fmt: skip
    assert sorted(line.split()[2] for line in lines[2:5]) == sorted(r["id"] for r in runs)
    assert {line.split()[4] for line in lines[2:5]} == {"Completed"}
    assert lines[5:] == [f"3 runs archived: 3 runs by plan {workdir.name}"]
    as_json = json.loads(run_cli("show", str(archive), "--format", "json", cwd=tmp_path).stdout)
    assert as_json["count"] == 3 and as_json["torn_tail"] is None
    assert sorted(item["id"] for item in as_json["runs"]) == sorted(r["id"] for r in runs)


# -- runner show, without a server -----------------------------------------------------------


PLAN_ID = "0123456789ab"
RUN_IDS = [
    "5a1c2b3d-0000-4000-8000-000000000001",
    "5a1c2b3d-0000-4000-8000-000000000002",
    "5a1c2b3d-0000-4000-8000-000000000003",
]


def fixed_record(index: int, *, logs: bool) -> dict[str, Any]:
    run = {
        "id": RUN_IDS[index],
        "name": ["simple-tiger", "brown-grasshopper", "fancy-seagull"][index],
        "end_time": "2026-11-22T16:02:08.123456+00:00" if index != 2 else None,
        "state": {"type": "COMPLETED", "name": "Completed"}
        if index != 2
        else {"type": "SCHEDULED", "name": "Late"},
    }
    states = [{"id": f"s{index}-{n}", "timestamp": f"2026-11-22T1{n}:00:00Z"} for n in range(3)]
    record = archive_record(
        run,
        states,
        logs=[{"message": "x"}] * index if logs else None,
        flow="healthcheck",
        deployment="healthcheck/storage" if index else None,
        plan_id=PLAN_ID,
        step=0,
    )
    record["archived_at"] = "2026-11-22T17:02:09.654321Z"
    return record


def write_fixed(path: Path) -> int:
    """An archive of two batches (runs 0 and 1 with logs, then run 2 without); returns where
    the first batch ends."""
    with ArchiveWriter(path, plan_id=PLAN_ID, playbook="retention", server_url="x") as writer:
        writer.write([fixed_record(0, logs=True), fixed_record(1, logs=True)])
        first = path.stat().st_size
        writer.write([fixed_record(2, logs=False)])
    return first


TABLE = [
    "archived              run id                                name                      state       end                   states   logs  flow/deployment",
    "2026-11-22 17:02:09Z  5a1c2b3d-0000-4000-8000-000000000001  simple-tiger              Completed   2026-11-22 16:02:08Z       3      0  healthcheck",
    "2026-11-22 17:02:09Z  5a1c2b3d-0000-4000-8000-000000000002  brown-grasshopper         Completed   2026-11-22 16:02:08Z       3      1  healthcheck/storage",
]
LAST = "2026-11-22 17:02:09Z  5a1c2b3d-0000-4000-8000-000000000003  fancy-seagull             Late        -                          3      -  healthcheck/storage"


def test_show_lists_an_archive_word_for_word(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl.gz"
    write_fixed(path)
    shown = run_cli("show", str(path))
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout == "\n".join(
        [f"Archive {path}", *TABLE, LAST, f"3 runs archived: 3 runs by plan {PLAN_ID}", ""]
    )
    as_json = run_cli("show", str(path), "--format", "json")
    assert as_json.returncode == 0
    document = json.loads(as_json.stdout)
    assert document["runs"][2] == {
        "id": RUN_IDS[2],
        "name": "fancy-seagull",
        "flow": "healthcheck",
        "deployment": "healthcheck/storage",
        "state_type": "SCHEDULED",
        "state_name": "Late",
        "end_time": None,
        "archived_at": "2026-11-22T17:02:09.654321Z",
        "plan_id": PLAN_ID,
        "step": 0,
        "states": 3,
        "logs": None,
    }
    assert (document["count"], document["plans"], document["torn_tail"]) == (3, {PLAN_ID: 3}, None)
    markdown = run_cli("show", str(path), "--format", "markdown")
    assert markdown.returncode == 2
    assert f"Error: {path} is an archive: it is listed as text or json" in markdown.stderr


def test_show_lists_a_torn_archive_up_to_its_torn_batch(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl.gz"
    first = write_fixed(path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - 7)
    shown = run_cli("show", str(path))
    assert (shown.returncode, shown.stderr) == (0, "")
    torn = size - 7 - first
    assert shown.stdout == "\n".join(
        [
            f"Archive {path}",
            *TABLE,
            f"2 runs archived: 2 runs by plan {PLAN_ID}",
            f"Note: the last {torn} bytes (from byte {first}) are a batch cut off while it was"
            " written: its apply stopped before deleting those runs; skipped",
            "",
        ]
    )
    document = json.loads(run_cli("show", str(path), "--format", "json").stdout)
    assert document["torn_tail"] == {"offset": first, "bytes": torn}
    assert document["count"] == 2


def test_show_refuses_what_is_not_an_archive(tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl.gz"
    other.write_bytes(gzip.compress(b'{"id": 1}\n'))
    text = tmp_path / "notes.gz"
    text.write_text("hello")
    damaged = tmp_path / "damaged.jsonl.gz"
    first = write_fixed(damaged)
    data = bytearray(damaged.read_bytes())
    data[first + 12 : first + 20] = b"\xff" * 8  # inside the second batch's compressed data
    damaged.write_bytes(bytes(data))
    for path, message in [
        (other, "not a runner archive (gzip, but its first line is not a runner archive's header)"),
        (text, "not a runner archive (not gzip-compressed)"),
        (tmp_path / "missing.gz", "cannot read: No such file or directory"),
    ]:
        shown = run_cli("show", str(path))
        assert (shown.returncode, shown.stderr, shown.stdout) == (
            1,
            f"runner: {path}: {message}\n",
            "",
        )
    shown = run_cli("show", str(damaged))
    assert shown.returncode == 1
    assert shown.stdout == "\n".join([f"Archive {damaged}", *TABLE, ""])
    assert shown.stderr.startswith(f"runner: {damaged}: damaged at byte {first}: not gzip data: ")
    # Nor is one appended to: a resume would mix a foreign file into the audit copy.
    for path in (other, damaged):
        with pytest.raises(ArchiveError, match=r"move it aside, or give --archive another path"):
            ArchiveWriter(path, plan_id=PLAN_ID, playbook="p", server_url="x").__enter__()


def test_a_second_apply_of_the_same_archive_waits_its_turn(tmp_path: Path) -> None:
    path = tmp_path / "archive.jsonl.gz"
    with (
        ArchiveWriter(path, plan_id=PLAN_ID, playbook="p", server_url="x"),
        pytest.raises(ArchiveError, match="another apply is writing to this archive"),
    ):
        ArchiveWriter(path, plan_id="other", playbook="p", server_url="x").__enter__()


# -- the playbook and the plan document ------------------------------------------------------


def test_the_playbook_says_what_to_archive() -> None:
    def action(text: str) -> Any:
        return (
            load_text(
                f"version: 1\nsteps:\n  - name: s\n    select: {{flows: f}}\n    action: {text}\n",
                env={},
            )
            .steps[0]
            .action
        )

    assert action("delete").archive is not None and not action("delete").archive.logs
    assert action("{delete: {archive: true}}").archive.logs is False
    assert action("{delete: {archive: {logs: true}}}").archive.logs is True
    assert action("{delete: {archive: false}}").archive is None
    with pytest.raises(PlaybookError) as info:
        action("{delete: {archive: yes please}}")
    assert [str(p) for p in info.value.problems] == [
        "<string>:5:32: steps[0].action.delete.archive: expected true, false or a mapping"
        " (logs: true), got 'yes please' (a string)"
    ]
    with pytest.raises(PlaybookError) as info:
        action("{delete: {archive: {logs: true, tasks: true}}}")
    assert str(info.value) == (
        "<string>:5:45: steps[0].action.delete.archive.tasks: unknown key 'tasks' (expected one"
        " of: logs)"
    )
    with pytest.raises(PlaybookError) as info:
        action("{cancel: {archive: true}}")
    assert str(info.value) == (
        "<string>:5:23: steps[0].action.cancel.archive: unknown key 'archive' (expected one of:"
        " message)"
    )


def a_plan(archive: ArchiveSpec | None, action: str = "delete") -> dict[str, Any]:
    step = StepPlan(
        index=0,
        name="clean",
        action=action,
        selected=0,
        changes=(),
        concurrency=8,
        rate_limit=None,
        max_attempts=3,
        archive=archive,
    )
    plan = Plan(
        id=PLAN_ID,
        created_at=datetime(2026, 11, 22, tzinfo=timezone.utc),
        playbook_name="retention",
        playbook_path="retention.yaml",
        playbook_digest="sha256:x",
        variables={},
        server_url="http://127.0.0.1:4200/api",
        server_version="3.9.1",
        steps=(step,),
    )
    return plan_to_json(plan)


def resign(data: dict[str, Any]) -> dict[str, Any]:
    data["checksum"] = _checksum({k: v for k, v in data.items() if k != "checksum"})
    return data


def test_the_plan_document_carries_the_archive() -> None:
    for spec in (ArchiveSpec(), ArchiveSpec(logs=True), None):
        data = a_plan(spec)
        assert data["steps"][0]["archive"] == (None if spec is None else {"logs": spec.logs})
        assert plan_from_json(data).steps[0].archive == spec
    assert "archive" not in a_plan(None, action="cancel")["steps"][0]
    # A plan made before runner archived: its deletes archive, as the playbook's would now.
    old = a_plan(None)
    del old["steps"][0]["archive"]
    assert plan_from_json(resign(old)).steps[0].archive == ArchiveSpec()
    for value, message in [
        ({"logs": "yes"}, 'steps[0].archive.logs: expected true or false, got "yes"'),
        (
            {"logs": True, "tasks": True},
            "steps[0].archive.tasks: unknown key (an archive takes only logs)",
        ),
        (True, "steps[0].archive: expected an object, got true"),
    ]:
        data = a_plan(ArchiveSpec())
        data["steps"][0]["archive"] = value
        with pytest.raises(PlanFileError) as info:
            plan_from_json(resign(data))
        assert str(info.value) == f"plan: {message}"
    cancel = a_plan(None, action="cancel")
    cancel["steps"][0]["archive"] = {"logs": False}
    with pytest.raises(PlanFileError) as info:
        plan_from_json(resign(cancel))
    assert str(info.value) == (
        "plan: steps[0].archive: a cancel step archives nothing; expected null, got an object"
    )
