"""Loading valid playbooks: variables, defaults, typed values; the schema and the models agree."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from runner import loader, schema_gen
from runner import playbook as pb
from runner.errors import PlaybookError
from runner.loader import load_playbook, load_text
from runner.models import StateType
from runner.timeexpr import (
    DURATION_PATTERN,
    TIME_PATTERN,
    format_duration,
    parse_duration,
    parse_time,
)

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "playbooks").glob("*.yaml"))

SEED = """
version: 1
vars:
  deployment: healthcheck/healthcheck-storage-test
  keep: 3
steps:
  - name: reschedule the ${keep} newest
    select:
      deployments: ${deployment}
      state: {name: Late}
      sort: EXPECTED_START_TIME_DESC
      limit: ${keep}
    action:
      reschedule: {delay: 6h}
  - name: delete the rest
    select:
      deployments: ["$${literal}/x", "${deployment}"]
      state: {type: [SCHEDULED], not_name: AwaitingRetry}
    action: delete
"""


def test_examples_exist_and_validate() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "reschedule-late.yaml",
        "cancel-active.yaml",
        "cleanup-old-runs.yaml",
        "retry-failed.yaml",
        "clear-stuck-pending.yaml",
    } <= names
    for path in EXAMPLES:
        playbook = load_playbook(path, env={})
        assert playbook.steps
        assert playbook.digest.startswith("sha256:")
        assert path.read_text().startswith(
            "# yaml-language-server: $schema=../schemas/playbook.schema.json"
        )


def test_variables_keep_their_type_and_interpolate() -> None:
    playbook = load_text(SEED, env={})
    first, second = playbook.steps
    assert first.name == "reschedule the 3 newest"
    assert first.select.limit == 3
    assert first.select.deployments == ("healthcheck/healthcheck-storage-test",)
    assert first.select.state == pb.StateSelect(name=("Late",))
    assert isinstance(first.action, pb.Reschedule)
    assert first.action.delay == timedelta(hours=6)
    assert first.action.strategy == "in_place"
    assert second.select.deployments == ("${literal}/x", "healthcheck/healthcheck-storage-test")
    assert second.select.state == pb.StateSelect(
        type=(StateType.SCHEDULED,), not_name=("AwaitingRetry",)
    )
    assert isinstance(second.action, pb.Delete)
    assert playbook.vars == {"deployment": "healthcheck/healthcheck-storage-test", "keep": 3}
    assert playbook.name == "playbook"


def test_overrides_from_the_command_line_beat_the_environment() -> None:
    env = {"RUNNER_VAR_keep": "5", "RUNNER_VAR_deployment": "a/b"}
    playbook = load_text(SEED, env=env, variables={"keep": "7"})
    assert playbook.steps[0].select.limit == 7
    assert playbook.steps[0].select.deployments == ("a/b",)


def test_override_of_an_unknown_variable_is_an_error() -> None:
    with pytest.raises(PlaybookError) as info:
        load_text(SEED, name="x.yaml", env={}, variables={"kep": "5"})
    assert str(info.value) == (
        "x.yaml:3:1: vars: --var kep: no such variable in this playbook"
        " (variables: deployment, keep)"
    )


def test_override_that_breaks_the_schema_is_reported_where_it_is_used() -> None:
    with pytest.raises(PlaybookError) as info:
        load_text(SEED, name="x.yaml", env={}, variables={"keep": "many"})
    assert "x.yaml:12:14: steps[0].select.limit: expected a whole number, got 'many'" in str(
        info.value
    )


def test_defaults_and_guards() -> None:
    playbook = load_text(
        """
version: 1
name: tuned
defaults:
  concurrency: 3
  rate_limit: 9.5
  retry: {max_attempts: 3, backoff: 2s}
guards: {max_affected: 10, expect: non_empty}
steps:
  - name: s
    select: {flows: etl, tags: {any: [a, b]}, parent: top_level, end: {before: -30d}}
    action: {cancel: {message: bye}}
    concurrency: 1
    guards: {allow_active: true}
""",
        env={},
    )
    assert playbook.name == "tuned"
    assert playbook.defaults == pb.Defaults(
        concurrency=3, rate_limit=9.5, retry=pb.Retry(max_attempts=3, backoff=timedelta(seconds=2))
    )
    assert playbook.guards == pb.Guards(max_affected=10, expect=("non_empty",))
    step = playbook.steps[0]
    assert step.concurrency == 1
    assert step.guards == pb.Guards(allow_active=True)
    assert step.select.flows == ("etl",)
    assert step.select.tags == pb.TagSelect(any=("a", "b"))
    assert step.select.end is not None and step.select.end.before is not None
    now = datetime(2026, 11, 22, tzinfo=timezone.utc)
    assert step.select.end.before.resolve(now) == now - timedelta(days=30)
    assert step.action == pb.Cancel(message="bye")
    assert playbook.message_for(step) == "runner: tuned / s"


def test_reschedule_keys() -> None:
    playbook = load_text(
        """
version: 1
steps:
  - name: plain
    select: {}
    action: {reschedule: {delay: 1h}}
  - name: staggered from now
    select: {}
    action: {reschedule: {delay: 45m, from: now, spread: 2m, allow_past: true}}
  - name: staggered at
    select: {}
    action: {reschedule: {at: now+1h, spread: 90s, strategy: recreate}}
