"""``runner show plan.json``: render a saved plan."""

from __future__ import annotations

from typing import TextIO

from runner.plan import read_plan
from runner.render import render


def run(path: str, *, fmt: str, full: bool, colour: bool, out: TextIO) -> int:
    out.write(render(read_plan(path), fmt, full=full, colour=colour))
    return 0
