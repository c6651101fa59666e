"""The checkpoint journal: the only place that writes checkpoints.

One JSON line per finished change (append-only, flushed and fsynced in small batches), after a
header line naming the plan. A line cut off by a crash is ignored when the journal is read
back; whatever it recorded is done again, which every change tolerates (transition ids,
idempotency keys, 404 on delete). A lock file keeps two applies of one plan apart.

Record statuses:

- ``done``: the change is made (``detail`` says how: "Cancelled", "already gone", ...)
- ``created``: the first half of a recreate; ``new_run_id`` is the new run, the old one
  still has to be deleted
- ``drifted``: the run changed since the plan; left alone
- ``raced``: the change is made, but it landed on a state the plan did not see (the run
  changed while the write was in flight): made, and to be looked at
- ``failed``: the change failed after its retries (``detail`` has the reason); retried on resume

What a finished change replaced and left, for ``runner undo`` (:mod:`runner.undo`), kept
compact (a line a change; large applies have 100,000s): a state change that was made records
``sid``, the id of the state its write left (an undo is conditional on the run still being in
it), and ``msg``, the message of the state it replaced (null: none), read from the run's
history where runner checks the write landed on the state the plan saw. The rest of that
state (its id, type, name, scheduled time) is the plan's (``plan.json`` beside the journal):
recorded again, as ``was``, only when the write replaced another state (raced). A tag change
needs nothing more: the plan holds the tags before and after, a recreate's new run is
``new_run_id``. Journals written before runner recorded these read as they are: an undo
says what it cannot know.

A line without a key says where the apply's delete archive is (``{"archive": path}``, relative
to the journal's folder when it is in it), and once the apply ends how many runs it holds
(``"runs"``): a resume appends to the same archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

from runner.errors import CheckpointError, CheckpointWriteError
from runner.redact import redact_secrets

JOURNAL_FORMAT = "runner-checkpoint"
JOURNAL_VERSION = 1

Status = Literal["done", "created", "drifted", "raced", "failed"]
#: Statuses a resume does not touch again.
FINISHED: frozenset[str] = frozenset({"done", "drifted", "raced"})


@dataclass(frozen=True, slots=True)
class Replaced:
    """The state a change's write replaced, as the run's history showed it. ``as_planned``:
    it is the very state the plan saw (its id, type, name and time are the plan's; only the
    message is recorded)."""

    message: str | None = None
    as_planned: bool = True
    id: str | None = None
    type: str | None = None
    name: str | None = None
    scheduled_time: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "type": self.type,
            "name": self.name,
            "at": self.scheduled_time,
            "msg": redact_secrets(self.message) if self.message else self.message,
        }
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Replaced:
        def text(key: str) -> str | None:
            value = data.get(key)
            return str(value) if value is not None else None

        return cls(
            message=text("msg"),
            as_planned=False,
            id=text("id"),
            type=text("type"),
            name=text("name"),
            scheduled_time=text("at"),
        )


@dataclass(slots=True)  # one per change: 100,000s of them
class Entry:
    key: str
    status: Status
    detail: str | None = None
    new_run_id: str | None = None
    #: The id of the state a state change left (None: not a made state change, or a
    #: journal written before runner recorded it).
    state_after: str | None = None
    #: The state that write replaced (None: not known, see the module's docstring).
    replaced: Replaced | None = None


@dataclass
class JournalState:
    """What a journal says so far: the last record of each change."""

    plan_id: str
    entries: dict[str, Entry] = field(default_factory=dict)
    torn_lines: int = 0
    #: When the first apply of the plan started (the header's time), if it says.
    started_at: datetime | None = None
    #: The delete archive of the last apply that kept one (as recorded: relative to the
    #: journal's folder, or absolute), and how many runs it held when that apply ended.
    archive: str | None = None
    archive_runs: int | None = None

    def status(self, key: str) -> Status | None:
        entry = self.entries.get(key)
        return entry.status if entry else None


def _header(
    path: Path, line: bytes, *, plan_id: str | None, plan_checksum: str | None
) -> dict[str, Any]:
    """The journal's header line, checked: a runner checkpoint of this version, of plan
    ``plan_id`` and of the plan file whose checksum is ``plan_checksum`` (when given)."""
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not a runner checkpoint (no header line)") from None
    if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
        raise CheckpointError(f"{path}: not a runner checkpoint")
    if header.get("version") != JOURNAL_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('version')!r};"
            f" this runner reads version {JOURNAL_VERSION}"
        )
    if plan_id is not None and header.get("plan_id") != plan_id:
        raise CheckpointError(
            f"{path}: this checkpoint belongs to plan {header.get('plan_id')}, not {plan_id}"
        )
    if plan_checksum is not None and header.get("plan_checksum") != plan_checksum:
        raise CheckpointError(
            f"{path}: this checkpoint was started for another version of plan"
            f" {header.get('plan_id')} (the plan file changed since): refusing to mix them"
        )
    return header


def read_header(path: Path, *, plan_id: str, plan_checksum: str) -> None:
    """Refuse the journal at ``path`` unless it is ``plan_id``'s, started for the plan file
    whose checksum is ``plan_checksum``: its first line only is read."""
    try:
        with open(path, "rb") as handle:
            line = handle.readline()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    _header(path, line, plan_id=plan_id, plan_checksum=plan_checksum)


def read_journal(
    path: Path, *, plan_id: str | None = None, plan_checksum: str | None = None
) -> JournalState:
    """Read a journal; a torn line is skipped. Refuses another plan's journal, and one whose
    plan file was replaced (its checksum differs from the one the journal was started with)."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    header = _header(path, lines[0], plan_id=plan_id, plan_checksum=plan_checksum)
    state = JournalState(plan_id=str(header.get("plan_id")), started_at=_time(header))
    # One object for each short text many records repeat ("done", "deleted"): json gives
    # each record its own, and a resume holds a record per finished change.
    shared: dict[str, str] = {}

    def common(text: Any) -> Any:
        return shared.setdefault(text, text) if isinstance(text, str) and len(text) <= 32 else text

    for raw in lines[1:]:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if isinstance(record, dict) and "archive" in record and "key" not in record:
                state.archive = str(record["archive"])
                runs = record.get("runs")
                state.archive_runs = runs if isinstance(runs, int) else None
                continue
            entry = Entry(
                key=record["key"],
                status=common(record["status"]),
                detail=common(record.get("detail")),
                new_run_id=record.get("new_run_id"),
                state_after=_text(record.get("sid")),
                replaced=_replaced(record),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            state.torn_lines += 1
            continue
        previous = state.entries.get(entry.key)
        if previous is not None and entry.new_run_id is None:
            entry.new_run_id = previous.new_run_id
        state.entries[entry.key] = entry
    return state


def _text(value: object) -> str | None:
    return str(value) if value is not None else None


def _replaced(record: dict[str, Any]) -> Replaced | None:
    if isinstance(record.get("was"), dict):
        return Replaced.from_json(record["was"])
    if "msg" in record:
        return Replaced(message=_text(record["msg"]))
    return None


def _time(header: dict[str, Any]) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(header["created_at"]))
    except (KeyError, ValueError):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def in_use(path: Path) -> str | None:
    """Who holds the lock of the journal at ``path`` ("pid N"), when an apply of its plan is
    running now; None when none is (or the journal has no lock file)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path)  # noqa: SIM115 (closed below)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class Journal:
    """Appends records for one plan; use as a context manager (takes the lock)."""

    def __init__(
        self,
        path: Path,
        *,
        plan_id: str,
        plan_checksum: str,
        batch: int = 25,
        interval: float = 0.5,
    ) -> None:
        self.path = path
        self.plan_id = plan_id
        self.plan_checksum = plan_checksum
        self.batch = batch
        self.interval = interval
        self._handle: TextIO | None = None
        self._lock: TextIO | None = None
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._broken: CheckpointWriteError | None = None

    def _failed(self, exc: OSError) -> CheckpointWriteError:
        """Remember the first write failure: nothing more is written after it."""
        if self._broken is None:
            reason = exc.strerror or type(exc).__name__
            self._broken = CheckpointWriteError(
                f"{self.path}: cannot write the checkpoint: {reason}"
            )
        return self._broken

    def __enter__(self) -> Journal:
        try:
            return self._open()
        except BaseException as exc:
            failure = self._failed(exc) if isinstance(exc, OSError) else None
            with contextlib.suppress(CheckpointWriteError):
                self.close()  # the lock is released
            if failure is not None:  # a full disk, a read-only folder, ...
                raise failure from None
            raise

    def _open(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = open(lock_path, "a+")  # noqa: SIM115 (held until close())
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            self._lock = None
            raise CheckpointError(
                f"another apply of plan {self.plan_id} is running ({holder}); wait for it,"
                " or stop it first"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}")
        self._lock.flush()
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            # Refuses another plan's journal, or one started for a different plan file.
            read_header(self.path, plan_id=self.plan_id, plan_checksum=self.plan_checksum)
            self._repair_torn_tail()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (as the lock)
        if fresh:
            self._write(
                {
                    "format": JOURNAL_FORMAT,
                    "version": JOURNAL_VERSION,
                    "plan_id": self.plan_id,
                    "plan_checksum": self.plan_checksum,
                    "created_at": datetime.now(timezone.utc).isoformat(),
                }
            )
            self.sync()
        return self

    def _repair_torn_tail(self) -> None:
        # A crash can leave a last line without its newline: end it, so the next record
        # starts on a line of its own (the torn line is then skipped when read).
        with open(self.path, "rb+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            self.close()
        except CheckpointWriteError:
            if exc_type is None:
                raise  # else the error on its way out says more (often the same full disk)

    def close(self) -> None:
        """Sync and close; the lock is released even when the last sync fails."""
        try:
            if self._handle is not None and self._broken is None:  # else raised already
                self.sync()
        finally:
            if self._handle is not None:
                with contextlib.suppress(OSError):  # a failed sync left bytes it cannot write
                    self._handle.close()
                self._handle = None
            if self._lock is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()
                self._lock = None

    def _write(self, record: dict[str, Any]) -> None:
        assert self._handle is not None, "the journal is not open"
        if self._broken is not None:
            raise self._broken
        try:
            self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:
            raise self._failed(exc) from None
        self._unsynced += 1

    def record(
        self,
        key: str,
        status: Status,
        *,
        detail: str | None = None,
        new_run_id: str | None = None,
        state_after: str | None = None,
        replaced: Replaced | None = None,
        sync: bool = False,
    ) -> None:
        """Append one outcome; synced to disk every ``batch`` records or ``interval`` seconds,
        and at once when ``sync`` (the first half of a two-phase change). ``state_after`` and
        ``replaced``: what a state change left and replaced (for ``runner undo``)."""
        record: dict[str, Any] = {"key": key, "status": status}
        if detail is not None:
            record["detail"] = detail
        if new_run_id is not None:
            record["new_run_id"] = new_run_id
        if state_after is not None:
            record["sid"] = state_after
        if replaced is not None:
            if replaced.as_planned:
                # A state's message is the user's text, but runner's own credential never
                # lands in a file of runner's (the archive masks it the same way).
                message = replaced.message
                record["msg"] = redact_secrets(message) if message else message
            else:
                record["was"] = replaced.to_json()
        self._write(record)
        if (
            sync
            or self._unsynced >= self.batch
            or time.monotonic() - self._last_sync >= self.interval
        ):
            self.sync()

    def archive(self, path: str, *, runs: int | None = None) -> None:
        """Record where this apply's delete archive is (and, once it ends, how many runs
        it holds); synced at once."""
        record: dict[str, Any] = {"archive": path}
        if runs is not None:
            record["runs"] = runs
        self._write(record)
        self.sync()

    def sync(self) -> None:
        if self._handle is None or self._unsynced == 0:
            return
        if self._broken is not None:
            raise self._broken
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise self._failed(exc) from None
        self._unsynced = 0
        self._last_sync = time.monotonic()
