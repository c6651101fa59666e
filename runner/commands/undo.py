"""``runner undo DIR``: the undo of an apply, reviewed and applied like any plan
(:mod:`runner.undo`); with ``-o``, saved for ``runner apply`` instead, nothing sent."""

from __future__ import annotations

from typing import TextIO

from runner.apply import ApplyRequest
from runner.client import PrefectClient
from runner.commands import apply as apply_command
from runner.commands.interrupt import run_interruptible
from runner.commands.plan import exit_code
from runner.errors import OutputError
from runner.output import check_file
from runner.plan import Plan
from runner.planfile import write_plan
from runner.render import write_rendered
from runner.undo import plan_undo


def save(request: ApplyRequest, output: str, *, out: TextIO) -> int:
    """Make the undo plan, save it to ``output`` and show it; nothing is written to the
    server (``runner apply OUTPUT`` applies it exactly)."""
    assert request.undo is not None
    check_file(output, "-o", replaced=True)  # before the server is asked anything
    target = request.undo

    async def make() -> Plan:
        async with PrefectClient(request.settings, bulk=False) as client:
            return await plan_undo(
                target, client, state_dir=request.state_dir, guards=request.undo_guards
            )

    plan = run_interruptible(make)
    try:
        write_plan(plan, output)
    except OSError as exc:
        raise OutputError(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    write_rendered(plan, request.fmt, out, full=request.full, colour=request.colour)
    if request.fmt == "text":
        out.write(f"Plan saved to {output}: apply exactly this with `runner apply {output}`.\n")
    return exit_code(plan, detailed=request.detailed_exitcode)


def run(
    request: ApplyRequest,
    *,
    output: str | None,
    yes: bool,
    interactive: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    if output is not None:
        return save(request, output, out=out)
    return apply_command.run(request, yes=yes, interactive=interactive, out=out, err=err)
