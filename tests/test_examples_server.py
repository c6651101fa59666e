"""The example playbooks of issue 19, applied to a real server of their own (an example
selects across the whole server, as an operator's would)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.prefect_server import PrefectServer, start_server
from tests.support.seed import Seeder

ROOT = Path(__file__).parent.parent
pytestmark = [pytest.mark.prefect2_nightly]


@pytest.fixture(scope="module")
def own_server() -> Iterator[PrefectServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


def ended(
    seeder: Seeder, flow: dict[str, Any], state: str, tags: Sequence[str] = ()
) -> dict[str, Any]:
    run = seeder.run(flow, "Running", tags=tags)
    seeder.set_state(run["id"], state.upper(), state)
    return run


def test_cleanup_old_runs_keeps_the_runs_tagged_keep(own_server: PrefectServer) -> None:
    seeder = Seeder(own_server.api_url)
    try:
        flow = seeder.flow()
        # Each run ends through a transition, so the server gives it an end time (Prefect 2.20
        # gives none to a run created in a terminal state).
        old = [
            ended(seeder, flow, state) for state in ("Completed", "Failed", "Cancelled", "Crashed")
        ]
        kept = [
            ended(seeder, flow, "Completed", ["keep"]),
            ended(seeder, flow, "Failed", ["keep", "x"]),
        ]
        active = [seeder.run(flow, "Running"), seeder.run(flow, "Late")]
        playbook = str(ROOT / "playbooks" / "cleanup-old-runs.yaml")
        # A retention of 0s: every run that has ended is "old".
        dry = run_cli(
            "apply", playbook, "--dry-run", "--var", "retention=0s", api_url=own_server.api_url
        )
        assert dry.returncode == 0, dry.stderr
        assert "Summary: 4 to change (4 delete), 0 unchanged" in dry.stdout
        header = next(line for line in dry.stdout.splitlines() if line.startswith("  run "))
        assert " tags " in header
        assert "matched none" not in dry.stdout
        applied = run_cli(
            "apply", playbook, "--yes", "--var", "retention=0s", api_url=own_server.api_url
        )
        assert applied.returncode == 0, applied.stderr
        assert seeder.read_runs(r["id"] for r in old) == []
        assert sorted(
            r["id"] for r in seeder.read_runs(r["id"] for r in [*kept, *active])
        ) == sorted(r["id"] for r in [*kept, *active])
        # Nothing tagged keep is left to protect: the plan says the exclusion matched nothing.
        again = run_cli(
            "apply",
            playbook,
            "--dry-run",
            "--var",
            "retention=0s",
            "--var",
            "keep_tag=Keep",
            api_url=own_server.api_url,
        )
        assert again.returncode == 0, again.stderr
        assert "Summary: 2 to change (2 delete), 0 unchanged" in again.stdout
        assert (
            "Note: step 1 ('delete terminal runs older than 0s, except those tagged Keep'):"
            " select.exclude.tags matched none of the selected runs" in again.stdout
        )
    finally:
        seeder.close()


def test_restart_backlog_staggers_the_late_runs_oldest_first(own_server: PrefectServer) -> None:
    seeder = Seeder(own_server.api_url)
    try:
        flow = seeder.flow("etl")
        deployment = seeder.deployment(flow, "nightly")
        late = seeder.late_runs(4, flow, deployment=deployment)  # newest first
        other = seeder.run(flow, "Late")  # not of the deployment
        playbook = str(ROOT / "playbooks" / "restart-backlog.yaml")
        applied = run_cli("apply", playbook, "--yes", api_url=own_server.api_url)
        assert applied.returncode == 0, applied.stderr
        runs = {r["id"]: r for r in seeder.read_runs(r["id"] for r in [*late, other])}
        times = [
            datetime.fromisoformat(
                runs[r["id"]]["next_scheduled_start_time"].replace("Z", "+00:00")
            )
            for r in reversed(late)  # oldest first
        ]
        assert {runs[r["id"]]["state"]["name"] for r in late} == {"Scheduled"}
        assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(minutes=2)] * 3
        made = datetime.now(timezone.utc)
        assert made < times[0] <= made + timedelta(minutes=5)
        assert runs[other["id"]]["state"]["name"] == "Late"
    finally:
        seeder.close()
