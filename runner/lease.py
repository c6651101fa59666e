"""The server lock: one apply of a playbook at a time, on whatever machine it runs.

Two applies of the same playbook must never write at once, even when they run on two
machines, each with its own state directory (two workers running the playbook as Prefect
flows). The checkpoint's file lock (:mod:`runner.journal`) cannot see that far, so the lock
lives on the server: one of Prefect's global concurrency limits, ``runner:<playbook name>``,
one slot, held under a lease.

- **What it keys on**: the playbook's name (``name:``, else its file name): what two copies of
  the same playbook share even when their bytes, variables or plans differ (an edited copy
  must wait too). Two playbooks of the same name wait for each other: give them names of
  their own. The state directory plays no part.
- **When**: taken once the playbook is loaded, before the server is read for the plan (a
  saved or resumed plan, which reads nothing first, takes it before its first write); held
  through the review, the prompt and the writes; released on the way out (on an error and
  an interrupt too). A dry run and ``runner plan`` never take it.
- **The limit**: made on first use with ``limit: 1``. A limit of that name with another
  limit, or inactive, is refused (runner never changes a limit it did not make).
- **The lease** lasts :data:`LEASE_SECONDS` (60, the least the server takes) and is renewed
  every :data:`RENEW_SECONDS` (20) while the apply runs. An apply that dies stops renewing and
  the server frees the slot once the lease runs out (its repossessor looks every 15 s). An
  apply that cannot renew (the server says the lease is gone, or no renewal got through for
  ``LEASE_SECONDS - RENEW_SECONDS``) has lost the lock: it stops dispatching, as on Ctrl-C,
  lets the requests in flight finish, and leaves everything else pending for the resume.
- **Taken**: the apply fails at once (:class:`~runner.errors.LockError`, naming the limit),
  nothing sent; or, with ``wait``, asks again until the lock is free or the wait is over.
  Refused after a request whose answer was lost (which may have taken the slot under a
  lease this apply never learned of), it waits for such a lease to run out.
- **A crash**: once an apply starts writing, the lease it holds is written to its plan's
  folder (``<state-dir>/<plan-id>/lease``), under a file lock that dies with the process. The
  resume of that plan finds it unlocked and releases that lease first: resuming after a crash
  does not wait for it to run out. Until then (planning, the review, the prompt) the lease
  is recorded the same way in a file of the user's on this machine, for this server and lock
  (``$TMPDIR/runner-<uid>/leases/``): an apply killed before it wrote anything leaves its
  lease there, and the next apply of the playbook on this machine, from any state directory,
  releases it first. (Killed on another machine, the lease runs out by itself: the next apply
  waits for it with ``--wait-for-lock``, or fails at once.)
- **Servers without leases** (Prefect 2.x answers 405, some others 404): said once on stderr
  when the apply starts writing; then only the file lock keeps applies apart, and only those
  sharing a state directory.

Not a write to flow runs: the executor stays the only writer of runs. Every request goes
through the client (:meth:`~runner.client.PrefectClient.take_concurrency_lease` and its
neighbours).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import anyio
from anyio.abc import TaskGroup

from runner.client import PrefectClient
from runner.errors import (
    InvalidRequest,
    LockError,
    RunnerError,
    Unauthorized,
    UnsupportedByServer,
)
from runner.models import LeaseRefused

#: How long a lease lasts unless renewed: the least the server takes.
LEASE_SECONDS = 60.0
#: How often the lease is renewed. With no renewal through for ``LEASE_SECONDS -
#: RENEW_SECONDS``, the lock counts as lost, ahead of the server's reckoning.
RENEW_SECONDS = 20.0
#: The most a release may take on the way out; a lease not released runs out by itself.
RELEASE_SECONDS = 10.0
#: After a lease runs out, how long until the server frees its slot (its repossessor looks
#: every 15 s by default).
REPOSSESS_SECONDS = 20.0
#: How many times a refusal after a lost answer extends the wait (each such answer may have
#: left a lease of this apply's own, unknown to it, holding the slot).
ORPHANS_WAITED_FOR = 3
#: Every limit runner makes is called so.
PREFIX = "runner:"
#: What Prefect refuses in a name.
_BANNED = re.compile(r"[/%&<>]")


def limit_name(playbook: str) -> str:
    """The limit that is the lock of the playbook called ``playbook``: ``runner:<name>``,
    with the characters Prefect refuses in names (``/ % & < >``) as ``_``."""
    return PREFIX + _BANNED.sub("_", playbook)


def _seconds(value: float) -> str:
    value = round(value)
    return f"{value // 60}m{value % 60:02d}s" if value >= 60 else f"{value}s"


class _Record:
    """``<plan folder>/lease``: the lease the apply writing this plan holds, under a file lock
    held as long as the lease. Found unlocked with a lease in it, the apply that wrote it is
    dead (the kernel drops a file lock with its process)."""

    def __init__(self, folder: Path, name: str = "lease") -> None:
        self.path = folder / name
        self._handle: TextIO | None = None

    def claim(self, *, create: bool) -> dict[str, Any] | None:
        """Lock the record and return what a dead apply left in it (None: nothing).
        ``BlockingIOError`` when a live apply holds it; ``FileNotFoundError`` when there is
        none and not ``create``."""
        handle = open(self.path, "a+" if create else "r+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        handle.seek(0)
        try:
            left = json.loads(handle.read() or "null")
        except ValueError:
            return None
        return left if isinstance(left, dict) else None

    def write(self, lease_id: UUID | None) -> None:
        if self._handle is None:
            return
        text = json.dumps({"lease_id": str(lease_id), "pid": os.getpid()}) if lease_id else ""
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class ServerLock:
    """The lock of one apply: :meth:`take` it inside :func:`server_lock`'s block, which
    releases it. ``lost`` holds the reason once the lease could not be renewed (``on_lost``
    is called with it)."""

    def __init__(
        self,
        client: PrefectClient,
        group: TaskGroup,
        *,
        err: TextIO,
        wait: float = 0.0,
        holder: UUID | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.err = err
        self.wait = wait
        self.holder = holder
        self.on_lost = on_lost
        # Read when made, so that a test can shorten the renewal period.
        self.lease_seconds = LEASE_SECONDS
        self.renew_seconds = RENEW_SECONDS
        self.name: str | None = None
        #: The server has no leases: only the file lock keeps applies apart.
        self.unsupported = False
        self.lost: str | None = None
        self._group = group
        self._lease: UUID | None = None
        self._valid_until = 0.0
        self._renewed_at = 0.0
        self._record: _Record | None = None
        self._said_unsupported = False

    @property
    def held(self) -> bool:
        """Whether a lease is held (taken, not lost, not released)."""
        return self._lease is not None and self.lost is None

    async def take(self, playbook: str, *, resuming: Path | None = None) -> None:
        """Take the lock of the playbook called ``playbook``, or raise :class:`LockError`;
        once (taken already, it returns). ``resuming``: the folder of the plan this apply
        resumes, where a dead apply of it may have left its lease (released first).

        On a server without leases, returns with ``unsupported`` set."""
        if self.name is not None:
            return
        name = self.name = limit_name(playbook)
        # A dead apply leaves its lease in the machine's record until its plan's folder has
        # it: killed after writing its plan, before that, the folder holds no lease.
        await self._release_left_behind(*self._machine_record())
        if resuming is not None:
            self._drop_record()  # this apply records its lease in the plan's folder
            await self._release_left_behind(resuming)
        started = time.monotonic()
        deadline = started + self.wait
        # Waits are counted from when this apply began asking: "still after 2s" is never
        # less than the wait asked for, however long the first answer took.
        waited = False
        orphaned = 0  # refusals after a lost answer: waited for, up to ORPHANS_WAITED_FOR
        made = False
        while True:
            sent = time.monotonic()
            try:
                answer = await self.client.take_concurrency_lease(
                    name, lease_seconds=self.lease_seconds, holder=self.holder
                )
            except UnsupportedByServer:
                self.unsupported = True
                self._drop_record()
                return
            except Unauthorized as exc:
                raise LockError(
                    f"{exc} Taking the server lock {name!r} (a global concurrency limit)"
                    " needs a key allowed to create and use them; --no-server-lock applies"
                    " without it"
                ) from None
            except InvalidRequest:  # a limit of 0 slots: "Slots requested is greater ..."
                limit = await self.client.read_concurrency_limit(name)
                if limit is not None and limit.limit != 1:
                    raise LockError(_not_one(name, playbook, limit.limit)) from None
                raise
            if isinstance(answer, LeaseRefused):
                now = time.monotonic()
                if answer.after_lost_answer and orphaned < ORPHANS_WAITED_FOR:
                    # The slot may be this apply's own, taken by the request whose answer was
                    # lost (its lease unknown, so never released): wait for it to run out.
                    orphaned += 1
                    until = now + self.lease_seconds + REPOSSESS_SECONDS
                    if until > deadline:
                        deadline, waited = until, True
                        self.err.write(
                            f"runner: the answer to a request for the server lock {name!r} was"
                            " lost, and the lock is taken: by that request, perhaps; waiting up"
                            f" to {_seconds(until - now)} for its lease to run out\n"
                        )
                        self.err.flush()
                left = deadline - now
                if left <= 0:
                    since = started if waited else None
                    raise LockError(self._taken(playbook, name, orphaned > 0, since))
                if not waited:
                    waited = True
                    self.err.write(
                        f"runner: another apply of playbook {playbook!r} holds the server lock"
                        f" {name!r}; waiting up to {_seconds(self.wait)} for it"
                        " (--wait-for-lock)\n"
                    )
                    self.err.flush()
                await anyio.sleep(min(max(answer.retry_after or 1.0, 0.5), 10.0, left))
                continue
            slots = [s for s in answer.limits if s.name == name]
            if not slots:
                # No limit of that name: the server granted a lease on nothing. Give it
                # back, make the limit (one slot), and ask again.
                await self.client.release_concurrency_lease(answer.lease_id)
                if made:
                    raise LockError(f"the server lock {name!r} was deleted as soon as it was made")
                await self.client.create_concurrency_limit(name, limit=1)
                made = True
                continue
            self._hold(answer.lease_id, sent)
            if resuming is None:
                self._record_in(*self._machine_record())
            if slots[0].limit != 1:
                raise LockError(_not_one(name, playbook, slots[0].limit))  # released on exit
            limit = await self.client.read_concurrency_limit(name)
            if limit is None or not limit.active:
                raise LockError(
                    f"the server lock {name!r} is an inactive global concurrency limit, which"
                    f" keeps nothing apart: enable it (prefect gcl enable {name}), delete it"
                    " (runner makes it again), or apply with --no-server-lock"
                )
            if waited:
                self.err.write(
                    f"runner: took the server lock {name!r} after"
                    f" {_seconds(time.monotonic() - started)}\n"
                )
            self._group.start_soon(self._keep_renewed)
            return

    async def hold_for_writing(self, playbook: str, folder: Path) -> None:
        """Right before the first write of the plan in ``folder`` (its checkpoint open): the
        lock is taken if it was not (a saved or resumed plan reads nothing before), still
        held (else :class:`LockError`, nothing sent), and recorded in ``folder``; without
        leases on the server, said once."""
        await self.take(playbook, resuming=folder)
        if self.unsupported:
            self._say_unsupported(folder.parent)
            return
        await self._ensure_held()
        self._record_in(folder)

    def _say_unsupported(self, state_dir: Path) -> None:
        if self._said_unsupported:
            return
        self._said_unsupported = True
        self.err.write(
            "runner: the server has no concurrency leases (Prefect 2.x and early 3.x have"
            f" none): the server lock {self.name!r} is not used; only the file lock in"
            f" {state_dir} keeps another apply of this plan out, and only one from the same"
            " state directory\n"
        )
        self.err.flush()

    def _taken(self, playbook: str, name: str, orphaned: bool, waiting_since: float | None) -> str:
        waited = (
            f", still after {_seconds(time.monotonic() - waiting_since)}"
            + ("" if orphaned and self.wait == 0 else " (--wait-for-lock)")
            if waiting_since is not None
            else ""
        )
        text = (
            f"another apply of playbook {playbook!r} holds the server lock {name!r}{waited};"
            f" nothing was sent. prefect gcl inspect {name} (or Concurrency in the Prefect UI)"
            " shows the limit; an apply that died frees it when its lease runs out, within"
            f" {_seconds(self.lease_seconds + 15)}. --wait-for-lock DURATION waits for it"
        )
        return text

    def _hold(self, lease_id: UUID, sent: float) -> None:
        self._lease = lease_id
        self._valid_until = sent + self.lease_seconds
        self._renewed_at = sent

    def _machine_record(self) -> tuple[Path, str]:
        """Where an apply records its lease from when it takes it until its plan's folder
        has it: a file of this user's, on this machine, for this server and lock. An apply
        killed in between (planning, at its prompt) leaves its lease there, and the next
        apply of the playbook on this machine, from any state directory, releases it."""
        key = f"{self.client.settings.display_url}\n{self.name}".encode()
        folder = Path(tempfile.gettempdir()) / f"runner-{os.getuid()}" / "leases"
        return folder, hashlib.sha256(key).hexdigest()[:32]

    def _record_in(self, folder: Path, name: str = "lease") -> None:
        """Write the lease held into ``folder`` (the folder of the plan about to be written,
        or the machine's record, see _Record); best effort: the record only makes a resume
        after a crash quicker. A record left behind is emptied first: it no longer holds the
        lease, and must never give another apply a live lease to release."""
        if not self.held:
            return
        try:
            target = folder / name
            if self._record is None or self._record.path != target:
                if self._record is not None:
                    with contextlib.suppress(OSError):
                        self._record.write(None)
                self._drop_record()
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                record = _Record(folder, name)
                record.claim(create=True)
                self._record = record
            self._record.write(self._lease)
        except OSError:
            self._drop_record()

    async def _release_left_behind(self, folder: Path, file: str = "lease") -> None:
        """Release the lease a dead apply of the plan in ``folder`` (or on this machine)
        left (see _Record)."""
        name = self.name
        record = _Record(folder, file)
        try:
            left = record.claim(create=False)
        except OSError:  # none, held by a live apply of the plan, or not writable
            return
        self._record = record
        if not left or not left.get("lease_id"):
            return
        lease = left["lease_id"]
        try:
            await self.client.release_concurrency_lease(UUID(str(lease)))
            record.write(None)
        except (RunnerError, ValueError, OSError):
            return  # it runs out by itself
        of = f"of {folder}" if file == "lease" else "on this machine"
        self.err.write(
            f"runner: an apply {of} (pid {left.get('pid', '?')}) ended without releasing"
            f" the server lock {name!r}: its lease is released\n"
        )
        self.err.flush()

    def _drop_record(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None

    async def _ensure_held(self) -> None:
        """The lock is still held, else :class:`LockError` (nothing sent). Renewed here first
        when a renewal is due: a prompt reads the terminal with the event loop held up, and
        the renewals with it."""
        if self._lease is None:  # not taken: --no-server-lock, or a server without leases
            return
        if self.lost is None and time.monotonic() - self._renewed_at >= self.renew_seconds:
            await self._renew()
        if self.lost is not None:
            raise LockError(f"{self.lost}, before anything was sent: apply again")

    async def _keep_renewed(self) -> None:
        while self.lost is None:
            await anyio.sleep(max(0.0, self._renewed_at + self.renew_seconds - time.monotonic()))
            await self._renew()

    async def _renew(self) -> None:
        """Renew until it gets through, or the lock is lost: the server no longer has the
        lease (the slot is then free for others), or no renewal got through before
        ``RENEW_SECONDS`` ahead of the lease's end (it stops ahead of the server). Tried at
        least once, however late: while the server has the lease, the slot is this apply's."""
        lease = self._lease
        assert lease is not None
        give_up = self._valid_until - self.renew_seconds
        last = ""
        while self.lost is None:
            sent = time.monotonic()
            alive: bool | None = None
            try:
                with anyio.fail_after(max(give_up - sent, 5.0)):
                    alive = await self.client.renew_concurrency_lease(
                        lease, lease_seconds=self.lease_seconds
                    )
            except TimeoutError:
                last = " (no answer)"
            except RunnerError as exc:
                last = f" (the last answer: {exc})"
            if alive:
                self._valid_until = sent + self.lease_seconds
                self._renewed_at = sent
                return
            if alive is False:
                self._lose("the server no longer has its lease (it ran out, or was released)")
            elif time.monotonic() >= give_up:
                self._lose(
                    "no renewal of its lease got through for"
                    f" {_seconds(self.lease_seconds - self.renew_seconds)}{last}"
                )
            else:
                await anyio.sleep(min(1.0, give_up - time.monotonic()))

    def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = f"lost the server lock {self.name!r}: {reason}"
        if self.on_lost is not None:
            self.on_lost(self.lost)

    async def release(self) -> None:
        """Give the lease back, if one is held; best effort (a lease not released runs out)."""
        lease, self._lease = self._lease, None
        try:
            if lease is None:
                return
            try:
                with anyio.fail_after(RELEASE_SECONDS):
                    await self.client.release_concurrency_lease(lease)
            except (RunnerError, TimeoutError) as exc:
                self.err.write(
                    f"runner: could not release the server lock {self.name!r}"
                    f" ({exc or 'no answer in time'}); it frees itself when its lease runs"
                    f" out, within {_seconds(self.lease_seconds + 15)}\n"
                )
                return  # the record keeps the lease for the next apply from here
            if self._record is not None:
                with contextlib.suppress(OSError):
                    self._record.write(None)
        finally:
            self._drop_record()


def _not_one(name: str, playbook: str, limit: int) -> str:
    return (
        f"the server lock {name!r} is a global concurrency limit of {limit} slots; runner needs"
        f" exactly 1 (one apply of playbook {playbook!r} at a time) and does not change a limit"
        f" it finds: set it to 1 (prefect gcl update {name} --limit 1), delete it (runner makes"
        " it again), or apply with --no-server-lock"
    )


@contextlib.asynccontextmanager
async def server_lock(
    client: PrefectClient,
    *,
    err: TextIO,
    wait: float = 0.0,
    holder: UUID | None = None,
    on_lost: Callable[[str], None] | None = None,
) -> AsyncIterator[ServerLock]:
    """A :class:`ServerLock` whose lease is renewed while the block runs, and released when
    it ends, however it ends. Errors leave the block as themselves, never in a group."""
    error: BaseException | None = None
    async with anyio.create_task_group() as group:
        lock = ServerLock(
            client,
            group,
            err=err,
            wait=wait,
            holder=holder,
            on_lost=on_lost,
        )
        try:
            yield lock
        except (Exception, KeyboardInterrupt) as exc:  # raised below, out of the task group
            error = exc
        finally:
            group.cancel_scope.cancel()  # the renewals end
            with anyio.CancelScope(shield=True):
                await lock.release()
    if error is not None:
        raise error
