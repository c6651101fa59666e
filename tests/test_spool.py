"""The spool (a long sequence on disk, a chunk at a time in memory), and the large plan held
in spools: made and written in memory that does not grow with the runs."""

from __future__ import annotations

import io
import random
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from runner import spool
from runner.loader import load_text
from runner.plan import Change, Observation, RunView, StepObservation
from runner.planfile import write_document
from runner.planner import make_plan
from runner.spool import Spool, chained, head, is_spooled, sort, where

SIZES = [0, 1, 2, 3, 4, 5, 6, 7, 11, 12]


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spools that spill past 4 items, in chunks of 3, sorting runs of 5."""
    monkeypatch.setattr(spool, "SPILL_AT", 4)
    monkeypatch.setattr(spool, "CHUNK", 3)
    monkeypatch.setattr(spool, "SORT_RUN", 5)


def sealed(items: list[int]) -> Spool[int]:
    held: Spool[int] = Spool()
    held.extend(items)
    out = held.seal()
    assert isinstance(out, Spool)
    return out


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize("n", SIZES)
def test_a_spool_reads_back_as_the_list_it_was_given(n: int) -> None:
    data = list(range(100, 100 + n))
    held: Spool[int] = Spool()
    held.extend(data)
    assert held.spilled == (n > 4)
    out = held.seal()
    assert isinstance(out, Spool) == (n > 4)
    assert isinstance(out, tuple) == (n <= 4)
    assert list(out) == data and list(out) == data  # read twice
    assert len(out) == n and bool(out) == bool(n)
    assert [out[i] for i in range(n)] == data
    assert [out[-i] for i in range(1, n + 1)] == [data[-i] for i in range(1, n + 1)]
    assert list(out[2:7]) == data[2:7] and list(out[:0]) == []
    assert out == tuple(data) and tuple(data) == out
    assert out != (*data, 0)
    with pytest.raises(IndexError):
        out[n]


@pytest.mark.usefixtures("small")
def test_a_sealed_spool_takes_no_more_items() -> None:
    out = sealed(list(range(9)))
    with pytest.raises(ValueError, match=r"^a sealed spool takes no more items$"):
        out.append(9)


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize("n", SIZES)
def test_where_counts_and_reads_what_it_keeps(n: int) -> None:
    data = list(range(n))
    out = sealed(data) if n > 4 else tuple(data)
    odd = where(out, lambda x: x % 2 == 1)
    assert list(odd) == [x for x in data if x % 2 == 1]
    assert len(odd) == len([x for x in data if x % 2 == 1])
    assert bool(odd) == any(x % 2 == 1 for x in data)
    assert list(odd[1:3]) == [x for x in data if x % 2 == 1][1:3]


@pytest.mark.usefixtures("small")
def test_chained_reads_its_parts_in_turn() -> None:
    parts = [sealed(list(range(7))), (), (7, 8), sealed(list(range(9, 14)))]
    both = chained(parts)
    assert is_spooled(both)
    assert list(both) == list(range(14)) and len(both) == 14
    assert [both[i] for i in range(14)] == list(range(14))
    assert chained([(1, 2), (3,)]) == (1, 2, 3)
    assert isinstance(chained([(1, 2), (3,)]), tuple)


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize("seed", range(8))
def test_a_spilled_spool_sorts_on_disk_stably(seed: int) -> None:
    rng = random.Random(seed)
    data = [(rng.randrange(6), i) for i in range(rng.randrange(5, 40))]
    out = sort(sealed_pairs(data), key=lambda pair: pair[0])
    assert list(out) == sorted(data, key=lambda pair: pair[0])  # ties keep their order
    assert list(head(out, 3)) == sorted(data, key=lambda pair: pair[0])[:3]


def sealed_pairs(items: list[tuple[int, int]]) -> Spool[tuple[int, int]]:
    held: Spool[tuple[int, int]] = Spool()
    held.extend(items)
    out = held.seal()
    assert isinstance(out, Spool)
    return out


@pytest.mark.usefixtures("small")
def test_a_spool_already_in_order_is_not_sorted_again() -> None:
    out = sealed(list(range(20)))
    assert sort(out, key=lambda x: x) is out


@pytest.mark.usefixtures("small")
def test_a_spool_puts_an_item_in_its_place_among_those_still_in_memory() -> None:
    # A server's page order differs from runner's among runs sharing a time: such a pair
    # must not cost a sort of the whole spool on disk.
    def key(x: int) -> int:
        return x

    held: Spool[int] = Spool(order=key)
    held.extend([1, 2, 3, 5, 6, 4, 7, 9, 8, 10, 11])
    out = held.seal()
    assert isinstance(out, Spool)
    assert list(out) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert out.sorted_by(key) and sort(out, key=key) is out


@pytest.mark.usefixtures("small")
def test_a_spool_keeps_an_item_that_comes_before_its_file_where_it_came() -> None:
    def key(x: int) -> int:
        return x

    held: Spool[int] = Spool(order=key)
    held.extend([5, 6, 7, 8, 9, 10, 1, 11])  # 5, 6, 7 are in the file when 1 comes
    out = held.seal()
    assert isinstance(out, Spool)
    assert list(out) == [5, 6, 7, 8, 9, 10, 1, 11]
    assert not out.sorted_by(key)
    assert list(sort(out, key=key)) == [1, 5, 6, 7, 8, 9, 10, 11]


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize("seed", range(30))
def test_a_spool_given_an_order_sorts_as_sorted_does_with_ties_in_arrival_order(
    seed: int,
) -> None:
    rng = random.Random(seed)
    size = rng.randrange(0, 40)
    data = sorted((rng.randrange(size // 2 + 1), i) for i in range(size))
    for _ in range(rng.randrange(4)):  # a few items swapped with one up to 8 places back
        if len(data) > 1:
            j = rng.randrange(1, len(data))
            i = max(0, j - rng.randrange(1, 9))
            data[i], data[j] = data[j], data[i]

    def key(pair: tuple[int, int]) -> int:
        return pair[0]

    held: Spool[tuple[int, int]] = Spool(order=key)
    held.extend(data)
    out = held.seal()
    expected = sorted(data, key=key)  # stable: ties in the order they came
    assert list(sort(out, key=key)) == expected
    assert sorted(out) == sorted(data)
    if isinstance(out, Spool) and out.sorted_by(key):
        assert list(out) == expected


PLAYBOOK = """\
version: 1
name: retention
steps:
  - name: old history
    select: {state: {type: [COMPLETED]}}
    action: delete
