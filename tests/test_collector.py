"""The cyclic garbage collector paused while a plan is made and written (runner/collector.py)."""

from __future__ import annotations

import gc
import io
from collections.abc import Iterator
from datetime import timedelta

import pytest

from runner.collector import collection_paused
from runner.loader import load_text
from runner.plan import Observation, StepObservation
from runner.planfile import write_document
from runner.planner import make_plan
from tests.test_spool import BASE, PLAYBOOK, views


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_off_in_the_block_and_as_it_was_after() -> None:
    with collection_paused():
        assert not gc.isenabled()
        with collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block leaves it as the outer one made it
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("stop")
    assert gc.isenabled()
    gc.disable()
    with collection_paused():
        pass
    assert not gc.isenabled()  # off before: off after


class Watch(io.StringIO):
    """Says whether the collector was on at any write."""

    def __init__(self) -> None:
        super().__init__()
        self.on: set[bool] = set()

    def write(self, text: str) -> int:
        self.on.add(gc.isenabled())
        return super().write(text)


def test_a_plan_is_written_with_the_collector_paused_and_it_runs_again_after() -> None:
    playbook = load_text(PLAYBOOK, name="retention.yaml", env={})
    observation = Observation(
        now=BASE + timedelta(days=400),
        server_url="http://server/api",
        server_version="3.9.1",
        steps=(StepObservation(runs=tuple(views(30))),),
    )
    plan = make_plan(playbook, observation, plan_id="PLAN")
    out = Watch()
    write_document(plan, out)
    assert out.on == {False}
    assert gc.isenabled()
    assert out.getvalue().count('"key": ') == 30
