"""Plans as people and tools read them: a terminal diff, markdown for PRs, JSON, and the few
words that say what a run will be after its change (:func:`describe_after`)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import TextIO

from runner.plan import LEGACY_CARRY, Change, ObjectView, Plan, StepPlan
from runner.planfile import dumps, write_document
from runner.targets import paused_word
from runner.timeexpr import format_duration
from runner.words import plural

DEFAULT_ROWS = 25
_COLOURS = {
    "delete": "31",
    "noop": "2",
    "set_state": "33",
    "recreate": "36",
    "tag": "34",
    "pause": "33",
    "resume": "36",
}


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:  # an `at` time written with an offset (+02:00)
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def describe_before(change: Change) -> str:
    """The run's state; for a change that gives it a new time, with the time it has now."""
    label = change.run.state_name or change.run.state_type or "no state"
    current = _current_time(change)
    return f"{label} at {_time(current)}" if current is not None else label


def _current_time(change: Change) -> datetime | None:
    """When a scheduled run a change moves is scheduled to start now (None for others)."""
    moves = change.state is not None and change.state.scheduled_time is not None
    if moves and change.run.state_type == "SCHEDULED":
        return change.run.scheduled_time
    return None


def _where(change: Change) -> str:
    return change.run.deployment or change.run.flow


def _header(plan: Plan) -> list[str]:
    version = f" (Prefect {plan.server_version})" if plan.server_version else ""
    return [
        f"Plan {plan.id} for {plan.playbook_name} ({plan.playbook_path})",
        f"against {plan.server_url}{version}, made {_time(plan.created_at)}",
    ]


def _step_title(step: StepPlan) -> str:
    target = "" if step.target == "flow_runs" else f" {step.noun}s"
    return (
        f"Step {step.index + 1}: {step.name} [{step.action}{target}]: {step.selected} selected,"
        f" {_to_change(step)} to change, {_unchanged(step)} unchanged"
    )


def _to_change(step: StepPlan) -> int:
    return len(step.pending) + len(step.pending_objects)


def _unchanged(step: StepPlan) -> int:
    return len(step.noops) + len(step.objects) - len(step.pending_objects)


def _schedules(view: ObjectView) -> str:
    if not view.schedules:
        return "none"
    return ", ".join(
        f"{s.schedule}{f' {s.timezone}' if s.timezone else ''} ({'on' if s.active else 'off'})"
        for s in view.schedules
    )


#: How many of the scheduled runs a deployment's write deletes the plan's line names.
DELETED_RUNS_LISTED = 5


def _deletes(view: ObjectView) -> str:
    """The scheduled runs the server deletes with a deployment's pause or resume."""
    if not view.scheduled_runs:
        return ""
    listed = view.scheduled_runs[:DELETED_RUNS_LISTED]
    runs = ", ".join(f"{r.name} ({r.state_name} {_time(r.scheduled)})" for r in listed)
    n = len(view.scheduled_runs)
    if n > len(listed):
        runs += f" and {n - len(listed)} more (every one in the saved plan and --format json)"
    return f"; the server deletes its {plural(n, 'scheduled run')}: {runs}"


def _object_table(step: StepPlan) -> tuple[tuple[str, ...], list[tuple[str, ...]], list[str]]:
    """A step with a target: headers, one row an object (its paused flag before, last the
    after), and each row's op."""
    rows: list[tuple[str, ...]] = []
    for change in step.objects:
        view = change.object
        before = paused_word(view.paused, view.kind)
        after = (
            f"unchanged: {change.reason}"
            if change.is_noop
            else paused_word(change.op == "pause", view.kind) + _deletes(view)
        )
        if view.kind == "deployment":
            cells: tuple[str, ...] = (
                view.name,
                view.work_pool or "-",
                view.work_queue or "-",
                ", ".join(_tag(t) for t in view.tags) or "-",
                _schedules(view),
            )
        elif view.kind == "work_pool":
            cells = (view.name, view.type or "-")
        else:
            cells = (view.name, view.work_pool or "-")
        rows.append((*(_printable(c) for c in cells), before, _printable(after)))
    headers = {
        "deployments": ("deployment", "work pool", "work queue", "tags", "schedules (kept)"),
        "work_pools": ("work pool", "type"),
        "work_queues": ("work queue", "work pool"),
    }[step.target] + ("before", "after")
    return headers, rows, [c.op for c in step.objects]


def _printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``): a run's name or tag
    never moves the reviewer's cursor or erases a row of the review."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


#: For other modules' output of names and details (the apply summary).
printable = _printable

_PLAIN_TAG = re.compile(r"[^\s,\"]+(?: [^\s,\"]+)*")


def _tag(tag: str) -> str:
    """A tag as written in the tags column: quoted (as JSON) when it holds a comma, a quote or
    spaces at its ends, so the one tag "keep, nightly" never reads as two."""
    return tag if _PLAIN_TAG.fullmatch(tag) else json.dumps(tag, ensure_ascii=False)


def _tags(change: Change) -> str:
    return ", ".join(_tag(tag) for tag in change.run.tags) if change.run.tags else "-"


