"""Property tests: structurally valid but semantically odd playbooks (huge limits, negative or
enormous durations, times far in the past or future, unicode everywhere, many steps) against
odd runs. Always a clear PlaybookError or a plan that renders and survives its JSON round
trip; never another exception.

Examples: 300 by default; HYPOTHESIS_PROFILE=full runs 10,000.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import planfile
from runner.errors import PlaybookError
from runner.loader import load_text
from runner.plan import Observation, RunView, StepObservation
from runner.planfile import dumps, plan_from_json, plan_to_json
from runner.planner import make_plan
from runner.render import render
from tests.support.seed import STATES

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
SORTS = [
    "ID_DESC",
    "START_TIME_ASC",
    "START_TIME_DESC",
    "EXPECTED_START_TIME_ASC",
    "EXPECTED_START_TIME_DESC",
    "NAME_ASC",
    "NAME_DESC",
    "NEXT_SCHEDULED_START_TIME_ASC",
    "END_TIME_DESC",
]
# Names a playbook accepts (no control characters: the loader refuses those, see
# test_hostile_input), in every other script; odd values live in the other fields.
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() == s and s.strip())
durations = st.sampled_from(
    ["0s", "1s", "90s", "-6h", "6h", "1d12h", "99999d", "36500d", "PT0S", "P1000Y", "PT6H", "-1s"]
)
times = st.sampled_from(
    [
        "now",
        "-30d",
        "now-6h",
        "now+6h",
        "-36500d",
        "now+36500d",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "2026-11-22",
        "2026-02-30",
    ]
)
limits = st.one_of(st.integers(min_value=-5, max_value=10**18), st.just(0))


@st.composite
def selects(draw: st.DrawFn) -> dict[str, Any]:
    select: dict[str, Any] = {}
    if draw(st.booleans()):
        select["flows"] = draw(st.lists(names, min_size=1, max_size=3))
    if draw(st.booleans()):
        state: dict[str, Any] = {}
        if draw(st.booleans()):
            state["type"] = draw(st.sampled_from([t for t, _ in STATES.values()]))
        else:
            state["name"] = draw(st.one_of(st.sampled_from([n for _, n in STATES.values()]), names))
        select["state"] = state
    if draw(st.booleans()):
        select["tags"] = {"all": draw(st.lists(names, min_size=1, max_size=3))}
    if draw(st.booleans()):
        window = {draw(st.sampled_from(["after", "before"])): draw(times)}
        select[draw(st.sampled_from(["expected_start", "start", "end"]))] = window
    if draw(st.booleans()):
        select["sort"] = draw(st.sampled_from(SORTS))
    if draw(st.booleans()):
        select["limit"] = draw(limits)
    if draw(st.booleans()):
        select["name_like"] = draw(names)
    return select


@st.composite
def actions(draw: st.DrawFn) -> Any:
    kind = draw(
        st.sampled_from(
            ["delete", "cancel", "set_state", "reschedule", "retry", "resume", "tag", "tag-remove"]
        )
    )
    if kind in ("delete", "resume"):
        return kind
    if kind == "cancel":
        return {"cancel": {"message": draw(st.text(max_size=300))}}
    if kind == "set_state":
        state = draw(st.sampled_from([t for t, _ in STATES.values()]))
        return {"set_state": {"type": state, "name": draw(names), "force": draw(st.booleans())}}
    if kind == "reschedule":
        body: dict[str, Any] = (
            {"delay": draw(durations)} if draw(st.booleans()) else {"at": draw(times)}
        )
        if "delay" in body and draw(st.booleans()):
            body["from"] = draw(st.sampled_from(["scheduled", "now"]))
        if draw(st.booleans()):
            body["spread"] = draw(durations)
        if draw(st.booleans()):
            body["allow_past"] = draw(st.booleans())
        body["strategy"] = draw(st.sampled_from(["in_place", "recreate"]))
        return {"reschedule": body}
    if kind == "retry":
        return {"retry": {"delay": draw(durations)}} if draw(st.booleans()) else "retry"
    if kind == "tag":
        return {"tag": {"add": draw(st.lists(names, min_size=1, max_size=4))}}
    return {"tag": {"remove": draw(st.lists(names, min_size=1, max_size=4))}}


@st.composite
def playbooks(draw: st.DrawFn) -> dict[str, Any]:
    steps = [
        {"name": draw(names), "select": draw(selects()), "action": draw(actions())}
        for _ in range(draw(st.integers(min_value=1, max_value=6)))
    ]
    document: dict[str, Any] = {"version": 1, "name": draw(names), "steps": steps}
    if draw(st.booleans()):
        document["guards"] = {
            "max_affected": draw(limits),
            "allow_active": draw(st.booleans()),
        }
    if draw(st.booleans()):
        document["defaults"] = {
            "concurrency": draw(st.integers(min_value=-1, max_value=10**6)),
            "rate_limit": draw(st.floats(min_value=-1, max_value=1e9, allow_nan=False)),
        }
    return document


odd_times = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(timezone.utc),
    ),
)


@st.composite
def runs(draw: st.DrawFn) -> list[RunView]:
    found = []
    for i in range(draw(st.integers(min_value=0, max_value=12))):
        state_type, state_name = draw(st.sampled_from(list(STATES.values())))
        deployment = draw(st.one_of(st.none(), names))
        found.append(
            RunView(
                id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
                name=draw(names) + str(i),
                flow=draw(names),
                deployment=f"f/{deployment}" if deployment else None,
                deployment_id=uuid.uuid4() if deployment else None,
                state_type=state_type,
                state_name=state_name,
                expected_start=draw(odd_times),
                next_scheduled_start=draw(odd_times),
                state_scheduled_time=draw(odd_times),
                start=draw(odd_times),
                end=draw(odd_times),
                tags=tuple(draw(st.lists(names, max_size=3))),
                work_queue=draw(st.one_of(st.none(), names)),
                work_pool=draw(st.one_of(st.none(), names)),
                parameters=draw(st.one_of(st.none(), st.just({"n": 1}))),
                job_variables=draw(st.one_of(st.none(), st.just({"env": {"A": "b"}}))),
            )
        )
    return found


# Nightly: hypothesis takes about a minute to draw a list of 60 playbooks this large (it
# draws again while a list overruns its buffer), a twentieth of the CI suite's time.
@pytest.mark.nightly
@settings(max_examples=3, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(playbooks(), min_size=60, max_size=60))
def test_most_generated_playbooks_reach_the_planner(documents: list[dict[str, Any]]) -> None:
    """The property below is about the planner: most of what it is given must load."""
    loaded = 0
    for document in documents:
        text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
        try:
            load_text(text, name="odd.yaml", env={})
        except PlaybookError:
            continue
        loaded += 1
    assert loaded >= len(documents) // 2, f"{loaded} of {len(documents)} loaded"


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(playbooks(), runs(), st.data())
def test_odd_playbooks_plan_or_fail_clearly(
    document: dict[str, Any], seen: list[RunView], data: st.DataObject
) -> None:
    text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    try:
        playbook = load_text(text, name="odd.yaml", env={})
    except PlaybookError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == "odd.yaml" and problem.line >= 1 and problem.message
        return
    steps = tuple(
        StepObservation(
            runs=tuple(
                data.draw(st.lists(st.sampled_from(seen), unique_by=lambda r: r.id)) if seen else ()
            )
        )
        for _ in playbook.steps
    )
    observation = Observation(
        now=NOW, server_url="http://x/api", server_version="3.8.8", steps=steps
    )
    plan = make_plan(playbook, observation, plan_id="p")
    for fmt in ("text", "markdown", "json"):
        assert render(plan, fmt, full=True)
    dumps_whole = dumps(plan)
    # Written change by change, the document (and its checksum) is the one built whole.
    assert json.loads(dumps(plan)) == plan_to_json(plan)
    # Its change lines written (and hashed) a few at a time: the same text, byte for byte.
    for lines_a_write in (1, 2, 3):
        with mock.patch.object(planfile, "_LINES_A_WRITE", lines_a_write):
            assert dumps(plan) == dumps_whole
    again = plan_from_json(json.loads(dumps(plan)), source="round trip")
    assert dumps(again) == dumps(plan)
    for step in plan.steps:
        limit = playbook.steps[step.index].select.limit
        assert limit is None or step.selected <= limit
        for change in step.changes:
            if change.state is not None and change.state.scheduled_time is not None:
                assert change.state.scheduled_time.tzinfo is not None


def test_a_very_long_playbook_loads_or_fails_clearly() -> None:
    steps = "".join(
        f"  - name: step {i} ✓\n    select: {{flows: [f{i}], sort: NAME_ASC, limit: {i + 1}}}\n    action: delete\n"
        for i in range(5000)
    )
    playbook = load_text(f"version: 1\nname: long\nsteps:\n{steps}", name="long.yaml", env={})
    assert len(playbook.steps) == 5000
    observation = Observation(
        now=NOW,
        server_url="http://x/api",
        server_version=None,
        steps=tuple(StepObservation(runs=()) for _ in playbook.steps),
    )
    assert make_plan(playbook, observation, plan_id="p").steps[4999].name == "step 4999 ✓"


def test_extreme_delays_do_not_overflow() -> None:
    playbook = load_text(
        "version: 1\nname: far\nsteps:\n"
        "  - name: far\n    select: {}\n    action: {reschedule: {delay: 99999d}}\n",
        name="far.yaml",
        env={},
    )
    late = RunView(
        id=uuid.uuid4(),
        name="late",
        flow="f",
        state_type="SCHEDULED",
        state_name="Late",
        expected_start=datetime(9999, 12, 1, tzinfo=timezone.utc),
    )
    observation = Observation(
        now=NOW, server_url="http://x/api", server_version=None, steps=(StepObservation((late,)),)
    )
    plan = make_plan(playbook, observation, plan_id="p")
    [change] = plan.steps[0].changes
    assert change.is_noop
    assert change.reason == "the new start time would be outside the years 1-9999"