""",
        env={},
    )
    plain, from_now, at = (step.action for step in playbook.steps)
    assert plain == pb.Reschedule(delay=timedelta(hours=1))
    assert (plain.from_, plain.spread, plain.allow_past) == ("scheduled", None, False)
    assert from_now == pb.Reschedule(
        delay=timedelta(minutes=45), from_="now", spread=timedelta(minutes=2), allow_past=True
    )
    assert isinstance(at, pb.Reschedule) and at.at is not None
    assert (at.spread, at.recreates) == (timedelta(seconds=90), True)


def test_playbooks_are_frozen() -> None:
    playbook = load_text(SEED, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        playbook.steps[0].select.limit = 9  # type: ignore[misc]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PlaybookError) as info:
        load_playbook(tmp_path / "missing.yaml")
    assert (
        str(info.value)
        == f"{tmp_path / 'missing.yaml'}:1:1: cannot read: No such file or directory"
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PlaybookError) as info:
        load_playbook(binary)
    assert str(info.value) == f"{binary}:1:1: not UTF-8 text: invalid start byte"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("2w", timedelta(weeks=2)),
        ("PT6H", timedelta(hours=6)),
        ("P1DT12H30M", timedelta(days=1, hours=12, minutes=30)),
        ("PT0.5S", timedelta(seconds=0.5)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "6", "6 hours", "h", "6h1d", "P", "PT", "1.5h", "-6h"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(timedelta(days=1, hours=12)) == "1d12h"
    assert format_duration(timedelta(seconds=-90)) == "-1m30s"
    assert format_duration(timedelta(0)) == "0s"


@pytest.mark.parametrize(
    ("text", "offset", "absolute"),
    [
        ("now", timedelta(0), None),
        ("now-6h", timedelta(hours=-6), None),
        ("now+1d", timedelta(days=1), None),
        ("-30d", timedelta(days=-30), None),
        ("+2h30m", timedelta(hours=2, minutes=30), None),
        ("2026-01-31", None, datetime(2026, 1, 31, tzinfo=timezone.utc)),
        ("2026-01-31T06:00:00Z", None, datetime(2026, 1, 31, 6, tzinfo=timezone.utc)),
        (
            "2026-01-31T06:00:00+02:00",
            None,
            datetime(2026, 1, 31, 4, tzinfo=timezone.utc),
        ),
    ],
)
def test_times(text: str, offset: timedelta | None, absolute: datetime | None) -> None:
    value = parse_time(text)
    assert value.offset == offset
    assert value.absolute == absolute
    assert str(value) == text


@pytest.mark.parametrize(
    "text", ["yesterday", "now-", "now - 6h", "2026-01-31T06:00:00", "2026-13-01", "30d", "-"]
)
def test_not_times(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        parse_time(text)


def test_the_schema_publishes_the_code_patterns() -> None:
    defs = loader.schema()["$defs"]
    assert defs["duration"]["pattern"] == DURATION_PATTERN
    assert defs["time"]["pattern"] == TIME_PATTERN
    published = json.loads((ROOT / "schemas" / "playbook.schema.json").read_text())
    assert published == schema_gen.editor_schema(loader.schema())  # the editor's, made from it


SCHEMA_TO_MODEL: dict[str, Any] = {
    "": pb.Playbook,
    "defaults": pb.Defaults,
    "retry": pb.Retry,
    "guards": pb.Guards,
    "window": pb.Window,
    "state_select": pb.StateSelect,
    "tag_select": pb.TagSelect,
    "select": pb.Select,
    "step": pb.Step,
    "set_state": pb.SetState,
    "reschedule": pb.Reschedule,
    "retry_action": pb.RetryRuns,
    "tag": pb.Tag,
    "message_only": pb.Cancel,
    "no_params": pb.Resume,
    "delete": pb.Delete,
    "archive": pb.Archive,
}


def _fields(model: Any) -> set[str]:
    """A model's playbook keys: its fields, by the key they stand for (``from_``: ``from``)."""
    return {
        f.metadata.get("key", f.name)
        for f in dataclasses.fields(model)
        if not f.metadata.get("source")
    }


def _properties(name: str) -> dict[str, Any]:
    schema = loader.schema()
    node = schema if name == "" else schema["$defs"][name]
    return dict(node["properties"])


@pytest.mark.parametrize("name", sorted(SCHEMA_TO_MODEL))
def test_schema_and_models_have_the_same_fields(name: str) -> None:
    model = SCHEMA_TO_MODEL[name]
    assert set(_properties(name)) == _fields(model), model.__name__


def test_schema_actions_are_the_models_actions() -> None:
    action = loader.schema()["$defs"]["action"]
    by_name, by_mapping = action["oneOf"]
    assert set(by_name["enum"]) == set(pb.ACTION_TYPES)
    assert set(by_mapping["properties"]) == set(pb.ACTION_TYPES)
    assert _fields(pb.Resume) == set(_properties("no_params"))
    for kind, model in pb.ACTION_TYPES.items():
        assert model.kind == kind


def _walk(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for key, prop in node.get("properties", {}).items():
            found.append((f"{path}.{key}", prop))
        for key, value in node.items():
            if key != "properties":
                found += _walk(value, f"{path}/{key}")
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _walk(item, f"{path}[{i}]")
    return found


def test_every_property_has_a_description_and_examples_for_editors() -> None:
    missing = [
        path
        for path, prop in _walk(loader.schema(), "")
        if "description" not in prop or ("examples" not in prop and "$ref" not in prop)
    ]
    assert missing == []
    no_examples = [
        path
        for path, prop in _walk(loader.schema(), "")
        if "examples" not in prop and not re.search(r"\.action$", path)
    ]
    assert no_examples == []
