"""The delete archive: an audit copy of every run a delete removes, written before the delete.

A gzip-compressed JSON Lines file (``.runner/<plan-id>/archive.jsonl.gz`` by default, or
``runner apply --archive PATH``), append-only. Each apply that archives into it first appends
a header line (its plan, playbook and server); then each batch of deletes appends one gzip
member, one line per run::

    {"run": {...the flow run as the API returned it...},
     "states": [...its state history, oldest first...],
     "logs": [...its logs, oldest first...],             (only with archive: {logs: true})
     "flow": "etl", "deployment": "etl/nightly", "plan_id": "78046883c6db", "step": 0,
     "archived_at": "2026-11-22T17:02:09.123456Z"}

Each member is flushed and fsynced before its batch's delete is sent: no run is deleted
without its record on disk. A crash can only leave the last member torn, and its runs were
not deleted by that apply: reading skips it and says so; the next apply that appends cuts it
off first (and archives those runs again). A run the same plan archived already (an apply
that stopped between the archive and the delete) is not archived twice.

``zcat`` reads the file whole (gzip readers take several members as one stream);
``runner show ARCHIVE`` lists it, batch by batch (:func:`read_archive`).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

from runner import __version__
from runner.errors import ArchiveError, ArchiveWriteError
from runner.redact import redact, redact_secrets

ARCHIVE_FORMAT = "runner-archive"
ARCHIVE_VERSION = 1
#: The archive's name in an apply's folder, next to its checkpoint.
ARCHIVE_NAME = "archive.jsonl.gz"
GZIP_MAGIC = b"\x1f\x8b"

Record = dict[str, Any]

_CHUNK = 1 << 16  # compressed bytes read at a time
#: How every archive's first line begins (its header's first key).
_HEADER_START = b'{"format":"' + ARCHIVE_FORMAT.encode() + b'"'
_OUT = 1 << 20  # decompressed bytes produced at a time (a gzip bomb is read in steps too)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def archive_record(
    run: Mapping[str, Any],
    states: Sequence[Mapping[str, Any]],
    *,
    logs: Sequence[Mapping[str, Any]] | None,
    flow: str,
    deployment: str | None,
    plan_id: str,
    step: int,
) -> Record:
    """One run's line: the server's documents as they are (parameters included: user data),
    the names the plan knew them by, and where and when it was archived."""
    record: Record = {"run": run, "states": list(states)}
    if logs is not None:
        record["logs"] = list(logs)
    record.update(flow=flow, deployment=deployment, plan_id=plan_id, step=step, archived_at=_now())
    return record


def _line(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TornTail:
    """The end of an archive cut off while a batch was written (the apply writing it stopped
    before it finished; the runs of that batch were not deleted by it)."""

    offset: int
    size: int


@dataclass(frozen=True)
class Batch:
    """One complete gzip member: the header lines and run records it holds, and where it
    ends in the file."""

    headers: tuple[Record, ...]
    records: tuple[Record, ...]
    end: int


class _Damaged(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _events(handle: BinaryIO) -> Iterator[tuple[str, int, bytes]]:
    """The file's lines, member by member: ``("line", member start, line)``, then ``("end",
    member end, b"")`` once a member is complete (its CRC checked); ``("torn", member start,
    b"")`` when the file ends inside a member. Raises :class:`_Damaged` for bytes that are
    not gzip, or a line cut off inside a complete member."""
    start = fed = 0
    decoder: Any = None
    partial: list[bytes] = []
    data = b""
    pending = False  # the last call filled its output: more may come without more input
    while True:
        if not data and not pending:
            data = handle.read(_CHUNK)
            if not data:
                if decoder is not None:
                    yield ("torn", start, b"")
                return
        if decoder is None:
            start, decoder, partial = fed, zlib.decompressobj(wbits=31), []
        try:
            out = decoder.decompress(data, _OUT)
        except zlib.error as exc:
            raise _Damaged(start, f"not gzip data: {exc}") from None
        pending = len(out) == _OUT
        rest = decoder.unused_data if decoder.eof else decoder.unconsumed_tail
        fed += len(data) - len(rest)
        data = rest
        if out:
            *lines, tail = out.split(b"\n")
            if lines:
                lines[0] = b"".join([*partial, lines[0]])
                partial = []
                for line in lines:
                    yield ("line", start, line)
            if tail:
                partial.append(tail)
        if decoder.eof:
            if partial:
                raise _Damaged(start, "its last line is cut off inside a complete batch")
            yield ("end", fed, b"")
            decoder, pending = None, False


def _zeros_from(handle: BinaryIO, offset: int) -> bool:
    """Whether every byte of the file from ``offset`` on is zero."""
    handle.seek(offset)
    while chunk := handle.read(_CHUNK):
        if chunk.count(0) != len(chunk):
            return False
    return True


def _torn_header_is_ours(path: Path) -> bool:
    """Whether a file that ends inside its first gzip member began as a runner archive (a
    crash while its header was written), not as somebody else's cut-off gzip file: what
    decompresses of it starts as an archive header does, or, too short to tell, it has the
    gzip header runner writes (no time, no name)."""
    with open(path, "rb") as handle:
        data = handle.read(_CHUNK)
    out = zlib.decompressobj(wbits=31)
    try:
        text = out.decompress(data)
    except zlib.error:
        return False
    if text:
        return _HEADER_START.startswith(text[: len(_HEADER_START)])
    return data[:10] == gzip.compress(b"", mtime=0)[:10]


def _header(value: Any) -> bool:
    return isinstance(value, dict) and "format" in value


class ArchiveReader:
    """Reads an archive batch by batch (:meth:`batches`), holding one batch at a time.

    The first line must be an archive header. A torn last batch is skipped and described by
    :attr:`torn` once the batches are read; anything else that is not an archive's raises
    :class:`~runner.errors.ArchiveError` naming the file and the byte where it is."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.torn: TornTail | None = None
        self.size = 0

    def _fail(self, reason: str) -> ArchiveError:
        return ArchiveError(f"{self.path}: {reason}")

    def batches(self) -> Iterator[Batch]:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (closed below, also when abandoned)
        except OSError as exc:
            raise self._fail(f"cannot read: {exc.strerror or exc}") from None
        with handle:
            self.size = os.fstat(handle.fileno()).st_size
            if handle.read(2) != GZIP_MAGIC:
                raise self._fail(
                    "not a runner archive (empty)"
                    if self.size == 0
                    else "not a runner archive (not gzip-compressed)"
                )
            handle.seek(0)
            yield from self._read(handle)

    def _read(self, handle: BinaryIO) -> Iterator[Batch]:
        headers: list[Record] = []
        records: list[Record] = []
        first = True
        try:
            for kind, at, line in _events(handle):
                if kind == "line":
                    value = self._parse(line, at, first=first)
                    first = False
                    (headers if _header(value) else records).append(value)
                elif kind == "end":
                    yield Batch(tuple(headers), tuple(records), at)
                    headers, records = [], []
                else:
                    self.torn = TornTail(offset=at, size=self.size - at)
        except _Damaged as exc:
            if not first and _zeros_from(handle, exc.offset):
                # A crash can leave the unsynced end of the file as zeros rather than cut
                # off: that is a torn last batch too (its runs were not deleted).
                self.torn = TornTail(offset=exc.offset, size=self.size - exc.offset)
                return
            if first:
                raise self._fail(f"not a runner archive ({exc.reason})") from None
            raise self._fail(f"damaged at byte {exc.offset}: {exc.reason}") from None
        except OSError as exc:
            raise self._fail(f"cannot read: {exc.strerror or exc}") from None

    def _parse(self, line: bytes, at: int, *, first: bool) -> Record:
        value: Any
        try:
            value = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            value = None
        record: Record = value
        if first:
            if not _header(value) or value.get("format") != ARCHIVE_FORMAT:
                raise _Damaged(0, "gzip, but its first line is not a runner archive's header")
            if value.get("version") != ARCHIVE_VERSION:
                raise ArchiveError(
                    f"{self.path}: archive format version {value.get('version')!r}; this"
                    f" runner reads version {ARCHIVE_VERSION}"
                )
            return record
        if _header(value):
            return record
        run = value.get("run") if isinstance(value, dict) else None
        if not isinstance(run, dict) or not isinstance(run.get("id"), str):
            raise _Damaged(at, "a line of this batch is not a run's record")
        return record


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """What ``runner show`` lists of one record: the run's id, name, flow or deployment,
    state, end, when it was archived, and how many states and log lines the record holds
    (``logs`` None: not archived)."""
    run = record.get("run")
    run = run if isinstance(run, dict) else {}
    state = run.get("state")
    state = state if isinstance(state, dict) else {}
    states, logs = record.get("states"), record.get("logs")
    return {
        "id": run.get("id"),
        "name": run.get("name"),
        "flow": record.get("flow"),
        "deployment": record.get("deployment"),
        "state_type": state.get("type"),
        "state_name": state.get("name"),
        "end_time": run.get("end_time"),
        "archived_at": record.get("archived_at"),
        "plan_id": record.get("plan_id"),
        "step": record.get("step"),
        "states": len(states) if isinstance(states, list) else 0,
        "logs": len(logs) if isinstance(logs, list) else None,
    }


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` is to be read as an archive: gzip-compressed, or named ``*.gz``."""
    if str(path).endswith(".gz"):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return False


def read_archive(path: str | Path) -> ArchiveReader:
    """An archive's reader: ``for batch in read_archive(p).batches(): ...``."""
    return ArchiveReader(path)


# -- writing ---------------------------------------------------------------------------------


class ArchiveWriter:
    """Appends to one archive for one apply; a context manager (takes a lock on the file).

    On open, an existing archive is read through: a torn last batch is cut off, and the runs
    of ``planned`` this plan archived already are noted in :attr:`archived` (written again
    they would be duplicates). Each :meth:`write` is one gzip member, fsynced before it
    returns; a failure raises :class:`~runner.errors.ArchiveWriteError`, and nothing more is
    written after it."""

    def __init__(
        self,
        path: Path,
        *,
        plan_id: str,
        playbook: str,
        server_url: str,
        planned: frozenset[UUID] = frozenset(),
    ) -> None:
        self.path = path
        self.plan_id = plan_id
        self.playbook = playbook
        self.server_url = server_url
        self.planned = planned
        #: Runs of this plan in the archive: found there on open, or written since.
        self.archived: set[UUID] = set()
        #: Run records in the file (earlier applies' included), and those this writer wrote.
        self.runs = 0
        self.written = 0
        #: The torn batch cut off on open, if there was one.
        self.repaired: TornTail | None = None
        self._handle: BinaryIO | None = None
        self._broken: ArchiveWriteError | None = None

    def __enter__(self) -> ArchiveWriter:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _failed(self, exc: OSError, what: str = "write") -> ArchiveWriteError:
        if self._broken is None:
            reason = exc.strerror or type(exc).__name__
            self._broken = ArchiveWriteError(
                f"{self.path}: cannot {what} the archive: {reason} (the runs it was archiving"
                " were not deleted)"
            )
        return self._broken

    def _open(self) -> None:
        fresh = not self.path.exists()
        try:
            # Only its owner may read it (the runs' parameters and logs), as the plan.
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._handle = os.fdopen(descriptor, "ab")
        except OSError as exc:
            raise self._failed(exc, "open") from None
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveError(
                f"{self.path}: another apply is writing to this archive; wait for it, or give"
                " --archive another path"
            ) from None
        end = 0
        if os.fstat(self._handle.fileno()).st_size:
            end = self._scan()
        size = os.fstat(self._handle.fileno()).st_size
        if end < size:  # a batch cut off by a crash: its runs were not deleted
            self.repaired = TornTail(offset=end, size=size - end)
            try:
                os.ftruncate(self._handle.fileno(), end)
                os.fsync(self._handle.fileno())
            except OSError as exc:
                raise self._failed(exc) from None
        header = {
            "format": ARCHIVE_FORMAT,
            "version": ARCHIVE_VERSION,
            "plan_id": self.plan_id,
            "playbook": self.playbook,
            "server": redact(self.server_url),
            "runner": __version__,
            "opened_at": _now(),
        }
        self._append(gzip.compress(_line(header), mtime=0))
        if fresh:  # the new file's name, durable too
            with contextlib.suppress(OSError):
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)

    def _scan(self) -> int:
        """Read the archive through; returns where its last complete batch ends."""
        reader = ArchiveReader(self.path)
        end = 0
        try:
            for batch in reader.batches():
                end = batch.end
                self.runs += len(batch.records)
                for record in batch.records:
                    if record.get("plan_id") != self.plan_id:
                        continue
                    with contextlib.suppress(ValueError):
                        run_id = UUID(record["run"]["id"])
                        if run_id in self.planned:
                            self.archived.add(run_id)
        except ArchiveError as exc:
            raise ArchiveError(
                f"{exc}; runner appends only to a runner archive whole up to its last batch:"
                " move it aside, or give --archive another path"
            ) from None
        if reader.torn is not None and end == 0 and reader.torn.offset == 0:
            if not _torn_header_is_ours(self.path):
                raise ArchiveError(
                    f"{self.path}: not a runner archive (a gzip file cut off before its first"
                    " line); runner appends only to a runner archive: move it aside, or give"
                    " --archive another path"
                )
            return 0  # nothing but a torn header: begun anew
        return end

    def write(self, records: Iterable[Record]) -> None:
        """Append ``records`` as one gzip member, flushed and fsynced before returning."""
        batch = list(records)
        if not batch:
            return
        lines = b"".join(_line(r) for r in batch)
        # runner's own credential never lands in a file of runner's, even where a run's
        # parameters or logs hold it.
        text = lines.decode("utf-8")
        cleaned = redact_secrets(text)
        if cleaned is not text:
            lines = cleaned.encode("utf-8")
        self._append(gzip.compress(lines, mtime=0))
        self.written += len(batch)
        self.runs += len(batch)
        for record in batch:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.archived.add(UUID(record["run"]["id"]))

    def _append(self, member: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        assert self._handle is not None, "the archive is not open"
        try:
            self._handle.write(member)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise self._failed(exc) from None

    def close(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):  # a failed write left bytes it cannot write
            self._handle.close()
        self._handle = None
