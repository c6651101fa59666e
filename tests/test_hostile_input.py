"""Hostile and broken input: each is a clear error (exit 1, nothing sent, no traceback).

Playbooks, saved plans and output paths; the connection settings' cases are in
test_settings.py. No Prefect server is needed.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.errors import PlaybookError
from runner.loader import load_playbook, load_text

STEP = "version: 1\nsteps:\n  - name: s\n    select: {{{select}}}\n    action: {action}\n"


def problems(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(PlaybookError) as info:
        load_text(text, name="p.yaml", env={}, **kwargs)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


def invoke(*args: str) -> tuple[int, str, str]:
    """``runner ARGS`` in-process: exit code, stdout, stderr."""
    result = CliRunner().invoke(cli, list(args), env={"NO_COLOR": "1"})
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exc_info
    return result.exit_code, result.stdout, result.stderr


# -- playbooks -----------------------------------------------------------------------------

BIG = "9" * 5000  # past Python's 4,300-digit limit for reading whole numbers


def test_a_whole_number_too_long_to_read_is_an_error_anywhere() -> None:
    text = STEP.format(select=f"sort: ID_DESC, limit: {BIG}", action="delete")
    assert problems(text) == [
        "p.yaml:4:36: steps[0].select.limit: a whole number of 5,000 digits (at most 100)"
    ]
    assert problems(f"version: {BIG}\nsteps: []\n") == [
        "p.yaml:1:10: version: a whole number of 5,000 digits (at most 100)"
    ]
    assert problems(f"version: 1\nvars: {{n: 0x{'f' * 200}}}\nsteps: []\n") == [
        "p.yaml:2:11: vars.n: a whole number of 202 digits (at most 100)"
    ]


def test_a_variable_override_too_long_to_read_is_an_error() -> None:
    text = (
        "version: 1\nvars: {n: 1}\nsteps:\n  - name: s\n"
        "    select:\n      sort: ID_DESC\n      limit: ${n}\n    action: delete\n"
    )
    expected = "p.yaml:2:1: vars: {}: a whole number of 5,000 digits (at most 100)"
    assert problems(text, variables={"n": BIG}) == [expected.format("--var n")]
    with pytest.raises(PlaybookError) as info:
        load_text(text, name="p.yaml", env={"RUNNER_VAR_n": BIG})
    assert str(info.value) == expected.format("RUNNER_VAR_n")
    # A value YAML cannot construct (no 13th month) stays text, as other odd values do.
    assert problems(text, variables={"n": "2026-13-01"}) == [
        "p.yaml:7:14: steps[0].select.limit: expected a whole number, got '2026-13-01' (a string)"
    ]


@pytest.mark.parametrize(
    ("select", "action", "expected"),
    [
        (
            "",
            "{reschedule: {delay: 99999999999w}}",
            "p.yaml:5:34: steps[0].action.reschedule.delay: '99999999999w' is too long"
            " (at most 365000d, about 1,000 years)",
        ),
        (
            "",
            "{retry: {delay: PT99999999999999999999.5S}}",
            "p.yaml:5:29: steps[0].action.retry.delay: 'PT99999999999999999999.5S' is too long"
            " (at most 365000d, about 1,000 years)",
        ),
        (
            "end: {before: now-99999999999w}",
            "delete",
            "p.yaml:4:28: steps[0].select.end.before: 'now-99999999999w' is too far from now"
            " (at most 365000d, about 1,000 years)",
        ),
        (
            "start: {after: +5000000w}",
            "delete",
            "p.yaml:4:29: steps[0].select.start.after: '+5000000w' is too far from now"
            " (at most 365000d, about 1,000 years)",
        ),
        (
            "expected_start: {after: '0001-01-01T00:00:00+01:00'}",
            "delete",
            "p.yaml:4:38: steps[0].select.expected_start.after: '0001-01-01T00:00:00+01:00' is"
            " out of range (years 1 to 9999, in UTC)",
        ),
    ],
)
def test_durations_and_times_out_of_range(select: str, action: str, expected: str) -> None:
    assert problems(STEP.format(select=select, action=action)) == [expected]


def test_a_max_plan_age_out_of_range_is_a_usage_error(tmp_path: Path, nothing_sent: None) -> None:
    code, out, err = invoke("apply", "plan.json", "--max-plan-age", "99999999999w")
    assert (code, out) == (2, "")
    assert err.endswith(
        "Error: Invalid value for --max-plan-age: '99999999999w' is too long (at most 365000d,"
        " about 1,000 years)\n"
    )


def test_a_retry_backoff_out_of_range() -> None:
    text = "version: 1\ndefaults: {retry: {max_backoff: 9999999999999999d}}\n" + STEP.format(
        select="", action="delete"
    ).removeprefix("version: 1\n")
    assert problems(text) == [
        "p.yaml:2:33: defaults.retry.max_backoff: '9999999999999999d' is too long"
        " (at most 365000d, about 1,000 years)"
    ]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            'version: 1\nname: "night\\tly"\nsteps:\n  - {name: s, select: {}, action: delete}\n',
            "p.yaml:2:7: name: a tab at character 6: a name cannot hold tabs, line breaks or other"
            " control characters",
        ),
        (
            'version: 1\nsteps:\n  - {name: "a\\x01", select: {}, action: delete}\n',
            "p.yaml:3:12: steps[0].name: the control character U+0001 at character 2: a name"
            " cannot hold tabs, line breaks or other control characters",
        ),
        (
            'version: 1\nsteps:\n  - {name: s, select: {flows: ["etl", "a\\nb"]}, action: delete}\n',
            "p.yaml:3:39: steps[0].select.flows[1]: a line break at character 2: a name cannot"
            " hold tabs, line breaks or other control characters",
        ),
        (
            'version: 1\nsteps:\n  - {name: s, select: {deployments: "f/\\e[2J"}, action: delete}\n',
            "p.yaml:3:37: steps[0].select.deployments: the control character U+001B at character"
            " 3: a name cannot hold tabs, line breaks or other control characters",
        ),
        (
            'version: 1\nsteps:\n  - {name: s, select: {}, action: {tag: {add: ["a\\u2028b"]}}}\n',
            "p.yaml:3:48: steps[0].action.tag.add[0]: the control character U+2028 at character"
            " 2: a name cannot hold tabs, line breaks or other control characters",
        ),
        (
            'version: 1\nsteps:\n  - {name: s, select: {}, action: {cancel: {message: "a\\x00"}}}\n',
            "p.yaml:3:54: steps[0].action.cancel.message: the control character U+0000 at"
            " character 2: tabs and line breaks are allowed, other control characters are not",
        ),
    ],
)
def test_control_characters(yaml_text: str, expected: str) -> None:
    assert problems(yaml_text) == [expected]


def test_tabs_and_line_breaks_are_fine_in_descriptions_and_messages() -> None:
    playbook = load_text(
        'version: 1\ndescription: "one\\ttwo\\nthree"\nsteps:\n'
        '  - {name: s, select: {}, action: {cancel: {message: "a\\tb\\r\\nc"}}}\n',
        env={},
    )
    assert playbook.description == "one\ttwo\nthree"


def test_long_strings() -> None:
    long_name = "x" * 65536
    assert problems(
        f"version: 1\nsteps:\n  - {{name: {long_name}, select: {{}}, action: delete}}\n"
    ) == ["p.yaml:3:12: steps[0].name: too long: 65,536 characters (a name takes at most 256)"]
    text = (
        f"version: 1\nname: {long_name}\nsteps:\n  - name: s\n"
        f"    select: {{flows: [etl, {long_name}], tags: {{any: {long_name}}}}}\n"
        f"    action: {{tag: {{add: [{long_name}]}}}}\n"
    )
    assert problems(text) == [
        "p.yaml:2:7: name: too long: 65,536 characters (a name takes at most 256)",
        "p.yaml:5:27: steps[0].select.flows[1]: too long: 65,536 characters (a name takes at"
        " most 256)",
        "p.yaml:5:65578: steps[0].select.tags.any: too long: 65,536 characters (a name takes at"
        " most 256)",
        "p.yaml:6:26: steps[0].action.tag.add[0]: too long: 65,536 characters (a name takes at"
        " most 256)",
    ]
    text = f"version: 1\ndescription: {'y' * 4097}\nsteps:\n  - {{name: s, select: {{}}, action: delete}}\n"
    assert problems(text) == [
        "p.yaml:2:14: description: too long: 4,097 characters (a text takes at most 4,096)"
    ]
    # the longest allowed
    load_text(
        f"version: 1\nname: {'n' * 256}\ndescription: {'d' * 4096}\n"
        f"steps:\n  - {{name: s, select: {{}}, action: delete}}\n",
        env={},
    )


def test_variables_cannot_grow_a_string_without_bound() -> None:
    text = (
        f"version: 1\nvars: {{a: {'x' * 4000}}}\nsteps:\n"
        "  - name: s\n    select: {}\n"
        f'    action: {{cancel: {{message: "{"${a}" * 100_000}"}}}}\n'
    )
    assert problems(text) == [
        "p.yaml:6:32: steps[0].action.cancel.message: too long once its variables are in"
        " (over 4,096 characters)"
    ]


def test_a_playbook_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.write(b"version: 1\n# ")
        handle.truncate(50 * 1024 * 1024)  # 50 MB (sparse: costs no disk)
    with pytest.raises(PlaybookError) as info:
        load_playbook(path, env={})
    expected = f"{path}:1:1: too large: a playbook is at most 1 MiB (1,048,576 bytes)"
    assert str(info.value) == expected
    code, out, err = invoke("validate", str(path))
    assert (code, out) == (1, "")
    assert err == f"{expected}\n1 of 1 playbook invalid, 1 problem\n"


# -- saved plans ---------------------------------------------------------------------------

API_URL = "http://runner.invalid/api"
RUN_ID = "00000000-0000-4000-8000-000000000001"


class Sent(BaseException):
    """A request left runner (a BaseException: no retry loop or handler swallows it)."""


@pytest.fixture
def nothing_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any request runner tries to send fails the test."""
    import httpx

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: object) -> None:
        raise Sent(f"{request.method} {request.url}")

    monkeypatch.setattr(httpx.AsyncClient, "send", send)
    monkeypatch.setenv("PREFECT_API_URL", API_URL)
    monkeypatch.setenv("PREFECT_HOME", "/nonexistent")
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def plan_document(
    action: str = "delete", state: tuple[str, str] = ("COMPLETED", "Completed"), runs: int = 1
) -> dict[str, Any]:
    """A valid plan document (as ``runner plan -o`` writes it) for ``runs`` runs."""
    from datetime import datetime, timezone
    from uuid import UUID

    from runner.plan import Observation, RunView, StepObservation
    from runner.planfile import dumps
    from runner.planner import make_plan

    playbook = load_text(
        f"version: 1\nname: p\nsteps:\n  - name: s\n    select: {{}}\n    action: {action}\n",
        name="p.yaml",
        env={},
    )
    now = datetime.now(timezone.utc)
    seen = tuple(
        RunView(
            id=UUID(int=UUID(RUN_ID).int + i),
            name=f"brave-otter-{i}",
            flow="etl",
            state_type=state[0],
            state_name=state[1],
            expected_start=now,
        )
        for i in range(runs)
    )
    observation = Observation(
        now=now, server_url=API_URL, server_version="3.9.1", steps=(StepObservation(runs=seen),)
    )
    document: dict[str, Any] = json.loads(
        dumps(make_plan(playbook, observation, plan_id="0123456789ab"))
    )
    return document


