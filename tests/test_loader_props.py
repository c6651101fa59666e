"""Property tests: whatever text or mutated playbook the loader is given, it answers with a
Playbook or a PlaybookError (never another exception), and never opens a connection.

Examples per test: 300 by default; HYPOTHESIS_PROFILE=full runs 10,000."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.errors import PlaybookError
from runner.loader import load_text
from runner.playbook import Playbook

EXAMPLES = [
    yaml.safe_load(p.read_text())
    for p in sorted((Path(__file__).parent.parent / "playbooks").glob("*.yaml"))
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def check(text: str) -> None:
    try:
        result = load_text(text, name="fuzz.yaml", env={})
    except PlaybookError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == "fuzz.yaml"
            assert problem.line >= 1 and problem.column >= 1
            assert problem.message
    else:
        assert isinstance(result, Playbook)
        assert result.steps


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "6h",
            "now-6h",
            "-30d",
            "PT6H",
            "Late",
            "RUNNING",
            "delete",
            "${x}",
            "$$",
            "${",
            "a/b",
            "2026-01-31",
            "ID_DESC",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _containers(node: Any) -> list[Any]:
    if not isinstance(node, (dict, list)):
        return []
    found = [node]
    for child in node.values() if isinstance(node, dict) else node:
        found += _containers(child)
    return found


@st.composite
def mutated_playbooks(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        containers = _containers(data)
        target: Any = draw(st.sampled_from(containers))
        if isinstance(target, dict) and target:
            key = draw(st.sampled_from(sorted(target, key=str)))
            op = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
            if op == "replace":
                target[key] = draw(values)
            elif op == "delete":
                del target[key]
            elif op == "add":
                target[draw(st.text(max_size=12))] = draw(values)
            else:
                target[key + draw(st.text(min_size=1, max_size=3))] = target.pop(key)
        elif isinstance(target, list):
            if target and draw(st.sampled_from([True, False])):
                target[draw(st.integers(0, len(target) - 1))] = draw(values)
            else:
                target.append(draw(values))
    return data


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_text(text: str) -> None:
    check(text)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            [
                "version: 1\n",
                "steps:\n",
                "  - name: x\n",
                "    select: {}\n",
                "    action: delete\n",
                "&a [*a]\n",
                "- *a\n",
                "{",
                "[",
                ": ",
                "!!python/object:os.system\n",
                "\t",
                "  ",
                "'",
                '"',
                "<<: *a\n",
                "a: &a {b: 1}\n",
                "? [x]\n: y\n",
            ]
        ),
        max_size=12,
    )
)
def test_yaml_shaped_text(parts: list[str]) -> None:
    check("".join(parts))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated_playbooks())
def test_mutated_playbooks(data: Any) -> None:
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return
    check(text)


def test_a_valid_example_still_loads_through_the_same_path() -> None:
    check(yaml.safe_dump(EXAMPLES[0]))
