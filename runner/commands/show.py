"""``runner show plan.json``: render a saved plan."""

from __future__ import annotations

from typing import TextIO

from runner.planfile import read_plan
from runner.render import write_rendered


def run(path: str, *, fmt: str, full: bool, colour: bool, out: TextIO) -> int:
    write_rendered(read_plan(path), fmt, out, full=full, colour=colour)
    return 0
