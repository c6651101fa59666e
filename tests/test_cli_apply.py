"""`runner apply` as operators run it: a process that can be killed, interrupted and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli, start_cli
from tests.support.fault_proxy import FaultProxy
from tests.support.prefect_server import PrefectServer
from tests.support.seed import Seeder, unique

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.prefect2


runner = run_cli
start = start_cli


def start_per_run(
    playbook: Path, concurrency: int, *, api_url: str, cwd: Path
) -> subprocess.Popen[str]:
    """``runner apply PLAYBOOK --yes`` one run at a time (slow enough to interrupt)."""
    args = ("--yes", "--strategy", "per-run", "--concurrency", str(concurrency))
    return start("apply", str(playbook), *args, api_url=api_url, cwd=cwd)


def journal_lines(cwd: Path) -> int:
    files = list((cwd / ".runner").glob("*/checkpoint.jsonl"))
    return sum(len(f.read_bytes().splitlines()) for f in files)


def wait_for_records(
    cwd: Path, count: int, process: subprocess.Popen[str], timeout: float = 120
) -> None:
    """Poll (bounded) until the journal holds ``count`` records, or the process ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal_lines(cwd) >= count + 1 or process.poll() is not None:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} journal records within {timeout}s")


def write_playbook(
    tmp: Path, flow: dict[str, Any], action: str, select: str = "", name: str = "t", extra: str = ""
) -> Path:
    path = tmp / "playbook.yaml"
    path.write_text(
        f"version: 1\nname: {name}\n{extra}steps:\n  - name: act\n    select: {{flows: {flow['name']}{select}}}\n"
        f"    action: {action}\n"
    )
    return path