def _headers(step: StepPlan) -> tuple[str, ...]:
    tags = ("tags",) if step.show_tags else ()
    return ("run", "flow/deployment", "before", "expected start", *tags, "after")


def _row(change: Change, step: StepPlan) -> tuple[str, ...]:
    """One run's cells, in the order of :func:`_headers`."""
    tags = (_tags(change),) if step.show_tags else ()
    cells = (
        change.run.name,
        _where(change),
        describe_before(change),
        _time(change.run.expected_start),
        *tags,
        describe_after(change),
    )
    return tuple(_printable(cell) for cell in cells)


_CARRIED_WORDS = {"job_variables": "job variables", "work_queue": "work queue"}


def carried_line(step: StepPlan) -> str | None:
    """What a step's new runs take from the runs they replace, and what none can take
    (None for a step that recreates nothing)."""
    recreates = [c for c in step.pending if c.op == "recreate"]
    if not recreates:
        return None
    counts: dict[str, int] = {}
    for change in recreates:
        for name in change.carry if change.carry is not None else LEGACY_CARRY:
            counts[name] = counts.get(name, 0) + 1
    parts = [
        _CARRIED_WORDS.get(name, name)
        + ("" if count == len(recreates) else f" ({count} of {len(recreates)})")
        for name, count in counts.items()
    ]
    if not parts:
        return (
            "New runs carry nothing of the old runs: no name, parameters, tags, job variables"
            " or work queue (the deployment's own), and not their id, state history, logs,"
            " task runs or artifacts."
        )
    return (
        f"New runs carry the old runs' {', '.join(parts)}; not their id, state history, logs,"
        " task runs or artifacts."
    )


