"""``runner apply``: the prompt and the signals around :func:`runner.apply.apply`."""

from __future__ import annotations

import sys
from typing import TextIO

import anyio

from runner.apply import ApplyRequest, apply, destructive_kinds, is_destructive
from runner.commands.interrupt import run_interruptible
from runner.errors import EXIT_INTERRUPTED
from runner.plan import Plan
from runner.words import plural


async def _ask(question: str, out: TextIO) -> str:
    """Ask, and read one line from the terminal once the event loop says it is there.

    The loop, which watches for Ctrl-C and SIGTERM (:func:`run_interruptible`), keeps
    running while the operator thinks: a signal at the prompt cancels the apply before
    anything is sent, and the server lock's lease is renewed meanwhile. A blocking read here
    would miss a signal that arrived between the question and the read: Python runs a
    handler between two steps of its own, and a read that has begun waits for the next
    signal (measured: 1 prompt in 40 never stopped, on a loaded machine)."""
    out.write(question)
    out.flush()
    await anyio.wait_readable(sys.stdin.fileno())
    return sys.stdin.readline()


async def _confirm(plan: Plan, *, yes: bool, interactive: bool, out: TextIO, err: TextIO) -> bool:
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
    question = f"Apply {plural(len(plan.work), 'change')} to {plan.server_url}? [y/N] "
    answer = await _ask(question, out)
    return answer.strip().lower() in ("y", "yes")


def run(request: ApplyRequest, *, yes: bool, interactive: bool, out: TextIO, err: TextIO) -> int:
    """Apply. Ctrl-C or SIGTERM before the first write (while loading, planning, at the
    prompt) stop at once; once writing, they stop dispatching, let the requests in flight
    finish, and leave the rest pending for the resume. Either way the exit code is 130."""
    writing = False
    stops: list[anyio.Event] = []

    async def confirm(plan: Plan) -> bool:
        nonlocal writing
        writing = await _confirm(plan, yes=yes, interactive=interactive, out=out, err=err)
        return writing

    def soft_stop(name: str) -> bool:
        if not writing:  # nothing sent: stop now
            return False
        err.write(f"\nrunner: {name}: finishing requests in flight, then stopping\n")
        stops[0].set()
        return True

    async def command() -> int:
        stops.append(anyio.Event())
        applied = await apply(request, out=out, err=err, confirm=confirm, stop=stops[0])
        return applied.code

    try:
        code = run_interruptible(command, soft_stop=soft_stop)
    except KeyboardInterrupt as exc:
        if writing or not exc.args:
            raise  # a second signal (while writing, or unwinding): the CLI maps it to 130
        err.write(f"\nrunner: {exc}: stopped before anything was sent\n")
        return EXIT_INTERRUPTED
    return code
