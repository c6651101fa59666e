"""``runner undo`` against a real server: apply a playbook, undo it, and every undoable run is
as it was (state type and name, scheduled time, tags, message); what cannot be undone is
listed with the reason; a run changed in between is left alone; a partial undo resumes; a
saved undo plan is applied like any plan, drift included."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from runner.apply import Applied, ApplyRequest, apply
from runner.client import PrefectClient
from runner.executor import ApplyOptions, Executor, Progress
from runner.journal import Journal
from runner.planfile import write_plan
from runner.settings import ConnectionSettings
from runner.undo import plan_undo
from tests.support.cli import run_cli
from tests.support.seed import Seeder

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def as_seen(seeder: Seeder, runs: list[dict[str, Any]]) -> dict[str, tuple[object, ...]]:
    """What an undo puts back, by run id: state type, name, scheduled time, tags, message."""
    out: dict[str, tuple[object, ...]] = {}
    for run in seeder.read_runs(r["id"] for r in runs):
        state = run["state"]
        when = (state.get("state_details") or {}).get("scheduled_time")
        out[run["id"]] = (
            state["type"],
            state["name"],
            _time(when) if state["type"] == "SCHEDULED" else None,
            tuple(run["tags"]),
            state.get("message"),
        )
    return out


async def run_apply(request: ApplyRequest) -> tuple[Applied, str]:
    out = io.StringIO()
    applied = await apply(request, out=out, err=io.StringIO())
    return applied, out.getvalue()


def playbook(tmp_path: Path, flow: str) -> Path:
    path = tmp_path / "ops.yaml"
    path.write_text(
        f"""
version: 1
name: undo-test-{flow}
guards: {{allow_active: true}}
steps:
  - name: reschedule late
    select: {{flows: {flow}, state: {{name: Late}}}}
    action: {{reschedule: {{delay: 6h}}}}
  - name: retag
    select: {{flows: {flow}, tags: {{any: [t1]}}}}
    action: {{tag: {{add: [x], remove: [t1]}}}}
  - name: cancel
    select: {{flows: {flow}, tags: {{any: [c, r]}}}}
    action: cancel
  - name: mark done
    select: {{flows: {flow}, tags: {{any: [f]}}}}
    action: {{set_state: {{type: COMPLETED, force: true}}}}
  - name: clean up
    select: {{flows: {flow}, tags: {{any: [d]}}}}
    action: delete
