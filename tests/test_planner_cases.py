"""The planner, data-driven: each file in planner_cases/ holds a playbook, the runs the server
had (and which steps' selections matched each), and the plan expected, row by row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner import spool
from runner.loader import load_text
from runner.plan import Observation, RunView, StepObservation
from runner.planner import make_plan
from runner.render import carried_line, describe_after, describe_before
from runner.spool import Spool, is_spooled
from tests.support.seed import STATES

CASES = Path(__file__).parent / "planner_cases"
NAMESPACE = uuid.UUID("6f1c1c8e-7d4c-4c1e-9d6e-2f4a3b5c6d7e")


def run_id(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"run:{name}")


def deployment_id(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"deployment:{name}")


def state_id(name: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"state:{name}")


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    return (
        value
        if isinstance(value, datetime)
        else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )


def view(raw: dict[str, Any]) -> RunView:
    state_type, state_name = STATES[raw["state"]]
    return RunView(
        id=run_id(raw["name"]),
        name=raw["name"],
        flow=raw.get("flow", "flow"),
        deployment=raw.get("deployment"),
        deployment_id=deployment_id(raw["deployment"]) if raw.get("deployment") else None,
        state_type=state_type,
        state_name=state_name,
        state_id=state_id(raw["name"]),
        expected_start=_dt(raw.get("expected_start")),
        next_scheduled_start=_dt(raw.get("next_scheduled_start")),
        state_scheduled_time=_dt(raw.get("state_scheduled_time")),
        start=_dt(raw.get("start")),
        end=_dt(raw.get("end")),
        tags=tuple(raw.get("tags", ())),
        work_queue=raw.get("work_queue"),
        work_pool=raw.get("work_pool"),
        parameters=raw.get("parameters"),
        job_variables=raw.get("job_variables"),
    )


def spooled(runs: list[RunView]) -> Sequence[RunView]:
    held: Spool[RunView] = Spool()
    held.extend(runs)
    return held.seal()


@pytest.mark.parametrize("spilled", [False, True], ids=["in-memory", "spooled"])
@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.yaml")))
def test_planner_case(case: str, spilled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case twice: as plans are held in memory, and as a large plan is held, every
    spool on disk from its first item (two items a chunk, sorts merged from runs of three)."""
    if spilled:
        monkeypatch.setattr(spool, "SPILL_AT", 0)
        monkeypatch.setattr(spool, "CHUNK", 2)
        monkeypatch.setattr(spool, "SORT_RUN", 3)
    data = yaml.safe_load((CASES / f"{case}.yaml").read_text())
    playbook = load_text(yaml.safe_dump(data["playbook"]), name=f"{case}.yaml", env={})
    runs = [view(r) for r in data["runs"]]
    matches = {r["name"]: r["match"] for r in data["runs"]}
    steps = tuple(
        StepObservation(runs=spooled([r for r in runs if i in matches[r.name]]))
        for i in range(len(playbook.steps))
    )
    now = _dt(data["now"])
    assert now is not None
    observation = Observation(
        now=now, server_url="http://server/api", server_version="3.8.8", steps=steps
    )
    plan = make_plan(playbook, observation, plan_id="PLAN")
    for step in plan.steps:
        assert is_spooled(step.changes) == (spilled and bool(step.changes))

    got = [[[c.run.name, c.op, describe_after(c)] for c in step.changes] for step in plan.steps]
    assert got == data["expected"]
    assert list(plan.violations) == data["violations"]
    by_name = {c.run.name: c for c in plan.changes}
    for name, message in data.get("messages", {}).items():
        state = by_name[name].state
        assert state is not None and state.message == message
    for name, key in data.get("keys", {}).items():
        dep = by_name[name].run.deployment
        expected_key = (
            key.replace(f"DEPLOYMENT({dep})", str(deployment_id(dep or "")))
            .replace(f"RUN({name})", str(run_id(name)))
            .replace(f"STATE({name})", str(state_id(name)))
        )
        assert by_name[name].idempotency_key == expected_key
    for name, carried in data.get("carry", {}).items():
        assert list(by_name[name].carry or ()) == carried
    for index, line in data.get("carried", {}).items():
        assert carried_line(plan.steps[index]) == line
    for name, before in data.get("before", {}).items():
        assert describe_before(by_name[name]) == before
    # The plan survives its own JSON form.
    from runner.planfile import dumps, plan_from_json, plan_to_json

    assert plan_from_json(plan_to_json(plan)) == plan
    # Written with one change a line, read back the same.
    text = dumps(plan)
    assert json.loads(text) == plan_to_json(plan)
    for change in plan.changes:
        lines = [line for line in text.splitlines() if f'"{change.run.id}"' in line]
        assert len(lines) == 1 and lines[0].startswith('        {"key": ')


def test_there_are_cases() -> None:
    assert len(list(CASES.glob("*.yaml"))) >= 8
