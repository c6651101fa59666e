"""Ctrl-C and SIGTERM around a command that only reads: the command stops at once.

The event loop watches the signals itself (:func:`anyio.open_signal_receiver`) and cancels
the command's cancel scope, which anyio delivers again at every ``await`` until the command
has unwound. Left to asyncio, a Ctrl-C cancels the main task once (one ``CancelledError``,
which a library's clean-up may absorb) and SIGTERM raises wherever the loop happens to be.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import TypeVar

import anyio
from anyio.abc import TaskStatus

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_interruptible(
    command: Callable[[], Awaitable[T]], *, soft_stop: Callable[[str], bool] | None = None
) -> T:
    """``command()`` in an event loop. A first Ctrl-C or SIGTERM cancels it and raises
    ``KeyboardInterrupt`` named for the signal (the CLI says so and exits 130); a second one,
    while it unwinds, raises at once (the handlers in force before are back by then).

    ``soft_stop(name)`` is asked first, on the first signal: True when the command stops by
    itself instead (an apply that has begun writing finishes the requests in flight). It is
    not cancelled then, and a second signal raises ``KeyboardInterrupt`` at once."""

    async def main() -> T:
        interrupted: str | None = None
        done: list[T] = []
        error: Exception | None = None
        async with anyio.create_task_group() as group:

            async def watch(*, task_status: TaskStatus[None]) -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(*SIGNALS) as signals:
                    task_status.started()
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if soft_stop is not None and soft_stop(name):
                            break
                        interrupted = name
                        group.cancel_scope.cancel()
                        return
                for signum in SIGNALS:
                    signal.signal(signum, _raise_interrupt)

            # Watching before the command starts: a signal is never missed, whatever the stage.
            await group.start(watch)
            try:
                done.append(await command())
            except Exception as exc:  # raised below as itself, not inside an exception group
                error = exc
            finally:
                group.cancel_scope.cancel()
        if interrupted is not None:
            raise KeyboardInterrupt(interrupted)
        if error is not None:
            raise error
        return done[0]

    saved = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        return anyio.run(main)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
