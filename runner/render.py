"""Plans as people and tools read them: a terminal diff, markdown for PRs, JSON, and the few
words that say what a run will be after its change (:func:`describe_after`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TextIO

from runner.plan import Change, Plan, StepPlan
from runner.planfile import dumps, write_document
from runner.timeexpr import format_duration
from runner.words import plural

DEFAULT_ROWS = 25
_COLOURS = {"delete": "31", "noop": "2", "set_state": "33", "recreate": "36", "tag": "34"}


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z" if value else "-"


def _before(change: Change) -> str:
    return change.run.state_name or change.run.state_type or "no state"


def _where(change: Change) -> str:
    return change.run.deployment or change.run.flow


def _header(plan: Plan) -> list[str]:
    version = f" (Prefect {plan.server_version})" if plan.server_version else ""
    return [
        f"Plan {plan.id} for {plan.playbook_name} ({plan.playbook_path})",
        f"against {plan.server_url}{version}, made {_time(plan.created_at)}",
    ]


def _step_title(step: StepPlan) -> str:
    return (
        f"Step {step.index + 1}: {step.name} [{step.action}]: {step.selected} selected,"
        f" {len(step.pending)} to change, {len(step.noops)} unchanged"
    )


def summary_line(plan: Plan) -> str:
    counts = plan.counts()
    unchanged = counts.pop("unchanged")
    pending = sum(counts.values())
    parts = [f"{v} {k}" for k, v in counts.items()]
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"{pending} to change{detail}, {unchanged} unchanged"


def to_text(plan: Plan, *, max_rows: int | None = DEFAULT_ROWS, colour: bool = False) -> str:
    lines = [*_header(plan), ""]
    for step in plan.steps:
        lines.append(_step_title(step))
        rows = [
            (
                c.run.name,
                _where(c),
                _before(c),
                _time(c.run.expected_start),
                describe_after(c),
                c.op,
            )
            for c in step.changes
        ]
        shown = rows if max_rows is None else rows[:max_rows]
        if shown:
            headers = ("run", "flow/deployment", "before", "expected start", "after")
            widths = [max(len(headers[i]), *(len(r[i]) for r in shown)) for i in range(4)]
            lines.append(
                "  " + "  ".join(h.ljust(widths[i]) for i, h in enumerate(headers[:4])) + "  after"
            )
            for row in shown:
                text = (
                    "  " + "  ".join(row[i].ljust(widths[i]) for i in range(4)) + "  -> " + row[4]
                )
                if colour:
                    text = f"\x1b[{_COLOURS.get(row[5], '0')}m{text}\x1b[0m"
                lines.append(text)
        if len(rows) > len(shown):
            lines.append(
                f"  ... and {len(rows) - len(shown)} more (--full shows every run;"
                " --format json has them all)"
            )
        lines.append("")
    lines.append(f"Summary: {summary_line(plan)}")
    for note in plan.notes:
        lines.append(f"Note: {note}")
    for violation in plan.violations:
        lines.append(f"Refused: {violation}")
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(plan: Plan, *, max_rows: int | None = DEFAULT_ROWS) -> str:
    version = f" (Prefect {plan.server_version})" if plan.server_version else ""
    out = [
        f"### runner plan: {plan.playbook_name}",
        "",
        f"`{plan.playbook_path}` against `{plan.server_url}`{version}, made"
        f" {_time(plan.created_at)}. **{summary_line(plan)}.**",
        "",
    ]
    for violation in plan.violations:
        out.append(f"> :no_entry: **Refused:** {_md_cell(violation)}")
    for note in plan.notes:
        out.append(f"> Note: {_md_cell(note)}")
    if plan.violations or plan.notes:
        out.append("")
    out += ["| step | action | selected | to change | unchanged |", "|---|---|---:|---:|---:|"]
    for step in plan.steps:
        out.append(
            f"| {step.index + 1}. {_md_cell(step.name)} | `{step.action}` | {step.selected}"
            f" | {len(step.pending)} | {len(step.noops)} |"
        )
    for step in plan.steps:
        if not step.changes:
            continue
        out += [
            "",
            f"<details><summary>Step {step.index + 1}: {_md_cell(step.name)}"
            f" ({plural(len(step.changes), 'run')})</summary>",
            "",
            "| run | flow/deployment | before | expected start | after |",
            "|---|---|---|---|---|",
        ]
        shown = step.changes if max_rows is None else step.changes[:max_rows]
        for c in shown:
            out.append(
                f"| `{_md_cell(c.run.name)}` | {_md_cell(_where(c))} | {_md_cell(_before(c))}"
                f" | {_time(c.run.expected_start)} | {_md_cell(describe_after(c))} |"
            )
        if len(step.changes) > len(shown):
            out.append(f"| ... and {len(step.changes) - len(shown)} more | | | | |")
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


def to_json(plan: Plan) -> str:
    """The plan document, as ``runner plan -o`` writes it."""
    return dumps(plan)


def render(plan: Plan, fmt: str, *, full: bool = False, colour: bool = False) -> str:
    rows = None if full else DEFAULT_ROWS
    if fmt == "json":
        return to_json(plan)
    if fmt == "markdown":
        return to_markdown(plan, max_rows=rows)
    return to_text(plan, max_rows=rows, colour=colour)


def write_rendered(
    plan: Plan, fmt: str, out: TextIO, *, full: bool = False, colour: bool = False
) -> None:
    """:func:`render` to ``out``; the JSON document is written change by change, never held
    whole."""
    if fmt == "json":
        write_document(plan, out)
    else:
        out.write(render(plan, fmt, full=full, colour=colour))


def describe_after(change: Change) -> str:
    """What the run will be after the change, in a few words (for diffs)."""
    if change.op == "noop":
        return f"unchanged: {change.reason}"
    if change.op == "delete":
        return "deleted"
    if change.op == "resume":
        return "resumed"
    if change.op == "tag":
        return "tags " + ", ".join(change.tags or ()) if change.tags else "no tags"
    assert change.state is not None
    text = change.state.name
    if change.state.scheduled_time is not None:
        text += f" at {change.state.scheduled_time.strftime('%Y-%m-%d %H:%M:%S')}Z"
        if change.run.expected_start is not None and change.op in ("set_state", "recreate"):
            delta = change.state.scheduled_time - change.run.expected_start
            text += f" ({'+' if delta >= timedelta(0) else ''}{format_duration(delta)})"
    if change.op == "recreate":
        text = "new run, " + text + "; old run deleted"
    if change.state.force:
        text += " (forced)"
    return text
