"""``runner apply``: the prompt and the signals around :func:`runner.apply.apply`."""

from __future__ import annotations

import signal
import sys
from typing import TextIO

import anyio

from runner.apply import Applied, ApplyRequest, apply, is_destructive
from runner.plan import Plan


def _confirm(plan: Plan, *, yes: bool, interactive: bool, out: TextIO, err: TextIO) -> bool:
    if yes:
        return True
    if not interactive:
        if is_destructive(plan):
            err.write(
                "runner: not a terminal: pass --yes to apply changes that delete, cancel or"
                " change the state of runs\n"
            )
            return False
        return True
    out.write(f"Apply {len(plan.pending)} changes to {plan.server_url}? [y/N] ")
    out.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def run(request: ApplyRequest, *, yes: bool, interactive: bool, out: TextIO, err: TextIO) -> int:
    """Apply; Ctrl-C or SIGTERM stop dispatching, let the requests in flight finish, and
    leave the rest pending for the resume."""

    async def main() -> Applied:
        stop = anyio.Event()
        applied: Applied | None = None
        error: Exception | None = None
        async with anyio.create_task_group() as group:

            async def watch_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        err.write(
                            f"\nrunner: {signal.Signals(signum).name}: finishing requests in"
                            " flight, then stopping\n"
                        )
                        stop.set()
                        return

            group.start_soon(watch_signals)
            try:
                applied = await apply(
                    request,
                    out=out,
                    err=err,
                    confirm=lambda plan: _confirm(
                        plan, yes=yes, interactive=interactive, out=out, err=err
                    ),
                    stop=stop,
                )
            except Exception as exc:  # raised below as itself, not inside an exception group
                error = exc
            finally:
                group.cancel_scope.cancel()
        if error is not None:
            raise error
        assert applied is not None
        return applied

    return anyio.run(main).code
