"""The suite's shards (tests/support/shards.py): every test file in exactly one shard, whole,
the work about even, the same split in every shard's process."""

from __future__ import annotations

import pytest

from tests.support import shards


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
