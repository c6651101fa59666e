"""What an apply says when there is nothing (left) to do, the report it writes all the same,
`runner status` and its exit codes, options that go together, and counts in words."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.words import plural
from tests.support.cli import run_cli
from tests.support.seed import Seeder


def playbook(tmp: Path, flow: dict[str, Any], action: str = "delete", extra: str = "") -> Path:
    path = tmp / "playbook.yaml"
    path.write_text(
        f"version: 1\nname: t\n{extra}steps:\n  - name: act\n"
        f"    select: {{flows: {flow['name']}}}\n    action: {action}\n"
    )
    return path


def started_at(workdir: Path) -> str:
    header = json.loads((workdir / "checkpoint.jsonl").read_text().splitlines()[0])
    return f"{datetime.fromisoformat(header['created_at']):%Y-%m-%d %H:%M:%S}Z"


def test_applying_an_applied_plan_says_when_and_where_and_sends_nothing(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    seeder.runs(3, flow, "Completed")
    path = playbook(tmp_path, flow)
    planned = run_cli("plan", str(path), "-o", "plan.json", api_url=api_url, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    first = run_cli("apply", "plan.json", "--yes", api_url=api_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (workdir,) = (tmp_path / ".runner").iterdir()
    plan_id = workdir.name
    said = (
        f"Plan {plan_id} (t) was applied already on {started_at(workdir)}: 3 done. Nothing to"
        " do; nothing was sent.\n"
        f"Its checkpoint: .runner/{plan_id}/checkpoint.jsonl (runner status .runner/{plan_id}"
        " shows it).\n"
    )
    again = run_cli(
        "apply", "plan.json", "--yes", "--report", "again.json", api_url=api_url, cwd=tmp_path
    )
    assert (again.returncode, again.stdout, again.stderr) == (0, said, "")
    report = json.loads((tmp_path / "again.json").read_text())
    assert report["plan_id"] == plan_id
    assert report["requests"] == 0
    assert report["counts"] == {
        "done": 3,
        "drifted": 0,
        "raced": 0,
        "failed": 0,
        "pending": 0,
        "created": 0,
    }
    assert {r["status"] for r in report["runs"]} == {"done"}
    resumed = run_cli(
        "apply", "--resume", f".runner/{plan_id}", "--yes", api_url=api_url, cwd=tmp_path
    )
    assert (resumed.returncode, resumed.stdout) == (
        0,
        f"Resuming plan {plan_id} from .runner/{plan_id}\n" + said,
    )


def test_the_report_is_written_when_there_is_nothing_to_do(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()  # no runs: nothing selected, nothing to do
    path = playbook(tmp_path, flow)
    result = run_cli(
        "apply", str(path), "--yes", "--report", "report.json", api_url=api_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("Summary: 0 to change, 0 unchanged\nNothing to do.\n")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["playbook"] == "t"
    assert report["counts"] == dict.fromkeys(
        ("done", "drifted", "raced", "failed", "pending", "created"), 0
    )
    assert report["runs"] == []


def test_detailed_exitcode_goes_with_dry_run(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    flow = seeder.flow()
    runs = seeder.runs(2, flow, "Completed")
    path = playbook(tmp_path, flow)
    refused = run_cli("apply", str(path), "--yes", "--detailed-exitcode", api_url=api_url)
    assert refused.returncode == 2
    assert refused.stderr.endswith(
        "Error: --detailed-exitcode goes with --dry-run (or runner plan): an apply exits 0 when"
        " every change is made\n"
    )
    assert len(seeder.read_runs(r["id"] for r in runs)) == 2
    dry = run_cli("apply", str(path), "--dry-run", "--detailed-exitcode", api_url=api_url)
    assert dry.returncode == 2, dry.stderr


STATUS_HELP = """\
  Done / drifted / failed / pending counts of an apply's checkpoint (or its
  folder).

  Exit codes:
    0  every change is finished (done, drifted or raced)
    1  a change failed or is still pending (runner apply --resume finishes
       it), or the checkpoint or its plan cannot be read
"""


def test_status_exit_codes_and_json(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    assert STATUS_HELP in run_cli("status", "--help").stdout
    flow = seeder.flow()
    runs = seeder.runs(2, flow, "Completed")
    path = playbook(tmp_path, flow)
    # A plan saved but never applied: every change pending.
    (tmp_path / "waiting").mkdir()
    planned = run_cli("plan", str(path), "-o", "waiting/plan.json", api_url=api_url, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    waiting = run_cli("status", "waiting", cwd=tmp_path)
    assert waiting.returncode == 1
    assert waiting.stdout.endswith("done 0, drifted 0, failed 0, pending 2\n")
    applied = run_cli("apply", str(path), "--yes", api_url=api_url, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    (workdir,) = (tmp_path / ".runner").iterdir()
    done = run_cli("status", str(workdir), cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.endswith("done 2, drifted 0, failed 0, pending 0\n")
    as_json = run_cli("status", str(workdir), "--format", "json", cwd=tmp_path)
    assert as_json.returncode == 0
    document = json.loads(as_json.stdout)
    assert document["plan_id"] == workdir.name
    assert document["checkpoint"] == str(workdir / "checkpoint.jsonl")
    assert document["complete"] is True
    assert document["counts"] == {"done": 2, "drifted": 0, "raced": 0, "failed": 0, "pending": 0}
    assert sorted(r["run_id"] for r in document["runs"]) == sorted(r["id"] for r in runs)
    assert {(r["op"], r["status"], r["detail"]) for r in document["runs"]} == {
        ("delete", "done", "deleted")
    }
    pending = json.loads(run_cli("status", "waiting", "--format", "json", cwd=tmp_path).stdout)
    assert (pending["complete"], pending["counts"]["pending"]) == (False, 2)


def test_counts_are_written_in_words() -> None:
    assert [plural(n, "request") for n in (0, 1, 2)] == ["0 requests", "1 request", "2 requests"]


def test_a_guard_counts_in_words(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    flow = seeder.flow()
    seeder.runs(1, flow, "Completed")
    path = playbook(tmp_path, flow, extra="guards: {max_affected: 0}\n")
    result = run_cli("plan", str(path), api_url=api_url, cwd=tmp_path)
    assert result.returncode == 1
    assert "Refused: the playbook would change 1 run, more than its max_affected (0)\n" in (
        result.stdout
    )