def archive_line(step: StepPlan) -> str | None:
    """What a delete step keeps of the runs it deletes (None for other steps, or nothing to
    delete)."""
    if step.action != "delete" or not step.pending:
        return None
    if step.archive is None:
        return (
            "Not archived (archive: false): the runs, their state history and logs are gone"
            " once deleted."
        )
    what = "state history and logs" if step.archive.logs else "state history"
    return f"Archived before the delete: each run as the API returns it, with its {what}."


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
        for note in (carried_line(step), archive_line(step)):
            if note:
                lines.append(f"  {note}")
        if step.target == "flow_runs":
            headers = _headers(step)
            listed = step.changes if max_rows is None else step.changes[:max_rows]
            shown = [_row(c, step) for c in listed]  # only those shown: a plan can be huge
            ops: list[str] = [c.op for c in listed]
            total = len(step.changes)
        else:
            headers, rows, ops = _object_table(step)
            shown = rows if max_rows is None else rows[:max_rows]
            total = len(rows)
        if shown:
            n = len(headers) - 1
            widths = [max(len(headers[i]), *(len(r[i]) for r in shown)) for i in range(n)]
            lines.append(
                "  " + "  ".join(h.ljust(widths[i]) for i, h in enumerate(headers[:n])) + "  after"
            )
            for row, op in zip(shown, ops, strict=False):
                text = (
                    "  " + "  ".join(row[i].ljust(widths[i]) for i in range(n)) + "  -> " + row[n]
                )
                if colour:
                    text = f"\x1b[{_COLOURS.get(op, '0')}m{text}\x1b[0m"
                lines.append(text)
        if total > len(shown):
            lines.append(
                f"  ... and {total - len(shown)} more (--full shows every {step.noun};"
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


def to_markdown(
    plan: Plan, *, max_rows: int | None = DEFAULT_ROWS, max_bytes: int | None = None
) -> str:
    """The plan as markdown. ``max_bytes`` bounds its UTF-8 size (GitHub takes at most 1 MiB
    a step summary): runs are listed in order while they fit, and each step that lists fewer
    says how many more it has and where they are (``MIN_MARKDOWN_BYTES`` at least)."""
    version = f" (Prefect {plan.server_version})" if plan.server_version else ""
    head = [
        f"### runner plan: {plan.playbook_name}",
        "",
        f"`{plan.playbook_path}` against `{plan.server_url}`{version}, made"
        f" {_time(plan.created_at)}. **{summary_line(plan)}.**",
        "",
    ]
    for violation in plan.violations:
        head.append(f"> :no_entry: **Refused:** {_md_cell(violation)}")
    for note in plan.notes:
        head.append(f"> Note: {_md_cell(note)}")
    if plan.violations or plan.notes:
        head.append("")
    head += ["| step | action | selected | to change | unchanged |", "|---|---|---:|---:|---:|"]
    for step in plan.steps:
        head.append(
            f"| {step.index + 1}. {_md_cell(step.name)} | `{step.action}` | {step.selected}"
            f" | {_to_change(step)} | {_unchanged(step)} |"
        )
    sections: list[tuple[StepPlan, list[str], list[str]]] = []
    for step in plan.steps:
        if not step.changes and not step.objects:
            continue
        notes = [_md_cell(n) for n in (carried_line(step), archive_line(step)) if n]
        if step.target == "flow_runs":
            headers = _headers(step)
            table = [_row(c, step) for c in step.changes]
        else:
            headers, table, _ = _object_table(step)
        opening = [
            "",
            f"<details><summary>Step {step.index + 1}: {_md_cell(step.name)}"
            f" ({plural(len(table), step.noun)})</summary>",
            "",
            *[part for note in notes for part in (note, "")],
            "| " + " | ".join(headers) + " |",
            "|" + "---|" * len(headers),
        ]
        shown = table if max_rows is None else table[:max_rows]
        rows = []
        for row in shown:
            cells = [_md_cell(cell) for cell in row]
            cells[0] = f"`{cells[0]}`"
            rows.append("| " + " | ".join(cells) + " |")
        sections.append((step, opening, rows))
    if max_bytes is not None:
        return _markdown_within(head, sections, max_bytes=max_bytes, plan=plan)
    out = list(head)
    for step, opening, rows in sections:
        out += opening + rows
        if _items(step) > len(rows):
            out.append(_more_row(step, _items(step) - len(rows), cut=False))
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


#: The least ``max_bytes`` :func:`to_markdown` takes: room for its header and a step table.
MIN_MARKDOWN_BYTES = 4096


def _items(step: StepPlan) -> int:
    """How many rows the step's table has: its runs, or its objects."""
    return len(step.changes) if step.target == "flow_runs" else len(step.objects)


def _columns(step: StepPlan) -> int:
    return len(_headers(step) if step.target == "flow_runs" else _object_table(step)[0])


def _more_row(step: StepPlan, more: int, *, cut: bool) -> str:
    text = f"... and {more} more"
    if cut:
        text = (
            f"... and {plural(more, f'more {step.noun}')}, not listed: over the size limit"
            " (--max-bytes); every run is in the saved plan (-o) and in --format json"
        )
    return "| " + " | ".join([text] + [""] * (_columns(step) - 1)) + " |"


def _size(lines: list[str]) -> int:
    return sum(len(line.encode("utf-8")) + 1 for line in lines)


def _markdown_within(
    head: list[str],
    sections: list[tuple[StepPlan, list[str], list[str]]],
    *,
    max_bytes: int,
    plan: Plan,
) -> str:
    """:func:`to_markdown`'s lines, rows cut so that the whole stays within ``max_bytes``."""
    if max_bytes < MIN_MARKDOWN_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_MARKDOWN_BYTES}, not {max_bytes}")
    closing = ["", "</details>"]
    # What every section costs without its rows, with room for the longest line it may end on.
    fixed = _size(head) + sum(
        _size(opening + closing) + len(_more_row(step, _items(step), cut=True)) + 1
        for step, opening, _ in sections
    )
    if fixed > max_bytes:  # too many steps to list even their headers: the table alone
        more = sum(_items(step) for step, _, _ in sections)
        line = (
            f"{plural(more, 'run')} not listed: over the size limit (--max-bytes); every run is"
            " in the saved plan (-o) and in --format json"
        )
        return "\n".join([*head, "", line]) + "\n"
    room = max_bytes - fixed
    out = list(head)
    for step, opening, rows in sections:
        kept: list[str] = []
        for row in rows:
            cost = len(row.encode("utf-8")) + 1
            if cost > room:
                break
            kept.append(row)
            room -= cost
        out += opening + kept
        if len(kept) < len(rows):
            out.append(_more_row(step, _items(step) - len(kept), cut=True))
        elif _items(step) > len(rows):
            out.append(_more_row(step, _items(step) - len(rows), cut=False))
        out += closing
    return "\n".join(out) + "\n"


def to_json(plan: Plan) -> str:
    """The plan document, as ``runner plan -o`` writes it."""
    return dumps(plan)


def render(
    plan: Plan,
    fmt: str,
    *,
    full: bool = False,
    colour: bool = False,
    max_bytes: int | None = None,
) -> str:
    """``max_bytes`` (markdown only) bounds the size: see :func:`to_markdown`."""
    rows = None if full else DEFAULT_ROWS
    if fmt == "json":
        return to_json(plan)
    if fmt == "markdown":
        return to_markdown(plan, max_rows=rows, max_bytes=max_bytes)
    return to_text(plan, max_rows=rows, colour=colour)


def write_rendered(
    plan: Plan,
    fmt: str,
    out: TextIO,
    *,
    full: bool = False,
    colour: bool = False,
    max_bytes: int | None = None,
) -> None:
    """:func:`render` to ``out``; the JSON document is written change by change, never held
    whole."""
    if fmt == "json":
        write_document(plan, out)
    else:
        out.write(render(plan, fmt, full=full, colour=colour, max_bytes=max_bytes))


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
        text += f" at {_time(change.state.scheduled_time)}"
        # How far the run moves: from the time it is scheduled at now (the "before" column),
        # else (a retry) from its expected start.
        since = _current_time(change) or change.run.expected_start
        if since is not None and change.op in ("set_state", "recreate"):
            delta = change.state.scheduled_time - since
            text += f" ({'+' if delta >= timedelta(0) else ''}{format_duration(delta)})"
    if change.op == "recreate":
        text = "new run, " + text + "; old run deleted"
    if change.state.force:
        text += " (forced)"
    return text