def write_document(path: Path, document: dict[str, Any], *, compact: bool = False) -> Path:
    """Write ``document`` with its checksum recomputed, as someone editing a plan could: laid
    out as runner writes a plan (read a change at a time), or ``compact`` (read whole)."""
    from runner.planfile import _checksum

    body = {k: v for k, v in document.items() if k != "checksum"}
    signed = {**body, "checksum": _checksum(body)}
    path.write_text(json.dumps(signed) if compact else runner_layout(signed))
    return path


def runner_layout(document: dict[str, Any]) -> str:
    """``document`` laid out as ``runner plan -o`` writes one: indented, one change a line
    (a document whose steps have no list of changes: compact)."""
    steps = document.get("steps")
    if not isinstance(steps, list) or not all(
        isinstance(s, dict) and isinstance(s.get("changes"), list) and list(s)[-1] == "changes"
        for s in steps
    ):
        return json.dumps(document)
    marked = {**document, "steps": [{**s, "changes": f"@changes-{i}"} for i, s in enumerate(steps)]}
    text = json.dumps(marked, indent=2, ensure_ascii=False)
    for i, step in enumerate(steps):
        lines = [
            json.dumps(c, ensure_ascii=False, separators=(", ", ": ")) for c in step["changes"]
        ]
        laid = (
            "[\n" + ",\n".join("        " + line for line in lines) + "\n      ]" if lines else "[]"
        )
        text = text.replace(f'"@changes-{i}"', laid, 1)
    return text + "\n"


