"""``runner apply``: the prompt and the signals around :func:`runner.apply.apply`."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import termios
from typing import TextIO

import anyio

from runner.apply import ApplyRequest, apply, destructive_kinds, is_destructive
from runner.commands.interrupt import run_interruptible
from runner.errors import EXIT_INTERRUPTED
from runner.plan import Plan
from runner.words import plural

#: Where an answer ends: Enter (a newline; a carriage return from a terminal in raw mode).
_LINE_END = re.compile(rb"[\r\n]")
#: The longest answer read as one: a longer line is read to its end and answers nothing
#: (never its first part alone: ``y``, a thousand spaces and ``no`` is not a yes).
_ANSWER_BYTES = 1024


async def _ask(question: str, out: TextIO) -> str:
    """Ask, and read one line from the terminal, in the event loop; ``""`` at the end of input
    or when the terminal is gone.

    The loop, which watches for Ctrl-C and SIGTERM (:func:`run_interruptible`), keeps
    running while the operator thinks: a signal at the prompt cancels the apply before
    anything is sent, and the server lock's lease is renewed meanwhile. So the terminal is
    read only as far as it has bytes (``os.read`` once it is readable), never by a blocking
    read: one of those missed a signal that came between the question and the read
    (measured: 1 prompt in 40 never stopped, on a loaded machine), and one waiting for the
    rest of a line (a ``y`` then Ctrl-D; a raw-mode terminal) heard no signal at all.

    What was typed before the question shows is dropped (``tcflush``): a ``y`` typed while
    the plan was being made answers nothing the operator has seen."""
    fd = sys.stdin.fileno()
    with contextlib.suppress(termios.error, OSError):
        termios.tcflush(fd, termios.TCIFLUSH)
    out.write(question)
    out.flush()
    answer = bytearray()
    too_long = False
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal hung up
            return ""
        if not chunk:  # the end of input before Enter: no answer
            return ""
        end = _LINE_END.search(chunk)
        part = chunk[: end.start() if end else len(chunk)]
        too_long = too_long or len(answer) + len(part) > _ANSWER_BYTES
        if not too_long:
            answer += part
        if end:
            return "" if too_long else answer.decode(errors="replace")


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
    # Spaces and tabs around, nothing else: str.strip() would take a no-break space or a
    # control character (0x1c-0x1f, 0x85) for one, and that is not an explicit yes.
    return answer.strip(" \t").lower() in ("y", "yes")


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
