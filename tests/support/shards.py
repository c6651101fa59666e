"""The suite split in shards that run side by side (``RUNNER_TEST_SHARD=1/2``), each with a
server of its own: the tests wait on their server and on the processes they start much of
the time, and two shards on two cores took about half the time of one (1,633 s against 793 s
and 860 s for the 3.9.1 pass).

A test file stays whole in one shard (its module fixtures are made once). Files are weighed
by ``tests/durations.json``: each test's seconds (set-up, call and tear-down) in the last
measured run of its pass. A run with ``RUNNER_TEST_DURATIONS=FILE`` writes its own; ``python
-m tests.support.shards prefect3=FILE...`` makes them the pass's weights. A test not in it
weighs ``UNKNOWN_SECONDS``.

How the files are dealt:
- With ``RUNNER_TEST_QUEUE=DIR`` (what ``scripts/test`` sets), as the run goes: every shard
  walks the files in one order, the heaviest first, and runs each file it claims first
  (:class:`Queue`). A shard that finishes early takes the next file: on a loaded machine a
  file's time swings (the 3.9.1 pass dealt in advance by its weights: 629 s and 1,194 s).
- Without it, in advance: the longest first, each to the shard with the least work so far
  (:func:`assign`), the same split computed in every shard's process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest

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


def weigh(tests: Iterable[tuple[str, str]], seconds: Mapping[str, float]) -> dict[str, float]:
    """Each file's seconds (the sum of its tests'), the heaviest first (ties: by name)."""
    work: dict[str, float] = {}
    for file, test in tests:
        work[file] = work.get(file, 0.0) + seconds.get(test, UNKNOWN_SECONDS)
    return {f: work[f] for f in sorted(work, key=lambda f: (-work[f], f))}


def assign(
    tests: Iterable[tuple[str, str]], count: int, seconds: Mapping[str, float]
) -> list[set[str]]:
    """The files of ``tests`` (pairs of file, test id) in ``count`` shards of about equal
    work: the longest file first, each to the shard with the least so far (ties: the
    lowest shard, then the file's name, so every shard computes the same split)."""
    work = weigh(tests, seconds)
    shards: list[set[str]] = [set() for _ in range(count)]
    totals = [0.0] * count
    for file in work:
        lightest = min(range(count), key=lambda i: (totals[i], i))
        shards[lightest].add(file)
        totals[lightest] += work[file]
    return shards


def order(tests: Iterable[tuple[str, str]], seconds: Mapping[str, float]) -> list[str]:
    """The files of ``tests`` (pairs of file, test id), the heaviest first (ties: by name):
    the order every shard walks when they are dealt as the run goes."""
    return list(weigh(tests, seconds))


class Queue:
    """The files claimed so far by the shards of one run: one empty file each in
    ``directory``, made only if it is not there (``O_EXCL``), so exactly one shard claims
    each test file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def claim(self, file: str) -> bool:
        """True for the one shard that asked first."""
        name = file.replace(os.sep, "__") + ".claimed"
        try:
            os.close(os.open(self.directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


class Plugin:
    """The pytest plugin (tests/conftest.py registers it). ``RUNNER_TEST_SHARD=I/N``: only
    the test files of shard I; with ``RUNNER_TEST_QUEUE=DIR``, the files this shard claims
    first as the run goes.
    ``RUNNER_TEST_DURATIONS=FILE``: each test's seconds written there at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.queue: Queue | None = None

    @pytest.hookimpl(trylast=True)  # after -m and -k: the shards split what is left
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        value = os.environ.get("RUNNER_TEST_SHARD")
        if not value:
            return
        index, count = parse(value)
        queue = os.environ.get("RUNNER_TEST_QUEUE")
        if queue:
            self.queue = Queue(Path(queue))  # dealt as the run goes
            return
        tests = [(item.location[0], item.nodeid) for item in items]
        mine = assign(tests, count, self._weights())[index]
        config.hook.pytest_deselected(items=[i for i in items if i.location[0] not in mine])
        items[:] = [i for i in items if i.location[0] in mine]

    @staticmethod
    def _weights() -> dict[str, float]:
        return load(leg(os.environ.get("RUNNER_TEST_PREFECT", "3")))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """With a queue: pytest's own loop (_pytest/main.py), over the files this shard
        claims, a file at a time. The item after a file's last is the first of the next file
        in the order, claimed or not: only its chain counts (the module is torn down, the
        session's server kept); the session is torn down at its end as always. What the
        other shards ran is reported deselected."""
        if self.queue is None:
            return None
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            raise session.Interrupted(f"{session.testsfailed} errors during collection")
        if session.config.option.collectonly:
            return True
        files: dict[str, list[pytest.Item]] = {}
        for item in session.items:
            files.setdefault(item.location[0], []).append(item)
        walk = order([(item.location[0], item.nodeid) for item in session.items], self._weights())
        others: list[pytest.Item] = []
        for position, file in enumerate(walk):
            if not self.queue.claim(file):
                others.extend(files[file])
                continue
            items = files[file]
            later = walk[position + 1] if position + 1 < len(walk) else None
            after = files[later][0] if later is not None else None
            for i, item in enumerate(items):
                nextitem = items[i + 1] if i + 1 < len(items) else after
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                if session.shouldfail:
                    raise session.Failed(session.shouldfail)
                if session.shouldstop:
                    raise session.Interrupted(session.shouldstop)
        if others:
            session.config.hook.pytest_deselected(items=others)
        return True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        out = os.environ.get("RUNNER_TEST_DURATIONS")
        if out:
            Path(out).write_text(json.dumps(self.seconds, indent=0) + "\n")


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