def edit(document: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    """Set (or with ``DELETE``, remove) the field at a path such as ``steps.0.settings.x``."""
    *parents, last = [int(p) if p.isdigit() else p for p in where.split(".")]
    node: Any = document
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return document


DELETE = object()
CHANGE = "steps.0.changes.0"


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("id", "../../x", 'id: "../../x" is not a plan id (1 to 64 letters, digits, _ or -)'),
        ("id", "/tmp/x", 'id: "/tmp/x" is not a plan id (1 to 64 letters, digits, _ or -)'),
        ("id", "", 'id: "" is not a plan id (1 to 64 letters, digits, _ or -)'),
        ("id", 7, "id: expected a string, got 7"),
        (
            "created_at",
            "yesterday",
            'created_at: expected an ISO 8601 date-time with a timezone, got "yesterday"',
        ),
        (
            "created_at",
            "2026-11-22T00:00:00",
            'created_at: expected an ISO 8601 date-time with a timezone, got "2026-11-22T00:00:00"',
        ),
        ("playbook.variables", [], "playbook.variables: expected an object, got a list"),
        (
            "playbook.variables",
            {"keep": None},
            "playbook.variables.keep: expected a string, number or true/false, got null",
        ),
        ("server.url", None, "server.url: expected a string, got null"),
        ("summary.delete", -1, "summary.delete: expected a whole number of at least 0, got -1"),
        ("violations", "none", 'violations: expected a list, got "none"'),
        ("steps.0", [], "steps[0]: expected an object, got a list"),
        ("steps.0.index", 1, "steps[0].index: expected 0 (the step's place), got 1"),
        (
            "steps.0.action",
            "explode",
            "steps[0].action: expected one of cancel, delete, reschedule, resume, retry,"
            ' set_state, tag, undo; got "explode"',
        ),
        (
            "steps.0.selected",
            -1,
            "steps[0].selected: expected a whole number of at least 0, got -1",
        ),
        (
            "steps.0.settings.max_attempts",
            0,
            "steps[0].settings.max_attempts: expected a whole number from 1 to 100, got 0",
        ),
        (
            "steps.0.settings.max_attempts",
            True,
            "steps[0].settings.max_attempts: expected a whole number from 1 to 100, got true",
        ),
        (
            "steps.0.settings.rate_limit",
            -1,
            "steps[0].settings.rate_limit: expected a number more than 0, got -1",
        ),
        (
            "steps.0.settings.concurrency",
            0,
            "steps[0].settings.concurrency: expected a whole number from 1 to 256, got 0",
        ),
        (
            "steps.0.settings.concurrency",
            "8",
            'steps[0].settings.concurrency: expected a whole number from 1 to 256, got "8"',
        ),
        (
            "steps.0.settings.backoff_seconds",
            -0.5,
            "steps[0].settings.backoff_seconds: expected a number from 0 to 31,536,000,000, got"
            " -0.5",
        ),
        ("steps.0.settings.max_attempts", DELETE, "steps[0].settings.max_attempts: missing"),
        (
            f"{CHANGE}.op",
            "explode",
            f"{CHANGE.replace('.0', '[0]')}.op: expected one of delete, noop, recreate, resume,"
            ' set_state, tag; got "explode"',
        ),
        (f"{CHANGE}.key", "0:x", f'steps[0].changes[0].key: expected "0:{RUN_ID}", got "0:x"'),
        (f"{CHANGE}.run.id", "nope", 'steps[0].changes[0].run.id: expected a UUID, got "nope"'),
        (
            f"{CHANGE}.run.state_type",
            "WAITING",
            "steps[0].changes[0].run.state_type: expected one of CANCELLED, CANCELLING,"
            ' COMPLETED, CRASHED, FAILED, PAUSED, PENDING, RUNNING, SCHEDULED; got "WAITING"',
        ),
        (
            f"{CHANGE}.run.end",
            "2026-13-01T00:00:00Z",
            "steps[0].changes[0].run.end: expected an ISO 8601 date-time with a timezone, got"
            ' "2026-13-01T00:00:00Z"',
        ),
        (
            f"{CHANGE}.run.tags",
            [1],
            "steps[0].changes[0].run.tags[0]: expected a string, got 1",
        ),
        (
            f"{CHANGE}.run.parameters",
            "x",
            'steps[0].changes[0].run.parameters: expected an object, got "x"',
        ),
    ],
)
def test_plan_fields_are_checked_even_with_a_recomputed_checksum(
    tmp_path: Path, nothing_sent: None, where: str, value: Any, expected: str
) -> None:
    path = write_document(tmp_path / "plan.json", edit(plan_document(), where, value))
    code, out, err = invoke("show", str(path))
    assert (code, out, err) == (1, "", f"runner: {path}: {expected}\n")
    code, out, err = invoke("apply", str(path), "--yes", "--state-dir", str(tmp_path / "state"))
    assert (code, out, err) == (1, "", f"runner: {path}: {expected}\n")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        (
            f"{CHANGE}.state.type",
            "WAITING",
            "steps[0].changes[0].state.type: expected one of CANCELLED, CANCELLING, COMPLETED,"
            ' CRASHED, FAILED, PAUSED, PENDING, RUNNING, SCHEDULED; got "WAITING"',
        ),
        (
            f"{CHANGE}.state.scheduled_time",
            "soon",
            "steps[0].changes[0].state.scheduled_time: expected an ISO 8601 date-time with a"
            ' timezone, got "soon"',
        ),
        (
            f"{CHANGE}.state.force",
            "yes",
            'steps[0].changes[0].state.force: expected true or false, got "yes"',
        ),
        (
            f"{CHANGE}.state",
            DELETE,
            "steps[0].changes[0].state: missing: a set_state change needs the state it proposes",
        ),
        (
            "steps.0.settings.max_backoff_seconds",
            1e309,
            "steps[0].settings.max_backoff_seconds: expected a number from 0 to 31,536,000,000,"
            " got Infinity",
        ),
    ],
)
def test_plan_states_are_checked(tmp_path: Path, where: str, value: Any, expected: str) -> None:
    from runner.errors import PlanFileError
    from runner.planfile import read_plan

    document = plan_document("{reschedule: {delay: 1h}}", ("SCHEDULED", "Late"))
    path = write_document(tmp_path / "plan.json", edit(document, where, value))
    with pytest.raises(PlanFileError) as info:
        read_plan(path)
    assert str(info.value) == f"{path}: {expected}"


