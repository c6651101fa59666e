"""``runner apply``: the prompt and the signals around :func:`runner.apply.apply`."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import TextIO

import anyio

from runner.apply import ApplyRequest, apply, destructive_kinds, is_destructive
from runner.commands.interrupt import SIGNALS, run_interruptible
from runner.errors import EXIT_INTERRUPTED
from runner.plan import Plan
from runner.words import plural


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM at the prompt: nothing was sent."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _ask(question: str, out: TextIO) -> str:
    """Ask, and read one line from the terminal; a signal ends the wait at once (the event
    loop, which watches for signals, is blocked while the line is read). The question is
    shown once the handlers are in place: a Ctrl-C at the sight of it is never missed."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, interrupt) for s in SIGNALS}
    try:
        out.write(question)
        out.flush()
        return sys.stdin.readline()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _confirm(plan: Plan, *, yes: bool, interactive: bool, out: TextIO, err: TextIO) -> bool:
    if yes:
        return True
    if not interactive:
        if is_destructive(plan):
            err.write(
                "runner: not a terminal: pass --yes to apply changes that"
                f" {', or '.join(destructive_kinds(plan))}\n"
            )
            return False
        return True
    answer = _ask(f"Apply {plural(len(plan.work), 'change')} to {plan.server_url}? [y/N] ", out)
    answer = answer.strip().lower()
    return answer in ("y", "yes")


def run(request: ApplyRequest, *, yes: bool, interactive: bool, out: TextIO, err: TextIO) -> int:
    """Apply. Ctrl-C or SIGTERM before the first write (while loading, planning, at the
    prompt) stop at once; once writing, they stop dispatching, let the requests in flight
    finish, and leave the rest pending for the resume. Either way the exit code is 130."""
    writing = False
    stops: list[anyio.Event] = []

    def confirm(plan: Plan) -> bool:
        nonlocal writing
        writing = _confirm(plan, yes=yes, interactive=interactive, out=out, err=err)
        return writing

    def soft_stop(name: str) -> bool:
        if not writing:  # nothing sent: stop now
            return False
        err.write(f"\nrunner: {name}: finishing requests in flight, then stopping\n")
        stops[0].set()
        return True

    async def command() -> int | str:
        stops.append(anyio.Event())
        try:
            applied = await apply(request, out=out, err=err, confirm=confirm, stop=stops[0])
        except _Interrupted as exc:  # at the prompt
            return exc.name
        return applied.code

    try:
        code = run_interruptible(command, soft_stop=soft_stop)
    except KeyboardInterrupt as exc:
        if writing or not exc.args:
            raise  # a second signal (while writing, or unwinding): the CLI maps it to 130
        code = str(exc)
    if isinstance(code, str):
        err.write(f"\nrunner: {code}: stopped before anything was sent\n")
        return EXIT_INTERRUPTED
    return code