"""
BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)
FLOW = str(uuid.UUID(int=7))


def views(count: int) -> Iterator[RunView]:
    """``count`` completed runs as a page of the server gives them, made one at a time."""
    for i in range(count):
        yield RunView(
            id=uuid.UUID(int=random.getrandbits(128)),
            name=f"run-{i:07d}-bright-otter",
            flow=FLOW,
            state_type="COMPLETED",
            state_name="Completed",
            state_id=uuid.UUID(int=random.getrandbits(128)),
            state_since=BASE + timedelta(seconds=i, minutes=1),
            expected_start=BASE + timedelta(seconds=i),
            next_scheduled_start=None,
            start=BASE + timedelta(seconds=i),
            end=BASE + timedelta(seconds=i, minutes=1),
            created=BASE,
            tags=("nightly",),
        )


class Sink(io.StringIO):
    """Counts what is written and keeps none of it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, text: str) -> int:
        self.size += len(text)
        return len(text)


def _plan_and_write(count: int) -> tuple[int, int]:
    """Observe ``count`` runs into a spool, plan them, write the plan: the peak of memory
    traced over it, and the size of the document written."""
    playbook = load_text(PLAYBOOK, name="retention.yaml", env={})
    tracemalloc.start()
    try:
        seen: Spool[RunView] = Spool()
        seen.extend(views(count))
        observation = Observation(
            now=BASE + timedelta(days=400),
            server_url="http://server/api",
            server_version="3.9.1",
            steps=(StepObservation(runs=seen.seal()),),
        )
        plan = make_plan(playbook, observation, plan_id="PLAN")
        del observation, seen
        assert len(plan.steps[0].changes) == count and len(plan.pending) == count
        assert is_spooled(plan.steps[0].changes)
        sink = Sink()
        write_document(plan, sink)
        return tracemalloc.get_traced_memory()[1], sink.size
    finally:
        tracemalloc.stop()


def test_a_large_plan_is_made_and_written_in_memory_that_does_not_grow_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 runs, spooled past 1,000 in chunks of 200: observed into a spool, planned, and
    the document written. Held in memory, as plans of up to :data:`runner.spool.SPILL_AT`
    runs are, they took 8.3 MB of traced memory here; spooled, 1.4 MB (the same at 20,000:
    the buffer before the spill, a chunk or two, the encoder)."""
    monkeypatch.setattr(spool, "SPILL_AT", 1_000)
    monkeypatch.setattr(spool, "CHUNK", 200)
    peak, size = _plan_and_write(10_000)
    assert size > 10_000 * 200  # every change was written
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_a_spooled_view_and_change_come_back_equal_their_ids_carried_as_numbers() -> None:
    import pickle

    ids = iter(uuid.UUID(int=n) for n in range(1, 10))
    view = RunView(
        id=next(ids),
        name="r",
        flow="f",
        deployment="f/d",
        deployment_id=next(ids),
        state_type="SCHEDULED",
        state_name="Late",
        state_id=next(ids),
        state_since=BASE,
        expected_start=BASE,
        next_scheduled_start=BASE,
        state_scheduled_time=BASE,
        start=BASE,
        end=BASE,
        created=BASE,
        tags=("a",),
        work_queue="q",
        work_pool="p",
        parent_task_run_id=next(ids),
        parameters={"x": 1},
        job_variables={},
        idempotency_key="k",
    )
    change = Change(step=0, run=view, op="delete")
    _, (_, _, values) = view.__reduce__()  # type: ignore[str-unpack]
    assert not any(isinstance(value, uuid.UUID) for value in values)
    back = pickle.loads(pickle.dumps([view, change], protocol=pickle.HIGHEST_PROTOCOL))
    assert back == [view, change]
    assert all(isinstance(getattr(back[0], f), uuid.UUID) for f in ("id", "state_id"))