def test_a_run_twice_in_a_step_is_refused(tmp_path: Path) -> None:
    from runner.errors import PlanFileError
    from runner.planfile import read_plan

    document = plan_document()
    document["steps"][0]["changes"].append(document["steps"][0]["changes"][0])
    path = write_document(tmp_path / "plan.json", document)
    with pytest.raises(PlanFileError) as info:
        read_plan(path)
    assert str(info.value) == (
        f"{path}: steps[0].changes[1].run.id: run {RUN_ID} has two changes in this step"
    )


def test_a_valid_plan_reads_back_the_same(tmp_path: Path) -> None:
    from runner.planfile import dumps, read_plan

    for document in (
        plan_document(),
        plan_document("{reschedule: {delay: 1h}}"),
        recreate_document(),
    ):
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(document))
        assert json.loads(dumps(read_plan(path))) == document
        path.write_text(runner_layout(document))
        assert path.read_text() == dumps(read_plan(path))  # as runner writes it


def test_a_plan_in_runners_layout_is_read_a_change_at_a_time(tmp_path: Path) -> None:
    """The streamed read gives the very plan the whole-document read gives; a plan laid out
    otherwise (reformatted) is read whole."""
    from uuid import UUID

    from runner.planfile import _read_streamed, plan_from_json, read_plan_checked

    document = plan_document(runs=3)
    second = json.loads(json.dumps(document["steps"][0]))
    second.update(index=1, name="t", selected=0, changes=[])
    third = json.loads(json.dumps(document["steps"][0]))
    third.update(index=2, name="u")
    for change in third["changes"]:
        change["run"]["id"] = str(UUID(int=UUID(change["run"]["id"]).int + 1000))
        change["key"] = "2:" + change["run"]["id"]
    document["steps"] += [second, third]
    document["summary"] = {"delete": 6, "unchanged": 0}
    path = write_document(tmp_path / "plan.json", document)
    whole = plan_from_json(json.loads(path.read_text()), source=str(path))
    checksum = json.loads(path.read_text())["checksum"]
    assert _read_streamed(path) == (whole, checksum)
    assert read_plan_checked(path) == (whole, checksum)
    assert [len(step.changes) for step in whole.steps] == [3, 0, 3]
    compact = write_document(tmp_path / "compact.json", document, compact=True)
    assert _read_streamed(compact) is None
    assert read_plan_checked(compact) == (whole, checksum)
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("        {"))
    lines[at] = lines[at].replace("brave-otter-0", "brave-otter-X")
    path.write_text("".join(lines))
    assert _read_streamed(path) is None  # the checksum no longer matches: read whole, refused


