"""``runner apply``: the prompt and the signals around :func:`runner.apply.apply`."""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import TextIO

import anyio
from anyio.abc import TaskStatus

from runner.apply import Applied, ApplyRequest, apply, destructive_kinds, is_destructive
from runner.commands.interrupt import SIGNALS
from runner.errors import EXIT_INTERRUPTED
from runner.plan import Plan
from runner.words import plural


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM at the prompt: nothing was sent."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


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

    async def main() -> int:
        stop = anyio.Event()
        writing = False
        interrupted: str | None = None
        applied: Applied | None = None
        error: Exception | None = None

        def confirm(plan: Plan) -> bool:
            nonlocal writing
            writing = _confirm(plan, yes=yes, interactive=interactive, out=out, err=err)
            return writing

        async with anyio.create_task_group() as group:

            async def watch_signals(*, task_status: TaskStatus[None]) -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(*SIGNALS) as signals:
                    task_status.started()
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if not writing:  # nothing sent: stop now
                            interrupted = name
                            group.cancel_scope.cancel()
                            return
                        err.write(
                            f"\nrunner: {name}: finishing requests in flight, then stopping\n"
                        )
                        stop.set()
                        break
                # A second Ctrl-C or SIGTERM stops at once, as a Ctrl-C outside an apply does
                # (the CLI maps it to 130).
                for signum in SIGNALS:
                    signal.signal(signum, _raise_interrupt)

            # Watching before the apply starts: a signal is never missed, whatever the stage.
            await group.start(watch_signals)
            try:
                applied = await apply(request, out=out, err=err, confirm=confirm, stop=stop)
            except _Interrupted as exc:
                interrupted = exc.name
            except Exception as exc:  # raised below as itself, not inside an exception group
                error = exc
            finally:
                group.cancel_scope.cancel()
        if interrupted is not None and applied is None and error is None:
            err.write(f"\nrunner: {interrupted}: stopped before anything was sent\n")
            return EXIT_INTERRUPTED
        if error is not None:
            raise error
        assert applied is not None
        return applied.code

    saved = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        return anyio.run(main)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
