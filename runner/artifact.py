"""The apply summary as a Prefect markdown artifact, so the audit trail lives where operators look.

One document for both places that publish it: ``runner apply --artifact`` (through our own
client) and the ``runner[prefect]`` flow (through Prefect's SDK, which links it to the flow run).
"""

from __future__ import annotations

import re

from runner.executor import ApplyResult
from runner.plan import Plan
from runner.render import render
from runner.words import plural

MAX_PROBLEM_ROWS = 200


def artifact_key(playbook_name: str) -> str:
    """``runner-<playbook name>``: Prefect artifact keys allow lowercase letters, digits, dashes."""
    slug = re.sub(r"[^a-z0-9-]+", "-", playbook_name.lower()).strip("-")
    return f"runner-{slug or 'playbook'}"


def summary_markdown(plan: Plan | None, result: ApplyResult | None, *, dry_run: bool) -> str:
    """The plan as markdown, then what the apply did, with every drifted or failed run."""
    if plan is None:
        return "runner made no plan."
    parts = [render(plan, "markdown")]
    if dry_run:
        parts.append("\n**Dry run**: nothing was applied.\n")
    elif result is None:
        parts.append("\n**Nothing was applied** (nothing to do, or a guard refused the plan).\n")
    else:
        counts = {s: result.count(s) for s in ("done", "drifted", "raced", "failed", "pending")}
        pending = counts["pending"] + result.count("created")
        raced = f", {counts['raced']} raced" if counts["raced"] else ""
        parts.append(
            f"\n**Applied**: {counts['done']} done, {counts['drifted']} drifted (left alone),"
            f" {counts['failed']} failed, {pending} pending{raced} in {result.seconds:.1f}s,"
            f" {plural(result.requests, 'request')}.\n"
        )
        if result.stopped:
            parts.append(f"\n**Stopped**: {result.stopped}. Resume with `runner apply --resume`.\n")
        problems = [
            o for o in result.outcomes.values() if o.status in ("drifted", "raced", "failed")
        ]
        if problems:
            parts.append("\n| run | id | outcome | detail |\n|---|---|---|---|\n")
            for o in problems[:MAX_PROBLEM_ROWS]:
                detail = (o.detail or "").replace("|", "\\|").replace("\n", " ")
                parts.append(
                    f"| {o.change.run.name} | `{o.change.run.id}` | {o.status} | {detail} |\n"
                )
            if len(problems) > MAX_PROBLEM_ROWS:
                parts.append(
                    f"\n{len(problems) - MAX_PROBLEM_ROWS} more; the full list is in"
                    " `runner apply --report`.\n"
                )
    return "".join(parts)