def recreate_document() -> dict[str, Any]:
    """A valid plan document of one recreate, carrying all a new run can take."""
    from datetime import datetime, timedelta, timezone
    from uuid import UUID

    from runner.plan import Observation, RunView, StepObservation
    from runner.planfile import dumps
    from runner.planner import make_plan

    playbook = load_text(
        "version: 1\nname: p\nsteps:\n  - name: s\n    select: {}\n"
        "    action: {reschedule: {delay: 1h, strategy: recreate}}\n",
        name="p.yaml",
        env={},
    )
    now = datetime.now(timezone.utc)
    run = RunView(
        id=UUID(RUN_ID),
        name="brave-otter",
        flow="etl",
        deployment="etl/nightly",
        deployment_id=UUID(int=7),
        state_type="SCHEDULED",
        state_name="Late",
        expected_start=now,
        next_scheduled_start=now,
        state_scheduled_time=now + timedelta(minutes=5),
        work_queue="critical",
        work_pool="k8s",
        parameters={"n": 1},
        job_variables={"env": {"REGION": "eu"}},
    )
    observation = Observation(
        now=now, server_url=API_URL, server_version="3.9.1", steps=(StepObservation((run,)),)
    )
    document: dict[str, Any] = json.loads(
        dumps(make_plan(playbook, observation, plan_id="0123456789ab"))
    )
    return document


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        (
            f"{CHANGE}.carry.1",
            "history",
            "steps[0].changes[0].carry[1]: expected one of job_variables, name, parameters,"
            ' tags, work_queue; got "history"',
        ),
        (f"{CHANGE}.carry.1", "name", 'steps[0].changes[0].carry[1]: "name" is listed twice'),
        (
            f"{CHANGE}.run.job_variables",
            DELETE,
            "steps[0].changes[0].carry[3]: the run has no job_variables to carry",
        ),
        (f"{CHANGE}.carry", "all", 'steps[0].changes[0].carry: expected a list, got "all"'),
        (
            f"{CHANGE}.op",
            "set_state",
            "steps[0].changes[0].carry: only a recreate change carries anything, not set_state",
        ),
        (
            f"{CHANGE}.run.state_scheduled_time",
            "later",
            "steps[0].changes[0].run.state_scheduled_time: expected an ISO 8601 date-time with"
            ' a timezone, got "later"',
        ),
        (
            f"{CHANGE}.run.job_variables",
            [],
            "steps[0].changes[0].run.job_variables: expected an object, got a list",
        ),
    ],
)
def test_what_a_recreate_carries_is_checked(
    tmp_path: Path, where: str, value: Any, expected: str
) -> None:
    from runner.errors import PlanFileError
    from runner.planfile import read_plan

    document = recreate_document()
    assert document["steps"][0]["changes"][0]["carry"] == [
        "name",
        "parameters",
        "tags",
        "job_variables",
        "work_queue",
    ]
    path = write_document(tmp_path / "plan.json", edit(document, where, value))
    with pytest.raises(PlanFileError) as info:
        read_plan(path)
    assert str(info.value) == f"{path}: {expected}"


