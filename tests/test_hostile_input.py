"""Hostile and broken input: each is a clear error (exit 1, nothing sent, no traceback).

Playbooks, saved plans and output paths; the connection settings' cases are in
test_settings.py. No Prefect server is needed.
"""

from __future__ import annotations

from pathlib import Path

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
