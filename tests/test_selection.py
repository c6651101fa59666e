"""runner's own reading of a selection (pure): the keys no server filters on, and exclusions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest

from runner.loader import load_text
from runner.plan import RunView
from runner.playbook import Select
from runner.selection import build_query, failed_keys, json_equal, matching_exclusions

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def _select(text: str) -> Select:
    playbook = load_text(
        f"version: 1\nsteps:\n  - name: s\n    select: {text}\n    action: delete\n", env={}
    )
    return playbook.steps[0].select


def _run(**kwargs: object) -> RunView:
    base: dict[str, object] = {"id": uuid4(), "name": "r", "flow": "etl"}
    return RunView(**{**base, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("left", "right", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        ("1", 1, False),
        (None, None, True),
        ({"a": [1, {"b": "x"}]}, {"a": [1.0, {"b": "x"}]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, 2], [2, 1], False),
    ],
)
def test_parameters_compare_as_json(left: object, right: object, equal: bool) -> None:
    assert json_equal(left, right) is equal


def test_parameters_by_dotted_path() -> None:
    select = _select("{parameters: {region: eu, config.mode: full}}")
    assert (
        failed_keys(select, _run(parameters={"region": "eu", "config": {"mode": "full"}}), now=NOW)
        == []
    )
    assert failed_keys(select, _run(parameters={"region": "eu", "config": "full"}), now=NOW) == [
        "parameters"
    ]
    assert failed_keys(select, _run(parameters={"region": "eu"}), now=NOW) == ["parameters"]
    assert failed_keys(select, _run(parameters=None), now=NOW) == ["parameters"]


def test_state_since_created_and_tags_none() -> None:
    select = _select("{state: {since: {before: -1h}}, created: {after: -1d}, tags: {none: [keep]}}")
    good = _run(state_since=NOW - timedelta(hours=2), created=NOW - timedelta(hours=3))
    assert failed_keys(select, good, now=NOW) == []
    bad = _run(
        state_since=NOW - timedelta(minutes=5), created=NOW - timedelta(days=2), tags=("keep",)
    )
    assert failed_keys(select, bad, now=NOW) == ["state.since", "tags.none", "created"]
    assert failed_keys(select, _run(created=NOW), now=NOW) == ["state.since"]  # no state: unknown


def test_keys_no_server_filters_on_are_never_sent() -> None:
    select = _select(
        "{flows: etl, state: {type: PENDING, since: {before: -1h}}, tags: {none: [keep]},"
        " created: {before: -1d}, parameters: {a: 1}, exclude: {tags: {any: [x]}}}"
    )
    sq = build_query(select, now=NOW)
    assert sq.loose == {"state.since", "tags.none", "created", "parameters"}
    assert sq.query is not None
    assert sq.query.body() == {
        "flows": {"name": {"any_": ["etl"]}},
        "flow_runs": {"state": {"type": {"any_": ["PENDING"]}}},
    }


def test_parent_id_is_sent_and_checked_through_the_parent_task_run() -> None:
    parent, task = uuid4(), uuid4()
    select = _select(f"{{parent_id: {parent}}}")
    sq = build_query(select, now=NOW)
    assert sq.query is not None
    assert sq.query.body() == {"flow_runs": {"parent_flow_run_id": {"any_": [str(parent)]}}}
    child = _run(parent_task_run_id=task)
    assert failed_keys(select, child, now=NOW, parents={task: parent}) == []
    assert failed_keys(select, child, now=NOW, parents={task: uuid4()}) == ["parent_id"]
    assert failed_keys(select, _run(), now=NOW, parents={}) == ["parent_id"]


def test_each_key_of_an_exclusion_mapping_is_its_own_exclusion() -> None:
    dep = uuid4()
    select = _select("{exclude: {tags: {any: [keep]}, deployments: etl/critical}}")
    ids = {"etl/critical": dep}
    assert matching_exclusions(
        select.exclude, _run(tags=("keep",)), now=NOW, deployment_ids=ids
    ) == ["exclude.tags"]
    assert matching_exclusions(
        select.exclude, _run(deployment_id=dep), now=NOW, deployment_ids=ids
    ) == ["exclude.deployments"]
    assert matching_exclusions(select.exclude, _run(), now=NOW, deployment_ids=ids) == []
    listed = _select("{exclude: [{tags: {any: [keep]}, deployments: etl/critical}]}")
    both = _run(tags=("keep",), deployment_id=dep)
    assert matching_exclusions(listed.exclude, both, now=NOW, deployment_ids=ids) == ["exclude[0]"]
    assert (
        matching_exclusions(listed.exclude, _run(tags=("keep",)), now=NOW, deployment_ids=ids) == []
    )