def test_a_recreate_planned_before_carry_was_listed_still_reads(tmp_path: Path) -> None:
    """Plans made before runner listed what a recreate carries (and kept job variables and
    the state's time) read as they were: their new runs get the parameters and tags."""
    from runner.plan import LEGACY_CARRY
    from runner.planfile import dumps, read_plan

    document = recreate_document()
    change_doc = document["steps"][0]["changes"][0]
    del change_doc["carry"], change_doc["run"]["job_variables"]
    del change_doc["run"]["state_scheduled_time"]
    path = write_document(tmp_path / "plan.json", document)
    plan = read_plan(path)
    [change] = plan.changes
    assert change.carry is None and change.run.job_variables is None
    assert json.loads(dumps(plan)) == json.loads(path.read_text())
    assert LEGACY_CARRY == ("parameters", "tags")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "not a runner plan: nested too deeply"),
        (
            b'{"format": "runner-plan", "version": "\xff"}',
            "not UTF-8 text (invalid start byte at byte 38)",
        ),
        (
            b'{"format": "runner-plan", "version": 1, "x": ' + b"9" * 5000 + b"}",
            "not a runner plan: a whole number too long to read",
        ),
        (
            b'{"format": "runner-plan", "version": 1, "id": "\\ud800"}',
            "not a runner plan: a string holds an unpaired surrogate (such as \\ud800)",
        ),
    ],
)
def test_broken_plan_files(
    tmp_path: Path, nothing_sent: None, content: bytes, expected: str
) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    code, out, err = invoke("show", str(path))
    assert (code, out, err) == (1, "", f"runner: {path}: {expected}\n")
    code, out, err = invoke("apply", str(path), "--yes", "--state-dir", str(tmp_path / "state"))
    assert (code, out, err) == (1, "", f"runner: {path}: {expected}\n")


def test_a_plan_file_over_the_limit_is_refused_unread(tmp_path: Path, nothing_sent: None) -> None:
    from runner.planfile import MAX_PLAN_BYTES

    path = tmp_path / "plan.json"
    with path.open("wb") as handle:
        handle.truncate(MAX_PLAN_BYTES + 1)  # sparse: costs no disk, and is never read
    code, out, err = invoke("show", str(path))
    assert (code, out) == (1, "")
    assert err == (
        f"runner: {path}: too large (1,073,741,825 bytes): a plan file is at most 1 GiB"
        " (1,073,741,824 bytes, about a million changes)\n"
    )


