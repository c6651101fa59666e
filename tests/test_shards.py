"""The suite's shards (tests/support/shards.py): every test file in exactly one shard, whole,
the work about even, the same split in every shard's process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import shards

ROOT = Path(__file__).resolve().parent.parent


def test_every_file_is_in_one_shard_and_the_work_is_even() -> None:
    seconds = {"a::1": 50.0, "a::2": 10.0, "b::1": 40.0, "c::1": 20.0, "d::1": 5.0}
    tests = [(node.split("::")[0], node) for node in seconds] + [("e", "e::new")]
    split = shards.assign(tests, 2, seconds)
    # a (60 s) to 0, b (40) to 1, c (20) to 1, d (5) to 0 (tie: the lower), e (1, unknown) to 1
    assert split == [{"a", "d"}, {"b", "c", "e"}]
    assert shards.assign(reversed(tests), 2, seconds) == split  # the order read does not matter
    assert shards.assign(tests, 1, seconds) == [{"a", "b", "c", "d", "e"}]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("2", "RUNNER_TEST_SHARD='2': expected I/N, e.g. 1/2"),
        ("0/2", "RUNNER_TEST_SHARD='0/2': expected 1 <= I <= N"),
        ("3/2", "RUNNER_TEST_SHARD='3/2': expected 1 <= I <= N"),
    ],
)
def test_a_shard_is_named_i_of_n(value: str, error: str) -> None:
    assert shards.parse("2/2") == (1, 2)
    with pytest.raises(ValueError) as raised:
        shards.parse(value)
    assert str(raised.value) == error


def test_the_weights_are_those_of_the_pass() -> None:
    assert shards.leg("2") == "prefect2"
    assert shards.leg("2.20.26") == "prefect2"
    assert shards.leg("3.9.1") == "prefect3"
    assert shards.load("prefect3") and shards.load("prefect2")
    assert shards.load("prefect3") != shards.load("prefect2")


def test_files_dealt_as_the_run_goes_run_once_each_and_whole(tmp_path: Path) -> None:
    """Three shards side by side share a queue: every test runs in exactly one of them, a
    file's tests all in one (its module fixture made once), each shard's session fixture
    made once and torn down at its end, and each shard reports the others' deselected."""
    log = tmp_path / "log"
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(
        "import os, time, pytest\n"
        "from tests.support.shards import Plugin\n"
        "def pytest_configure(config):\n"
        "    config.pluginmanager.register(Plugin(), 'runner-shards')\n"
        "def note(what):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(os.environ['RUNNER_TEST_SHARD'] + ' ' + what + '\\n')\n"
        "@pytest.fixture(scope='session')\n"
        "def server():\n"
        "    note('session up')\n"
        "    yield\n"
        "    note('session down')\n"
        "@pytest.fixture(scope='module')\n"
        "def module(request):\n"
        "    note('module up ' + request.module.__name__)\n"
        "    yield\n"
        "    note('module down ' + request.module.__name__)\n"
    )
    sizes = {"a": 4, "b": 3, "c": 3, "d": 2, "e": 1, "f": 1}
    for name, count in sizes.items():
        (suite / f"test_{name}.py").write_text(
            "import time\n"
            "from conftest import note\n"
            + "".join(
                f"def test_{i}(server, module):\n    note('ran {name}{i}')\n    time.sleep(0.05)\n"
                for i in range(count)
            )
        )
    queue = tmp_path / "queue"
    queue.mkdir()
    env = {**os.environ, "RUNNER_TEST_QUEUE": str(queue), "PYTHONPATH": str(ROOT)}
    shards_run = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=suite,
            env={**env, "RUNNER_TEST_SHARD": f"{i}/3"},
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2, 3)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in shards_run]
    assert [process.returncode for process in shards_run] == [0, 0, 0], "\n".join(outputs)
    lines = [line.split(" ", 1) for line in log.read_text().splitlines()]
    ran = [what.removeprefix("ran ") for _, what in lines if what.startswith("ran ")]
    expected = [f"{name}{i}" for name, count in sizes.items() for i in range(count)]
    assert sorted(ran) == sorted(expected)
    by_file: dict[str, set[str]] = {}
    for shard, what in lines:
        if what.startswith("ran "):
            by_file.setdefault(what[4], set()).add(shard)
    assert all(len(where) == 1 for where in by_file.values()), by_file
    for name in sizes:
        assert [what for _, what in lines].count(f"module up test_{name}") == 1
        assert [what for _, what in lines].count(f"module down test_{name}") == 1
    for shard in {shard for shard, _ in lines}:
        mine = [what for s, what in lines if s == shard]
        assert mine[0] == "session up" and mine[-1] == "session down"
        assert mine.count("session up") == 1
    for output, shard in zip(outputs, ("1/3", "2/3", "3/3"), strict=True):
        passed = sum(1 for s, what in lines if s == shard and what.startswith("ran "))
        others = sum(sizes.values()) - passed
        words = [f"{passed} passed"] if passed else []
        words += [f"{others} deselected"] if others else []
        assert output.splitlines()[-1].startswith(", ".join(words) + " in "), output