def test_off_a_terminal_destructive_applies_need_yes(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    seeder.runs(2, flow, "Completed")
    path = write_playbook(tmp_path, flow, "delete")
    result = runner("apply", str(path), api_url=api_url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "runner: not a terminal: pass --yes to apply changes that delete, cancel or change the"
        " state of runs\n"
    )
    assert len(seeder.runs_of_flow(flow)) == 2


def test_apply_report_status_and_nothing_left(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    flow = seeder.flow()
    seeder.runs(5, flow, "Running")
    path = write_playbook(tmp_path, flow, "cancel")
    result = runner(
        "apply", str(path), "--yes", "--report", "report.json", api_url=api_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "Applied: 5 done, 0 drifted (left alone), 0 failed, 0 pending" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"]["done"] == 5
    assert {r["detail"] for r in report["runs"]} == {"Cancelling"}
    (workdir,) = (tmp_path / ".runner").iterdir()
    status = runner("status", str(workdir / "checkpoint.jsonl"), api_url=api_url, cwd=tmp_path)
    assert status.returncode == 0
    assert "done 5, drifted 0, failed 0, pending 0" in status.stdout
    again = runner("apply", str(path), "--yes", api_url=api_url, cwd=tmp_path)
    assert again.returncode == 0
    assert "Nothing to do." in again.stdout


def test_saved_plan_skips_runs_that_drifted(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    flow = seeder.flow()
    runs = seeder.runs(4, flow, "Completed")
    path = write_playbook(tmp_path, flow, "delete")
    planned = runner("plan", str(path), "-o", "plan.json", api_url=api_url, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    seeder._call(
        "POST",
        f"flow_runs/{runs[0]['id']}/set_state",
        json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True},
    )
    result = runner("apply", "plan.json", "--yes", api_url=api_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Applied: 3 done, 1 drifted (left alone), 0 failed, 0 pending" in result.stdout
    assert (
        f"drifted: {runs[0]['name']} ({runs[0]['id']}): now AwaitingRetry, planned from Completed"
        in result.stdout
    )
    assert [r["id"] for r in seeder.runs_of_flow(flow)] == [runs[0]["id"]]
    other = runner("apply", "plan.json", "--yes", api_url="http://127.0.0.1:9/api", cwd=tmp_path)
    assert other.returncode == 1
    assert other.stderr.startswith(
        f"runner: the plan was made against {api_url}, not http://127.0.0.1:9/api"
    )


@pytest.mark.parametrize("kill_after", [1, 15, 40])
def test_sigkill_then_resume_recreates_each_run_exactly_once(
    api_url: str, seeder: Seeder, tmp_path: Path, kill_after: int
) -> None:
    flow = seeder.flow(unique("killed"))
    dep = seeder.deployment(flow)
    late = seeder.late_runs(60, flow, deployment=dep, spread=timedelta(seconds=10))
    path = write_playbook(tmp_path, flow, "{reschedule: {delay: 6h, strategy: recreate}}")
    process = start(
        "apply", str(path), "--yes", "--concurrency", "4", api_url=api_url, cwd=tmp_path
    )
    wait_for_records(tmp_path, kill_after, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    resumed = runner("apply", str(path), "--yes", api_url=api_url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert process.returncode == -signal.SIGKILL, "the apply ended before it was killed"
    assert "Resuming unfinished plan" in resumed.stdout
    left = seeder.runs_of_flow(flow)
    assert len(left) == 60, "a run was lost or duplicated"
    assert not {r["id"] for r in late} & {r["id"] for r in left}
    assert {r["state_name"] for r in left} == {"Scheduled"}
    keys = [r["idempotency_key"] for r in left]
    assert len(set(keys)) == 60 and all(k and k.startswith("runner:") for k in keys)


def test_ctrl_c_stops_cleanly_and_resume_finishes(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(150, flow, "Running")
    path = write_playbook(tmp_path, flow, "cancel")
    process = start_per_run(path, 2, api_url=api_url, cwd=tmp_path)
    wait_for_records(tmp_path, 10, process)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the apply finished before the signal arrived")
    assert process.returncode == 130, err
    assert "SIGINT: finishing requests in flight, then stopping" in err
    assert "resume with: runner apply --resume .runner/" in err
    resume_path = err.split("resume with: runner apply --resume ")[1].split()[0]
    resumed = runner("apply", "--resume", resume_path, "--yes", api_url=api_url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    states = {r["id"]: r["state_name"] for r in seeder.runs_of_flow(flow)}
    assert set(states.values()) == {"Cancelling"}
    for run in runs[:20]:
        history = seeder._call("GET", "flow_run_states/", params={"flow_run_id": run["id"]})
        assert [s["name"] for s in history] == ["Running", "Cancelling"]


def test_second_apply_of_the_same_plan_is_refused_while_the_first_runs(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    seeder.runs(150, flow, "Running")
    path = write_playbook(tmp_path, flow, "cancel")
    process = start_per_run(path, 1, api_url=api_url, cwd=tmp_path)
    try:
        wait_for_records(tmp_path, 3, process)
        (workdir,) = (tmp_path / ".runner").iterdir()
        second = runner("apply", "--resume", str(workdir), "--yes", api_url=api_url, cwd=tmp_path)
        if process.poll() is None:
            assert second.returncode == 1
            assert (
                f"runner: another apply of plan {workdir.name} is running (pid {process.pid})"
                in second.stderr
            )
    finally:
        process.wait(timeout=300)
    assert process.returncode == 0


def artifacts_with_key(seeder: Seeder, key: str) -> list[dict[str, Any]]:
    found = seeder._call("POST", "artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}})
    return list(found)


def test_artifact_stores_the_summary_in_prefect(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    seeder.runs(3, flow, "Completed")
    name = unique("Nightly Clean-up")
    key = "runner-" + name.lower().replace(" ", "-").replace("_", "-")
    path = write_playbook(tmp_path, flow, "delete", name=name)
    result = runner("apply", str(path), "--yes", "--artifact", api_url=api_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Summary stored as artifact {key}.\n" in result.stdout
    (artifact,) = artifacts_with_key(seeder, key)
    assert artifact["type"] == "markdown"
    assert "**Applied**: 3 done, 0 drifted (left alone), 0 failed, 0 pending" in artifact["data"]
    assert artifact["description"].startswith(f"runner apply of {name} (plan ")
    dry = runner("apply", str(path), "--dry-run", "--artifact", api_url=api_url, cwd=tmp_path)
    assert dry.returncode == 2
    assert "--artifact records an apply; for a dry run use --format markdown" in dry.stderr


def test_artifact_whose_answer_was_lost_is_stored_once(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    seeder.runs(2, flow, "Completed")
    name = unique("lost-answer")
    path = write_playbook(tmp_path, flow, "delete", name=name)
    with FaultProxy(
        prefect_server.api_url,
        seed=1,
        rate=1.0,
        kinds=("reset-after",),
        only="POST /api/artifacts/$",
    ) as proxy:
        result = runner(
            "apply", str(path), "--yes", "--artifact", api_url=proxy.api_url, cwd=tmp_path
        )
        assert proxy.injected["reset-after"] >= 1
    assert result.returncode == 0, result.stderr
    assert len(artifacts_with_key(seeder, f"runner-{name.lower()}")) == 1


def test_artifact_that_cannot_be_stored_fails_the_apply_but_keeps_the_changes(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    seeder.runs(2, flow, "Completed")
    name = unique("refused")
    path = write_playbook(
        tmp_path, flow, "delete", name=name, extra="defaults: {retry: {max_attempts: 2}}\n"
    )
    with FaultProxy(
        prefect_server.api_url, seed=1, rate=1.0, kinds=("503",), only="artifacts/"
    ) as proxy:
        result = runner(
            "apply", str(path), "--yes", "--artifact", api_url=proxy.api_url, cwd=tmp_path
        )
    assert result.returncode == 1
    assert "Applied: 2 done, 0 drifted (left alone), 0 failed, 0 pending" in result.stdout
    assert (
        f"runner: the changes are recorded, but the artifact runner-{name.lower()} was not:"
        f" POST {proxy.api_url}/artifacts/: HTTP 503 after 2 attempts" in result.stderr
    ), result.stderr
    assert seeder.runs_of_flow(flow) == []


def test_a_resume_honours_max_plan_age(api_url: str, seeder: Seeder, tmp_path: Path) -> None:
    """An unfinished apply whose plan is three days old: `--resume` refuses it unless the age
    limit is lifted, and a plain apply of the playbook plans anew instead of resuming it (one
    change that keeps failing must not pin every later apply to an old plan)."""
    import anyio

    from runner.client import PrefectClient
    from runner.journal import Journal
    from runner.loader import load_playbook
    from runner.observe import plan_playbook
    from runner.planfile import write_plan
    from runner.settings import ConnectionSettings
    from tests.support.seed import utcnow

    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    path = write_playbook(tmp_path, flow, "cancel")

    async def old_plan() -> Any:
        async with PrefectClient(ConnectionSettings(api_url=api_url)) as client:
            return await plan_playbook(
                load_playbook(str(path)), client, now=utcnow() - timedelta(days=3)
            )

    plan = anyio.run(old_plan)
    workdir = tmp_path / ".runner" / plan.id
    workdir.mkdir(parents=True)
    write_plan(plan, workdir / "plan.json")
    checksum = json.loads((workdir / "plan.json").read_text())["checksum"]
    with Journal(workdir / "checkpoint.jsonl", plan_id=plan.id, plan_checksum=checksum) as journal:
        journal.record(plan.pending[0].key, "failed", detail="HTTP 503 after 10 attempts")

    refused = runner("apply", "--resume", str(workdir), "--yes", api_url=api_url, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr == (
        "runner: the plan is 4320 minutes old (the limit is 60): make a new plan, or pass"
        " --max-plan-age to allow it\n"
    )
    fresh = runner("apply", str(path), "--yes", api_url=api_url, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert (
        f"An unfinished apply in .runner/{plan.id} (plan {plan.id}) is 4320 minutes old, more"
        f" than --max-plan-age: planned anew (runner apply --resume .runner/{plan.id}"
        " --max-plan-age none finishes the old plan instead).\n"
    ) in fresh.stdout
    assert "Applied: 3 done" in fresh.stdout
    assert {r["state_name"] for r in seeder.read_runs(r["id"] for r in runs)} == {"Cancelling"}
    lifted = runner(
        "apply", "--resume", str(workdir), "--yes", "--max-plan-age", "none",
        api_url=api_url, cwd=tmp_path,
    )  # fmt: skip
    # The old plan's changes were made by the new plan: each is drifted, nothing is re-sent.
    assert lifted.returncode == 0, lifted.stdout + lifted.stderr
    assert "Applied: 0 done, 3 drifted (left alone)" in lifted.stdout
