"""``runner plan PLAYBOOK``: the diff, and the saved plan with ``-o``; nothing sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TextIO

from runner.client import PrefectClient
from runner.commands.interrupt import run_interruptible
from runner.errors import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, OutputError
from runner.loader import load_playbook
from runner.observe import plan_playbook
from runner.output import check_file
from runner.plan import Plan
from runner.planfile import write_plan
from runner.render import write_rendered
from runner.retry import policy_for
from runner.settings import ConnectionSettings


def exit_code(plan: Plan, *, detailed: bool) -> int:
    """1 when a guard refuses the plan; 2 for pending changes with ``--detailed-exitcode``."""
    if plan.violations:
        return EXIT_ERROR
    if detailed and plan.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def make(path: str, *, variables: Mapping[str, str], settings: ConnectionSettings) -> Plan:
    playbook = load_playbook(path, variables=variables)

    async def go() -> Plan:
        # bulk=False: planning needs no bulk routes, so not even their (refused) probe is sent.
        retry = policy_for(playbook.defaults.retry)
        async with PrefectClient(settings, bulk=False, retry=retry) as client:
            return await plan_playbook(playbook, client)

    return run_interruptible(go)


def run(
    path: str,
    *,
    variables: Mapping[str, str],
    settings: ConnectionSettings,
    output: str | None,
    fmt: str,
    full: bool,
    detailed_exitcode: bool,
    max_bytes: int | None = None,
    colour: bool,
    out: TextIO,
) -> int:
    if output:
        check_file(output, "-o", replaced=True)  # before the server is asked anything
    plan = make(path, variables=variables, settings=settings)
    if output:
        try:
            write_plan(plan, output)
        except OSError as exc:
            raise OutputError(f"-o {output}: cannot write: {exc.strerror or exc}") from None
    write_rendered(plan, fmt, out, full=full, colour=colour, max_bytes=max_bytes)
    if output and fmt == "text":
        out.write(f"Plan saved to {output}: apply exactly this with `runner apply {output}`.\n")
    return exit_code(plan, detailed=detailed_exitcode)
