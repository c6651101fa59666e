"""``--max-bytes``: a markdown review that must fit GitHub's job summary (1 MiB a step) lists
runs while they fit and counts the rest, whatever the plan's size."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from runner.loader import load_text
from runner.plan import Observation, Plan, RunView, StepObservation
from runner.planner import make_plan
from runner.render import MIN_MARKDOWN_BYTES, render

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
PLAYBOOK = """\
version: 1
name: big
steps:
  - name: delete the failed runs
    select: {state: {type: FAILED}}
    action: delete
  - name: cancel the late runs
    select: {state: {name: Late}}
    action: cancel
"""


def big_plan(runs_a_step: int) -> Plan:
    """Two steps of ``runs_a_step`` runs each, names in several scripts (bytes > chars)."""

    def runs(state_type: str, state_name: str, prefix: str) -> tuple[RunView, ...]:
        return tuple(
            RunView(
                id=uuid.UUID(int=i + (1 << 64 if prefix == "l" else 0)),
                name=f"{prefix}-ünïcödé-名前-{i}",
                flow="etl",
                deployment="etl/nightly",
                state_type=state_type,
                state_name=state_name,
                expected_start=NOW - timedelta(minutes=i),
            )
            for i in range(runs_a_step)
        )

    observation = Observation(
        now=NOW,
        server_url="http://x/api",
        server_version="3.9.1",
        steps=(
            StepObservation(runs=runs("FAILED", "Failed", "f")),
            StepObservation(runs=runs("SCHEDULED", "Late", "l")),
        ),
    )
    return make_plan(load_text(PLAYBOOK, name="big.yaml", env={}), observation, plan_id="p")


def test_a_plan_past_githubs_limit_is_cut_to_the_room_given() -> None:
    plan = big_plan(6000)
    full = render(plan, "markdown", full=True)
    assert len(full.encode()) > 1024 * 1024  # without the bound: more than GitHub takes
    for room in (1_000_000, 200_000, MIN_MARKDOWN_BYTES):
        text = render(plan, "markdown", full=True, max_bytes=room)
        assert len(text.encode()) <= room, room
        assert text.startswith("### runner plan: big\n")
        assert "**12000 to change (6000 delete, 6000 cancel), 0 unchanged.**" in text
        listed = text.count("| `f-") + text.count("| `l-")
        cut = [line for line in text.splitlines() if "not listed: over the size limit" in line]
        counts = [int(line.split()[3]) for line in cut]  # "| ... and N more runs, not listed"
        assert listed + sum(counts) == 12000, room
        assert cut[-1] == (
            f"| ... and {counts[-1]} more runs, not listed: over the size limit (--max-bytes);"
            " every run is in the saved plan (-o) and in --format json |  |  |  |  |"
        )
    # The first step is listed first: the second gets what room is left.
    text = render(plan, "markdown", full=True, max_bytes=200_000)
    assert text.count("| `f-ünïcödé-名前-") > 1000 and "| `l-" not in text


def test_a_plan_that_fits_is_the_same_with_or_without_the_bound() -> None:
    plan = big_plan(40)
    assert render(plan, "markdown", full=True, max_bytes=1_000_000) == render(
        plan, "markdown", full=True
    )
    assert render(plan, "markdown", max_bytes=1_000_000) == render(plan, "markdown")
    assert "| ... and 15 more |" in render(plan, "markdown", max_bytes=1_000_000)


def test_too_small_a_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes must be at least 4096, not 4095"):
        render(big_plan(1), "markdown", max_bytes=4095)
