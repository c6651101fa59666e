"""The suite split in shards that run side by side (``RUNNER_TEST_SHARD=1/2``), each with a
server of its own: the tests wait on their server and on the processes they start much of
the time, and two shards on two cores took about half the time of one (1,633 s against 793 s
and 860 s for the 3.9.1 pass).

A test file stays whole in one shard (its module fixtures are made once). Files go to the
shard with the least work so far, the longest first, weighed by ``tests/durations.json``:
each test's seconds (set-up, call and tear-down) in the last measured run of its pass. A
run with ``RUNNER_TEST_DURATIONS=FILE`` writes its own; ``python -m tests.support.shards
prefect3=FILE...`` makes them the pass's weights. A test not in it weighs ``UNKNOWN_SECONDS``.
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


def load(leg: str, path: Path = DURATIONS) -> dict[str, float]:
    """The seconds of each test in the pass ``leg`` (``prefect3``, ``prefect2``: the 2.x
    server runs the per-run fallback paths, slower than 3.x's bulk routes)."""
    try:
        found = json.loads(path.read_text()).get(leg, {})
    except FileNotFoundError:
        return {}
    return {str(k): float(v) for k, v in found.items()}


def leg(version: str) -> str:
    """The pass a server version's tests are weighed by."""
    return "prefect2" if version.split(".")[0] == "2" else "prefect3"


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
    """``LEG=FILE...``: each file a run's seconds (``RUNNER_TEST_DURATIONS``), made the
    weights of the pass ``LEG``; the other passes' weights stay."""
    if not argv or any("=" not in a for a in argv):
        print("usage: python -m tests.support.shards LEG=DURATIONS.json...", file=sys.stderr)
        return 2
    try:
        weights = json.loads(DURATIONS.read_text())
    except FileNotFoundError:
        weights = {}
    fresh: dict[str, dict[str, float]] = {}
    for arg in argv:
        name, path = arg.split("=", 1)
        seconds = json.loads(Path(path).read_text())
        fresh.setdefault(name, {}).update({k: round(float(v), 1) for k, v in seconds.items()})
    weights.update({name: dict(sorted(found.items())) for name, found in fresh.items()})
    DURATIONS.write_text(json.dumps(dict(sorted(weights.items())), indent=0) + "\n")
    for name, found in sorted(weights.items()):
        print(f"{DURATIONS}: {name}: {len(found)} tests, {sum(found.values()):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