def test_resuming_from_a_plan_whose_id_is_a_path_is_refused(
    tmp_path: Path, nothing_sent: None
) -> None:
    workdir = tmp_path / "state" / "0123456789ab"
    workdir.mkdir(parents=True)
    write_document(workdir / "plan.json", edit(plan_document(), "id", "../../escaped"))
    code, out, err = invoke("apply", "--resume", str(workdir), "--yes")
    assert (code, out) == (1, "")
    assert err == (
        f'runner: {workdir / "plan.json"}: id: "../../escaped" is not a plan id (1 to 64'
        " letters, digits, _ or -)\n"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["0123456789ab", "plan.json", "state"]


# -- where runner writes -------------------------------------------------------------------


#: What an apply says on a server without concurrency leases, as FakeServer is (runner.lease).
NO_LEASES = (
    "runner: the server has no concurrency leases (Prefect 2.x and early 3.x have none): the"
    " server lock 'runner:p' is not used; only the file lock in .runner keeps another apply of"
    " this plan out, and only one from the same state directory\n"
)


class FakeServer:
    """Just enough of the Prefect API to apply a delete, one run at a time (a Prefect 2.x
    server: no bulk routes, no concurrency leases; each run read back before its delete)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.runs = {
            change["run"]["id"]: {
                "id": change["run"]["id"],
                "name": change["run"]["name"],
                "flow_id": "00000000-0000-4000-8000-00000000f10e",
                "state": {"type": "COMPLETED", "name": "Completed"},
            }
            for change in document["steps"][0]["changes"]
        }
        self.requests: list[str] = []

    def handle(self, request: Any) -> Any:
        import httpx

        path = request.url.path.removeprefix("/api/")
        self.requests.append(f"{request.method} {path}")
        answers = {"admin/version": "2.20.26", "version": "0.8.4"}
        if path in answers:
            return httpx.Response(200, json=answers[path])
        if path == "flow_runs/filter":
            return httpx.Response(200, json=list(self.runs.values()))
        if request.method == "GET" and path.startswith("flow_runs/"):
            run = self.runs.get(path.removeprefix("flow_runs/"))
            return httpx.Response(200, json=run) if run else httpx.Response(404)
        if request.method == "GET" and path == "flow_run_states/":  # archived before a delete
            run = self.runs.get(request.url.params["flow_run_id"])
            return httpx.Response(200, json=[run["state"]] if run else [])
        if request.method == "DELETE" and path.startswith("flow_runs/"):
            gone = self.runs.pop(path.removeprefix("flow_runs/"), None)
            return httpx.Response(204 if gone else 404)
        if request.method == "POST" and path == "events":  # taken (a 2.x with events on)
            return httpx.Response(204)
        return httpx.Response(404, json={"detail": "Not Found"})  # csrf-token, bulk routes


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeServer]:
    """A saved plan deleting three runs (``tmp_path/plan.json``) and the server it is for."""
    import functools

    import httpx

    from runner.client import PrefectClient

    document = plan_document(runs=3)
    write_document(tmp_path / "plan.json", document)
    fake = FakeServer(document)
    transport = httpx.MockTransport(fake.handle)
    monkeypatch.setattr(
        "runner.apply.PrefectClient", functools.partial(PrefectClient, transport=transport)
    )
    monkeypatch.setenv("PREFECT_API_URL", API_URL)
    monkeypatch.setenv("PREFECT_HOME", "/nonexistent")
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield fake


def test_the_fake_server_takes_an_apply(server: FakeServer, tmp_path: Path) -> None:
    code, out, err = invoke("apply", "plan.json", "--yes", "--report", "report.json")
    assert (code, err) == (0, NO_LEASES)
    assert "Applied: 3 done, 0 drifted (left alone), 0 failed, 0 pending" in out
    assert server.runs == {}
    assert json.loads((tmp_path / "report.json").read_text())["counts"]["done"] == 3


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--state-dir", "plan.json/state"),
            "runner: --state-dir plan.json/state: plan.json is not a folder\n",
        ),
        (
            ("--report", "missing/report.json"),
            "runner: --report missing/report.json: no such folder: missing\n",
        ),
        (
            ("--report", "plan.json/report.json"),
            "runner: --report plan.json/report.json: plan.json is not a folder\n",
        ),
    ],
)
def test_unwritable_output_paths_are_refused_before_anything_is_sent(
    server: FakeServer, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    code, out, err = invoke("apply", "plan.json", "--yes", *args)
    assert (code, out, err) == (1, "", expected)
    assert server.requests == []
    assert len(server.runs) == 3


def test_a_read_only_state_dir_is_refused_before_anything_is_sent(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code, out, err = invoke("apply", "plan.json", "--yes", "--state-dir", "state")
    assert (code, out) == (1, "")
    assert err == "runner: --state-dir state: cannot write in .: Read-only file system\n"
    assert server.requests == []


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("missing/plan.json", "runner: -o missing/plan.json: no such folder: missing\n"),
        ("/dev/full", "runner: -o /dev/full: not a regular file (it would be replaced)\n"),
        ("/dev/null/plan.json", "runner: -o /dev/null/plan.json: /dev/null is not a folder\n"),
    ],
)
def test_plan_output_that_cannot_be_written_is_refused_before_anything_is_sent(
    tmp_path: Path, nothing_sent: None, output: str, expected: str
) -> None:
    playbook = tmp_path / "p.yaml"
    playbook.write_text("version: 1\nsteps:\n  - {name: s, select: {}, action: delete}\n")
    code, out, err = invoke("plan", str(playbook), "-o", output)
    assert (code, out, err) == (1, "", expected)
    assert not (tmp_path / "missing").exists()


def test_a_report_that_cannot_be_written_keeps_the_summary(
    server: FakeServer, tmp_path: Path
) -> None:
    """The changes are made before the report is written: its failure must not hide them."""
    code, out, err = invoke("apply", "plan.json", "--yes", "--report", "/dev/full")
    assert code == 1
    assert "Applied: 3 done, 0 drifted (left alone), 0 failed, 0 pending" in out
    (journal,) = Path(".runner").glob("*/checkpoint.jsonl")
    assert err == NO_LEASES + (
        "runner: --report /dev/full: cannot write: No space left on device; the outcome of"
        f" every run is in the checkpoint: runner status {journal}\n"
    )
    assert server.runs == {}
    code, out, _ = invoke("status", str(journal))
    assert (code, out.splitlines()[-1]) == (0, "done 3, drifted 0, failed 0, pending 0")


class FullDisk:
    """A checkpoint file on a disk that fills after ``room`` writes."""

    def __init__(self, handle: Any, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, text: str) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return int(self.handle.write(text))

    def flush(self) -> None:
        self.handle.flush()

    def fileno(self) -> int:
        return int(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def fill_the_disk(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """The checkpoint's disk fills after ``room`` writes (the first is the header)."""
    import builtins

    from runner import journal

    def open_(path: Any, mode: str = "r", **kwargs: Any) -> Any:
        handle = builtins.open(path, mode, **kwargs)  # noqa: SIM115 (the journal closes it)
        if str(path).endswith("checkpoint.jsonl") and mode == "a":
            return FullDisk(handle, room)
        return handle

    monkeypatch.setattr(journal, "open", open_, raising=False)


def test_a_full_disk_while_journaling_stops_with_the_resume_hint(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner import journal as journal_module

    fill_the_disk(monkeypatch, room=3)  # the header, where the archive is, and one record
    code, out, err = invoke("apply", "plan.json", "--yes", "--strategy", "per-run")
    (journal,) = Path(".runner").glob("*/checkpoint.jsonl")
    assert code == 1
    assert err == NO_LEASES + (
        f"runner: {journal}: cannot write the checkpoint: No space left on device; the apply"
        " stopped. What the checkpoint recorded stays; with room again, resume with: runner"
        f" apply --resume {journal}\n"
    )
    lines = journal.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["status"] == "done"
    assert 1 <= 3 - len(server.runs) <= 2  # the run whose record failed may be gone too

    monkeypatch.delattr(journal_module, "open")  # room again
    code, out, err = invoke("apply", "--resume", str(journal), "--yes")
    assert (code, err) == (0, NO_LEASES)
    assert "Applied: 3 done, 0 drifted (left alone), 0 failed, 0 pending" in out
    assert server.runs == {}


def test_a_full_disk_when_the_checkpoint_is_started(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_the_disk(monkeypatch, room=0)
    code, _, err = invoke("apply", "plan.json", "--yes")
    assert code == 1
    assert err == (
        "runner: .runner/0123456789ab/checkpoint.jsonl: cannot write the checkpoint: No space"
        " left on device\n"
    )
    assert [r for r in server.requests if not r.startswith("GET")] == []
    assert len(server.runs) == 3


def test_an_archive_on_a_full_disk_deletes_nothing(server: FakeServer) -> None:
    code, _, err = invoke("apply", "plan.json", "--yes", "--archive", "/dev/full")
    assert code == 1
    (journal,) = Path(".runner").glob("*/checkpoint.jsonl")
    assert err == NO_LEASES + (
        "runner: /dev/full: cannot write the archive: No space left on device (the runs it was"
        " archiving were not deleted); the apply stopped. What the checkpoint recorded stays;"
        f" with room again, resume with: runner apply --resume {journal}\n"
    )
    assert [r for r in server.requests if r.startswith("DELETE")] == []
    assert len(server.runs) == 3


# -- a saved plan edited with its checksum recomputed --------------------------------------


@pytest.mark.parametrize(
    ("action", "where", "value", "expected"),
    [
        (
            "{tag: {add: [x]}}",
            f"{CHANGE}.op",
            "delete",
            "steps[0].changes[0].op: a tag step makes noop, tag changes, not delete",
        ),
        (
            "cancel",
            f"{CHANGE}.state.type",
            "COMPLETED",
            "steps[0].changes[0].state.type: a cancel step proposes CANCELLED or CANCELLING,"
            " not COMPLETED",
        ),
        (
            "cancel",
            f"{CHANGE}.state.force",
            True,
            "steps[0].changes[0].state.force: a cancel step never forces a state",
        ),
        (
            "delete",
            "steps.0.selected",
            5,
            "steps[0].selected: 5 runs selected, but the step has 1 change (one a selected run)",
        ),
        (
            "delete",
            "summary.delete",
            0,
            'summary: {"delete": 0, "unchanged": 0} does not count the plan\'s changes'
            ' ({"delete": 1, "unchanged": 0})',
        ),
    ],
)
def test_a_plan_edited_out_of_step_with_itself_is_refused(
    tmp_path: Path, nothing_sent: None, action: str, where: str, value: Any, expected: str
) -> None:
    """A checksum is no signature: whoever edits a plan can recompute it. What an edit cannot
    do is make a step act outside its action (a tag step that deletes a Running run, found
    by an adversarial test), or make the counts a reviewer reads disagree with the changes."""
    state = ("RUNNING", "Running") if action == "cancel" else ("COMPLETED", "Completed")
    document = edit(plan_document(action=action, state=state), where, value)
    path = write_document(tmp_path / "plan.json", document)
    for command in (("apply", str(path), "--yes"), ("show", str(path))):
        code, out, err = invoke(*command)
        assert (code, out, err) == (1, "", f"runner: {path}: {expected}\n")


def test_a_plan_that_changes_states_needs_yes_whatever_its_steps_are_called(
    tmp_path: Path, nothing_sent: None
) -> None:
    """`retry` sets states: off a terminal, applying it needs --yes like any state change."""
    document = plan_document(action="retry", state=("FAILED", "Failed"))
    change = document["steps"][0]["changes"][0]
    change.pop("reason", None)
    change.update(
        op="set_state",
        state={
            "type": "SCHEDULED",
            "name": "AwaitingRetry",
            "message": None,
            "scheduled_time": "2026-11-29T00:00:00Z",
            "force": False,
        },
    )
    document["summary"] = {"retry": 1, "unchanged": 0}
    path = write_document(tmp_path / "plan.json", document)
    code, _, err = invoke("apply", str(path))
    assert code == 1
    assert err.endswith(
        "runner: not a terminal: pass --yes to apply changes that delete, cancel or change the"
        " state of runs\n"
    )


def test_a_plan_with_one_run_in_two_steps_is_refused(tmp_path: Path, nothing_sent: None) -> None:
    """The planner gives a run to the first step that selects it; a plan edited so that two
    steps change the same run (the checksum recomputed) is refused, naming the run."""
    import copy

    document = plan_document(action="delete")
    second = copy.deepcopy(document["steps"][0])
    second["index"] = 1
    for change in second["changes"]:
        change["key"] = f"1:{change['run']['id']}"
    document["steps"].append(second)
    document["summary"] = {"delete": 2, "unchanged": 0}
    path = write_document(tmp_path / "plan.json", document)
    code, out, err = invoke("show", str(path))
    assert (code, out) == (1, "")
    assert err == (
        f"runner: {path}: steps[1].changes[0].run.id: run {RUN_ID} is also in step 1: a plan"
        " holds each run or object in one step (an earlier step claims it)\n"
    )
