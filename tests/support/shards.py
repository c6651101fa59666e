"""The suite split in shards that run side by side (``RUNNER_TEST_SHARD=1/2``), each with a
server of its own: the tests wait on the server and on processes they start about a quarter
of the time, so two shards on two cores take a little over half the time of one.

A test file stays whole in one shard (its module fixtures are made once). Files go to the
shard with the least work so far, the longest first, weighed by ``tests/durations.json``:
each test's seconds (set-up, call and tear-down) in the last measured run. A run with
``RUNNER_TEST_DURATIONS=FILE`` writes its own; ``python -m tests.support.shards FILE...``
makes them the suite's. A test not in it weighs ``UNKNOWN_SECONDS``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

DURATIONS = Path(__file__).resolve().parent.parent / "durations.json"
#: The weight of a test the durations file does not know (a new one).
UNKNOWN_SECONDS = 1.0


def parse(value: str) -> tuple[int, int]:
    """``"1/2"`` -> ``(0, 2)``: this shard's index from 0, and how many there are."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise ValueError(f"RUNNER_TEST_SHARD={value!r}: expected I/N, e.g. 1/2") from None
    if not 1 <= index <= count:
        raise ValueError(f"RUNNER_TEST_SHARD={value!r}: expected 1 <= I <= N")
    return index - 1, count


def load(path: Path = DURATIONS) -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}


def assign(
    tests: Iterable[tuple[str, str]], count: int, seconds: Mapping[str, float]
) -> list[set[str]]:
    """The files of ``tests`` (pairs of file, test id) in ``count`` shards of about equal
    work: the longest file first, each to the shard with the least so far (ties: the
    lowest shard, then the file's name, so every shard computes the same split)."""
    work: dict[str, float] = {}
    for file, test in tests:
        work[file] = work.get(file, 0.0) + seconds.get(test, UNKNOWN_SECONDS)
    shards: list[set[str]] = [set() for _ in range(count)]
    totals = [0.0] * count
    for file in sorted(work, key=lambda f: (-work[f], f)):
        lightest = min(range(count), key=lambda i: (totals[i], i))
        shards[lightest].add(file)
        totals[lightest] += work[file]
    return shards


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python -m tests.support.shards DURATIONS.json...", file=sys.stderr)
        return 2
    found: dict[str, float] = {}
    for path in argv:
        found.update(load(Path(path)))
    DURATIONS.write_text(
        json.dumps({k: round(v, 1) for k, v in sorted(found.items())}, indent=0) + "\n"
    )
    print(f"{DURATIONS}: {len(found)} tests, {sum(found.values()):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