""",
        encoding="utf-8",
    )
    return path


async def test_apply_then_undo_puts_every_undoable_run_back(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    late = seeder.late_runs(2, flow)
    tagged = seeder.runs(2, flow, "Scheduled", tags=["t1", "keep"])
    scheduled = seeder.runs(3, flow, "Scheduled", tags=["c"])
    failed = seeder.run(flow, "Failed", tags=["f"])
    seeder._call(
        "POST",
        f"flow_runs/{failed['id']}/set_state",
        json={"state": {"type": "FAILED", "name": "Failed", "message": "boom"}, "force": True},
    )
    deleted = seeder.run(flow, "Completed", tags=["d"])
    running = seeder.run(flow, "Running", tags=["r"])
    undoable = [*late, *tagged, *scheduled[:2], failed]
    before = as_seen(seeder, undoable)
    state_dir = tmp_path / "state"

    applied, _ = await run_apply(
        ApplyRequest(
            target=str(playbook(tmp_path, flow["name"])),
            settings=settings,
            state_dir=state_dir,
            server_lock=False,
        )
    )
    assert applied.code == 0 and applied.plan is not None
    workdir = state_dir / applied.plan.id
    # Someone moves a cancelled run on between the apply and the undo: a new Cancelled state.
    moved = scheduled[2]
    seeder.set_state(moved["id"], "CANCELLED", "Cancelled")
    moved_state = seeder.read_run(moved["id"])["state"]["id"]  # type: ignore[index]

    reviewed, text = await run_apply(
        ApplyRequest(undo=str(workdir), settings=settings, state_dir=state_dir, dry_run=True)
    )
    assert reviewed.code == 0 and reviewed.plan is not None
    undo = reviewed.plan
    assert undo.playbook_name == f"undo of {applied.plan.id}"
    inverse = {
        str(c.run.id): (c.op, c.state.type if c.state else None, c.state.name if c.state else None)
        for c in undo.pending
    }
    assert inverse == {
        late[0]["id"]: ("set_state", "SCHEDULED", "Late"),
        late[1]["id"]: ("set_state", "SCHEDULED", "Late"),
        tagged[0]["id"]: ("tag", None, None),
        tagged[1]["id"]: ("tag", None, None),
        scheduled[0]["id"]: ("set_state", "SCHEDULED", "Scheduled"),
        scheduled[1]["id"]: ("set_state", "SCHEDULED", "Scheduled"),
        failed["id"]: ("set_state", "FAILED", "Failed"),
    }
    by_id = {str(c.run.id): c for c in undo.pending}
    assert by_id[failed["id"]].state.message == "boom"  # type: ignore[union-attr]
    assert by_id[tagged[0]["id"]].tags == ("t1", "keep")
    archive = workdir / "archive.jsonl.gz"
    assert {str(c.run.id): c.reason for c in undo.changes if c.is_noop} == {
        moved["id"]: "changed since the apply (now Cancelled, in a state the apply did not"
        " leave): left alone",
        deleted["id"]: f"deleted by the apply, which cannot be undone (its record is in the"
        f" archive {archive})",
        running["id"]: "cancelled while Running by the apply: its infrastructure was torn down,"
        " which no state brings back (retry the run instead)",
    }
    assert "Summary: 7 to change (7 undo), 3 unchanged\n" in text
    assert "unchanged: deleted by the apply, which cannot be undone (its record is in" in text
    assert not (state_dir / undo.id).exists()  # a dry run writes nothing

    done, text = await run_apply(
        ApplyRequest(undo=str(workdir), settings=settings, state_dir=state_dir, server_lock=False)
    )
    assert done.code == 0, text
    assert "Applied: 7 done, 0 drifted (left alone), 0 failed, 0 pending" in text
    assert as_seen(seeder, undoable) == before
    left_alone = seeder.read_run(moved["id"])
    assert left_alone is not None and left_alone["state"]["id"] == moved_state
    assert seeder.read_run(deleted["id"]) is None

    # Undone already: a second undo has nothing to do, and says why.
    again, text = await run_apply(
        ApplyRequest(undo=str(workdir), settings=settings, state_dir=state_dir, dry_run=True)
    )
    assert again.plan is not None and not again.plan.has_changes
    assert f"unchanged: undone already (undo plan {done.plan.id})" in text  # type: ignore[union-attr]

    # The undo of the undo puts back what the apply did.
    assert done.plan is not None
    redo, text = await run_apply(
        ApplyRequest(
            undo=str(state_dir / done.plan.id),
            settings=settings,
            state_dir=state_dir,
            server_lock=False,
        )
    )
    assert redo.code == 0, text
    assert "Applied: 7 done" in text
    now = as_seen(seeder, undoable)
    assert [now[r["id"]][:2] for r in undoable] == [
        ("SCHEDULED", "Scheduled"),
        ("SCHEDULED", "Scheduled"),
        ("SCHEDULED", "Scheduled"),
        ("SCHEDULED", "Scheduled"),
        ("CANCELLED", "Cancelled"),
        ("CANCELLED", "Cancelled"),
        ("COMPLETED", "Completed"),
    ]
    assert [now[r["id"]][3] for r in tagged] == [("keep", "x"), ("keep", "x")]


async def test_a_partial_undo_resumes(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(4, flow, "Scheduled", tags=["c"])
    before = as_seen(seeder, runs)
    state_dir = tmp_path / "state"
    applied, _ = await run_apply(
        ApplyRequest(
            target=str(playbook(tmp_path, flow["name"])),
            settings=settings,
            state_dir=state_dir,
            server_lock=False,
        )
    )
    assert applied.plan is not None
    workdir = state_dir / applied.plan.id

    # An undo stopped after its first change (as by Ctrl-C): one run back, three pending.
    async with PrefectClient(settings) as client:
        undo = await plan_undo(workdir, client, state_dir=state_dir)
        folder = state_dir / undo.id
        folder.mkdir()
        checksum = write_plan(undo, folder / "plan.json")
        stop = anyio.Event()

        def after_one(progress: Progress) -> None:
            if progress.finished:
                stop.set()

        with Journal(
            folder / "checkpoint.jsonl", plan_id=undo.id, plan_checksum=checksum
        ) as journal:
            partial = await Executor(
                client,
                undo,
                journal,
                options=ApplyOptions(concurrency=1, strategy="per-run"),
                stop=stop,
                on_progress=after_one,
            ).run()
    assert (partial.count("done"), partial.count("pending")) == (1, 3)

    resumed, text = await run_apply(
        ApplyRequest(undo=str(workdir), settings=settings, state_dir=state_dir, server_lock=False)
    )
    assert resumed.code == 0, text
    assert text.startswith(f"Resuming unfinished undo {undo.id} from {folder} (made ")
    assert "Applied: 4 done, 0 drifted (left alone), 0 failed, 0 pending" in text  # 1 before
    assert as_seen(seeder, runs) == before


async def test_a_saved_undo_plan_leaves_a_run_changed_before_its_apply_alone(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(2, flow, "Scheduled", tags=["c"])
    before = as_seen(seeder, runs)
    state_dir = tmp_path / "state"
    result = run_cli(
        "apply",
        str(playbook(tmp_path, flow["name"])),
        "--yes",
        "--no-server-lock",
        "--state-dir",
        str(state_dir),
        api_url=api_url,
    )
    assert result.returncode == 0, result.stderr
    (workdir,) = state_dir.iterdir()
    saved = tmp_path / "undo.json"
    result = run_cli(
        "undo", str(workdir), "-o", str(saved), "--state-dir", str(state_dir), api_url=api_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(
        f"Plan saved to {saved}: apply exactly this with `runner apply {saved}`.\n"
    )
    assert [p.name for p in state_dir.iterdir()] == [workdir.name]  # nothing sent or kept

    seeder.set_state(runs[0]["id"], "CANCELLED", "Cancelled")  # someone, in between
    result = run_cli(
        "apply",
        str(saved),
        "--yes",
        "--no-server-lock",
        "--state-dir",
        str(state_dir),
        api_url=api_url,
    )
    assert result.returncode == 0, result.stderr
    assert "Applied: 1 done, 1 drifted (left alone), 0 failed, 0 pending" in result.stdout
    assert (
        f"  drifted: {runs[0]['name']} ({runs[0]['id']}): in a new Cancelled state since the plan\n"
    ) in result.stdout
    now = as_seen(seeder, runs)
    assert now[runs[1]["id"]] == before[runs[1]["id"]]
    assert now[runs[0]["id"]][:2] == ("CANCELLED", "Cancelled")


def test_an_undo_of_a_folder_never_applied_is_refused(api_url: str, tmp_path: Path) -> None:
    result = run_cli("undo", str(tmp_path), "--dry-run", api_url=api_url)
    assert result.returncode == 1
    assert result.stderr == (
        f"runner: {tmp_path}: not the folder of an apply (no plan.json; runner apply keeps its"
        " plan and checkpoint in .runner/<plan-id>/)\n"
    )


def _paused(seeder: Seeder, path: str, field: str = "is_paused") -> bool:
    return bool(seeder._call("GET", path)[field])


def test_an_incident_pause_is_undone_as_it_was_made(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """playbooks/incident-pause.yaml applied, then undone: the queues and the deployment it
    paused are resumed, its cancelled Late run is Late again; a queue paused before the
    incident stays paused, and one resumed by hand in between is left alone."""
    pool = seeder.work_pool()
    busy = seeder.work_queue(pool["name"])
    held = seeder.work_queue(pool["name"])
    seeder._call("PATCH", f"work_queues/{held['id']}", json={"is_paused": True})
    flow = seeder.flow()
    deployment = seeder.deployment(flow, "feed", work_pool=pool["name"])
    late = seeder.run(flow, "Late", deployment=deployment)
    before = as_seen(seeder, [late])
    state_dir = tmp_path / "state"
    result = run_cli(
        "apply",
        "playbooks/incident-pause.yaml",
        "--var",
        f"pool={pool['name']}",
        "--yes",
        "--state-dir",
        str(state_dir),
        api_url=api_url,
    )
    assert result.returncode == 0, result.stderr
    assert _paused(seeder, f"work_queues/{busy['id']}")
    assert _paused(seeder, f"deployments/{deployment['id']}", "paused")
    assert as_seen(seeder, [late])[late["id"]][:2] == ("CANCELLED", "Cancelled")
    (workdir,) = state_dir.iterdir()

    seeder._call("PATCH", f"work_queues/{busy['id']}", json={"is_paused": False})  # by hand
    result = run_cli(
        "undo", str(workdir), "--dry-run", "--state-dir", str(state_dir), api_url=api_url
    )
    assert result.returncode == 0, result.stderr
    assert "Summary: 3 to change (1 undo, 2 resume), 1 unchanged\n" in result.stdout
    assert (
        f"  {busy['name']}  {pool['name']}  ready   -> unchanged: changed since the apply (now"
        " ready): left alone\n"
    ) in result.stdout, result.stdout
    result = run_cli("undo", str(workdir), "--yes", "--state-dir", str(state_dir), api_url=api_url)
    assert result.returncode == 0, result.stderr
    assert not _paused(seeder, f"deployments/{deployment['id']}", "paused")
    assert _paused(seeder, f"work_queues/{held['id']}")  # paused before the incident
    queues = {
        q["name"]: q["is_paused"]
        for q in seeder._call("POST", f"work_pools/{pool['name']}/queues/filter", json={})
    }
    assert queues == {"default": False, busy["name"]: False, held["name"]: True}
    assert as_seen(seeder, [late]) == before
