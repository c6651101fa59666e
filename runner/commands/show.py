"""``runner show FILE``: render a saved plan, or list the runs in a delete archive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, TextIO

import click

from runner.archive import ArchiveReader, is_archive, read_archive, summary
from runner.planfile import read_plan
from runner.render import _printable, write_rendered
from runner.words import plural


def run(
    path: str,
    *,
    fmt: str,
    full: bool,
    colour: bool,
    out: TextIO,
    max_bytes: int | None = None,
) -> int:
    if is_archive(path):
        if fmt == "markdown":
            raise click.UsageError(f"{path} is an archive: it is listed as text or json")
        return list_archive(path, fmt=fmt, out=out)
    write_rendered(read_plan(path), fmt, out, full=full, colour=colour, max_bytes=max_bytes)
    return 0


def _time(value: Any) -> str:
    if not isinstance(value, str):
        return "-"
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return _printable(value)
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _text(value: Any) -> str:
    return _printable(str(value)) if value is not None else "-"


#: The columns: each name and its width (a longer value widens its row only: the listing is
#: printed as it is read, never held whole). The last takes what it needs.
COLUMNS = (
    ("archived", 20),
    ("run id", 36),
    ("name", 24),
    ("state", 10),
    ("end", 20),
    ("states", 6),
    ("logs", 5),
    ("flow/deployment", 0),
)


def _row(cells: tuple[str, ...]) -> str:
    parts = []
    for (name, width), cell in zip(COLUMNS, cells, strict=True):
        parts.append(cell.rjust(width) if name in ("states", "logs") else cell.ljust(width))
    return "  ".join(parts).rstrip()


def _cells(item: dict[str, Any]) -> tuple[str, ...]:
    return (
        _time(item["archived_at"]),
        _text(item["id"]),
        _text(item["name"]),
        _text(item["state_name"] or item["state_type"]),
        _time(item["end_time"]),
        str(item["states"]),
        "-" if item["logs"] is None else str(item["logs"]),
        _text(item["deployment"] or item["flow"]),
    )


def _items(reader: ArchiveReader, plans: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Each record's summary, batch by batch; counts the runs of each plan into ``plans``."""
    for batch in reader.batches():
        for record in batch.records:
            item = summary(record)
            plans[str(item["plan_id"])] = plans.get(str(item["plan_id"]), 0) + 1
            yield item


def list_archive(path: str, *, fmt: str, out: TextIO) -> int:
    """List the runs in an archive as it is read (one batch in memory at a time): a table,
    or one JSON document (``fmt`` ``json``). A torn last batch (an apply stopped while it
    wrote it; its runs were not deleted then) is skipped and said so; 0 unless the file is
    not an archive or is damaged before its end (then the runs before the damage are listed,
    and the error says where)."""
    reader = read_archive(path)
    plans: dict[str, int] = {}
    count = 0
    if fmt == "json":
        out.write("{" + f'"archive": {json.dumps(path)}, "runs": [')
        for item in _items(reader, plans):
            out.write(("," if count else "") + "\n  " + json.dumps(item, ensure_ascii=False))
            count += 1
        torn = reader.torn
        tail = {"offset": torn.offset, "bytes": torn.size} if torn else None
        out.write(
            ("\n" if count else "")
            + f'], "count": {count}, "plans": {json.dumps(plans)},'
            + f' "torn_tail": {json.dumps(tail)}'
            + "}\n"
        )
        return 0
    for item in _items(reader, plans):
        if not count:
            out.write(f"Archive {path}\n" + _row(tuple(name for name, _ in COLUMNS)) + "\n")
        out.write(_row(_cells(item)) + "\n")
        count += 1
    if not count:
        out.write(f"Archive {path}\n")
    by = ", ".join(
        f"{plural(n, 'run')} by plan {_printable(str(plan))}" for plan, n in plans.items()
    )
    out.write(f"{plural(count, 'run')} archived" + (f": {by}" if by else "") + "\n")
    if reader.torn is not None:
        torn = reader.torn
        out.write(
            f"Note: the last {plural(torn.size, 'byte')} (from byte {torn.offset}) are a batch"
            " cut off while it was written: its apply stopped before deleting those runs;"
            " skipped\n"
        )
    return 0
