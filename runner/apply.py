"""Apply a playbook or a saved plan: the one apply path that the CLI, the Prefect flow and
the tests all call (:func:`apply`).

Stages, each a boundary: load -> find an unfinished apply of the same playbook, variables and
server (before the server is read) -> take the playbook's server lock (:mod:`runner.lease`)
-> plan, or read the saved plan -> review (the diff) -> stop here on a dry run or a plan that
breaks its guards -> confirm -> apply with the journal (a saved or resumed plan takes the lock
here) -> summary, report, artifact -> release the lock. Each apply keeps its plan and
checkpoint in ``<state-dir>/<plan-id>/``; applying the same playbook again resumes an
unfinished one.

Prompting and signals are the caller's: ``confirm`` is asked before anything is written (a
function or a coroutine function; a prompt that awaits the answer keeps the event loop, and
with it the lock's renewals and the caller's signal watch, running), and setting ``stop``
ends the apply after the requests in flight.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO
from uuid import UUID

import anyio

from runner.artifact import artifact_key, summary_markdown
from runner.client import PrefectClient
from runner.concurrency import CONNECTIONS_BESIDES, MAX_CONCURRENCY
from runner.errors import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CheckpointWriteError,
    OutputError,
    RunnerError,
)
from runner.events import event_feed
from runner.executor import ApplyOptions, ApplyResult, Executor, Outcome, Progress
from runner.journal import FINISHED, Journal, JournalState, read_journal
from runner.lease import ServerLock, server_lock
from runner.loader import load_playbook
from runner.observe import plan_playbook
from runner.output import check_file, check_folder
from runner.plan import Change, ObjectChange, Plan
from runner.planfile import (
    check_applicable,
    check_plan_id,
    read_plan,
    read_plan_checked,
    write_plan,
)
from runner.playbook import Playbook
from runner.render import printable, summary_line, write_rendered
from runner.retry import RetryPolicy, policy_for
from runner.settings import ConnectionSettings
from runner.undo import UndoGuards, applied_folder, earlier_undos, plan_undo, read_applied
from runner.words import plural

DESTRUCTIVE_OPS = frozenset({"delete", "set_state", "recreate"})
STATUSES = ("done", "drifted", "raced", "failed", "pending", "created")


@dataclass(frozen=True, kw_only=True)
class ApplyRequest:
    """What to apply and how. ``target`` is a playbook or a saved ``plan.json`` (empty with
    ``resume``, the folder of an unfinished apply)."""

    target: str = ""
    settings: ConnectionSettings
    #: Apply the undo of the apply in this folder (its ``.runner/<plan-id>``, or its
    #: checkpoint) instead: :mod:`runner.undo`. An unfinished undo of it is resumed.
    undo: str | None = None
    undo_guards: UndoGuards = field(default_factory=UndoGuards)
    variables: Mapping[str, str] = field(default_factory=dict)
    options: ApplyOptions = field(default_factory=ApplyOptions)
    state_dir: Path = Path(".runner")
    resume: str | None = None
    fresh: bool = False
    max_plan_age: float | None = 3600.0
    report: str | None = None
    artifact: bool = False
    #: Where deletes archive their runs (default: ``archive.jsonl.gz`` in the apply's folder,
    #: or where an earlier apply of the same plan archived them).
    archive: str | None = None
    #: Runs never selected (the flow run applying the playbook, say).
    exclude: frozenset[UUID] = frozenset()
    #: Stop after the review: plan (or read the plan) and show it; write nothing.
    dry_run: bool = False
    detailed_exitcode: bool = False
    #: How the review is shown: ``text``, ``markdown`` or ``json``; every run or the first 25.
    fmt: str = "text"
    full: bool = False
    #: With ``fmt`` markdown: the review's size bound, in bytes (runner.render.to_markdown).
    max_bytes: int | None = None
    colour: bool = False
    #: Hold the playbook's lock on the server while applying (runner.lease); how long to
    #: wait for it when another apply holds it (0: fail at once).
    server_lock: bool = True
    wait_for_lock: float = 0.0
    #: Record the apply in Prefect's event feed (runner.events).
    events: bool = True
    #: The Prefect flow run this apply runs in (default: ``PREFECT__FLOW_RUN_ID``), named
    #: as the lock's holder and related to the apply's events.
    host_flow_run: UUID | None = None


@dataclass(frozen=True)
class Applied:
    """What an apply came to: the exit code, the plan (if one was made) and the result."""

    code: int
    plan: Plan | None = None
    result: ApplyResult | None = None


def _workdir(state_dir: Path, plan: Plan) -> Path:
    check_plan_id(plan.id)  # a folder of the state dir, never a path out of it
    return state_dir / plan.id


#: A plan's playbook digest, in the head of its document (written first, see
#: runner.planfile.write_document).
_DIGEST = re.compile(r'"digest": "(sha256:[0-9a-f]{64})"')


def _peek_digest(path: Path) -> str | None:
    """The playbook digest a saved plan names in its first 8 KiB, without reading the rest;
    None when it cannot be told that way (then the plan is read whole and checked)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8192).decode("utf-8", "replace")
    except OSError:
        return None
    found = _DIGEST.search(head)
    return found.group(1) if found else None


def _find_unfinished(
    state_dir: Path,
    playbook: Playbook,
    *,
    server_url: str,
    now: datetime,
    max_age_seconds: float | None,
    out: TextIO,
) -> tuple[Path, Plan, str, JournalState] | None:
    """An earlier apply of the same playbook (its bytes), variables and server that did not
    finish and is no older than ``max_age_seconds``: found before the server is read (an
    older one is set aside, said so, and planned anew: one change that keeps failing must not
    pin every later apply to an old plan). Its folder, plan, the checksum the plan was
    verified against and its checkpoint: each read once (a plan of 100,000 runs takes seconds
    to read, its checkpoint a fraction of one)."""
    if not state_dir.is_dir():
        return None
    for candidate in sorted(state_dir.glob("*/plan.json"), key=lambda p: p.stat().st_mtime):
        journal = candidate.with_name("checkpoint.jsonl")
        if not journal.exists():
            continue
        if _peek_digest(candidate) not in (None, playbook.digest):
            continue  # another playbook's: not read whole (a big plan takes seconds)
        try:
            old, checksum = read_plan_checked(candidate)
        except RunnerError:
            continue
        if (
            old.playbook_digest != playbook.digest
            or old.server_url != server_url
            or old.variables != dict(playbook.vars)
        ):
            continue
        state = read_journal(journal, plan_id=old.id)
        if all(state.status(c.key) in FINISHED for c in old.work):
            continue
        age = (now - old.created_at).total_seconds()
        if max_age_seconds is not None and age > max_age_seconds:
            out.write(
                f"An unfinished apply in {candidate.parent} (plan {old.id}) is"
                f" {plural(round(age / 60), 'minute')} old, more than --max-plan-age: planned anew"
                f" (runner apply --resume {candidate.parent} --max-plan-age none finishes"
                " the old plan instead).\n"
            )
            continue
        return candidate.parent, old, checksum, state
    return None


def is_destructive(plan: Plan) -> bool:
    """Whether applying ``plan`` deletes runs or changes their state, or pauses or resumes
    a deployment, work pool or work queue: by what the changes do, not what their steps
    are called (a saved plan is data). Such a plan needs someone's yes."""
    return bool(destructive_kinds(plan))


def destructive_kinds(plan: Plan) -> list[str]:
    """What needs confirmation in ``plan``, for the message that asks for ``--yes``."""
    kinds: list[str] = []
    if any(c.op in DESTRUCTIVE_OPS for c in plan.pending):
        kinds.append("delete, cancel or change the state of runs")
    if plan.pending_objects:
        kinds.append("pause or resume deployments, work pools or work queues")
    return kinds


def _object_fields(change: Change | ObjectChange) -> dict[str, object]:
    """For a deployment, work pool or work queue: its kind, and its paused flag before and
    after the change (what an undo inverts). Nothing for a run's change."""
    if not isinstance(change, ObjectChange):
        return {}
    return {
        "kind": change.object.kind,
        "before": {"paused": change.before},
        "after": {"paused": change.after},
    }


def report_document(result: ApplyResult, plan: Plan) -> dict[str, object]:
    """The ``--report`` document: counts and every change's outcome."""
    return {
        "plan_id": plan.id,
        "playbook": plan.playbook_name,
        "server": plan.server_url,
        "stopped": result.stopped,
        "seconds": round(result.seconds, 3),
        "requests": result.requests,
        # Seconds between runner's read-back of a run and its write (count, median, p99, max).
        "read_to_write": result.window_summary(),
        # Where the deleted runs were archived: the file, the runs this apply wrote, all it holds.
        "archive": (
            {
                "path": str(result.archive.path),
                "written": result.archive.written,
                "runs": result.archive.runs,
            }
            if result.archive is not None
            else None
        ),
        "counts": {s: result.count(s) for s in STATUSES},
        # What became of the apply's events in Prefect's event feed (null: --no-events).
        "events": result.events.document() if result.events is not None else None,
        "runs": [
            {
                "key": o.change.key,
                "step": o.change.step,
                "run_id": str(o.change.run.id),
                "run_name": o.change.run.name,
                "op": o.change.op,
                "status": o.status,
                "detail": o.detail,
                "new_run_id": o.new_run_id,
                **_object_fields(o.change),
            }
            for o in result.outcomes.values()
        ],
    }


async def apply(
    request: ApplyRequest,
    *,
    out: TextIO,
    err: TextIO,
    confirm: Callable[[Plan], bool | Awaitable[bool]] = lambda plan: True,
    stop: anyio.Event | None = None,
) -> Applied:
    """Plan (or read the saved plan), show it, confirm, apply with the journal, report.

    Returns the exit code, the plan and the result; raises :class:`~runner.errors.RunnerError`
    for what the input or the server is to blame for. ``out`` takes the review and the
    summary, ``err`` progress and warnings.
    """
    if not request.dry_run:  # where the apply writes, checked before the server is asked
        if request.resume:
            resumed = Path(request.resume)
            check_folder(resumed.parent if resumed.is_file() else resumed, "--resume")
        else:
            check_folder(request.state_dir, "--state-dir")
        if request.report:
            check_file(request.report, "--report", replaced=False)
        if request.archive:
            check_file(request.archive, "--archive", replaced=False)
            if request.report and _same_file(request.report, request.archive):
                raise OutputError(
                    f"--report {request.report} and --archive {request.archive} name the same"
                    " file: the report would overwrite the archive of the deleted runs"
                )
    stop = stop or anyio.Event()
    executor: Executor | None = None
    host = request.host_flow_run or _flow_run()

    def lock_lost(reason: str) -> None:  # stop as on Ctrl-C, with the reason
        if executor is not None and executor.stopped is None:
            executor.stopped = f"stopped: {reason}"
        stop.set()

    async with (
        PrefectClient(
            request.settings,
            bulk=False if request.dry_run else None,
            # The steps' own limits bound what is in flight, never the pool: a request queued
            # in httpcore's pool costs a scan of every connection each time one frees (2,000
            # recreates at 64 in flight over a pool of 32: 34 s of client CPU in it).
            max_connections=MAX_CONCURRENCY + CONNECTIONS_BESIDES,
        ) as client,
        server_lock(
            client, err=err, wait=request.wait_for_lock, holder=host, on_lost=lock_lost
        ) as lock,
        event_feed(
            client,
            err=err,
            enabled=request.events and not request.dry_run,
            host=host,
            rate_limit=request.options.rate_limit,
        ) as events,
    ):
        now = datetime.now(timezone.utc)
        held = lock if request.server_lock and not request.dry_run else None
        journals: dict[Path, JournalState] = {}
        plan, workdir, retry, checksum = await _plan_stage(
            request, client, now=now, out=out, lock=held, journals=journals
        )
        journal_path: Path | None = None
        previous: JournalState | None = None
        if not request.dry_run:
            plan = plan.held()  # the executor holds every change: read a spooled plan once
            workdir = workdir or _workdir(request.state_dir, plan)
            journal_path = workdir / "checkpoint.jsonl"
            if journal_path in journals:
                previous = journals.pop(journal_path)
            elif journal_path.exists():
                previous = read_journal(journal_path, plan_id=plan.id)
        left = [c for c in plan.work if not previous or previous.status(c.key) not in FINISHED]
        if previous is not None and journal_path is not None and plan.work and not left:
            # Not the plan's diff: none of it is to be done, an earlier apply did it.
            _already_applied(plan, previous, journal_path, out)
            return _nothing_sent(request, plan, previous, journal_path, err)
        # -- review: the stage a dry run and a refused plan end at --------------------------
        write_rendered(
            plan,
            request.fmt,
            out,
            full=request.full,
            colour=request.colour,
            max_bytes=request.max_bytes,
        )
        if plan.violations:
            return Applied(EXIT_ERROR, plan)
        if request.dry_run:
            changes = request.detailed_exitcode and plan.has_changes
            return Applied(EXIT_CHANGES if changes else EXIT_OK, plan)
        assert workdir is not None and journal_path is not None
        if not left:
            out.write("Nothing to do.\n")
            return _nothing_sent(request, plan, previous, None, err)
        answer = confirm(plan)  # a prompt may wait in the event loop: the lease is renewed
        if not (await answer if inspect.isawaitable(answer) else answer):
            return Applied(EXIT_ERROR, plan)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            if checksum is None or not (workdir / "plan.json").exists():
                checksum = write_plan(plan, workdir / "plan.json")
        except OSError as exc:  # nothing is sent yet
            raise OutputError(f"{workdir}: cannot write the plan: {exc.strerror or exc}") from None
        last_line = [0.0]

        def progress(p: Progress) -> None:
            if p.started + last_line[0] + 5 <= time.monotonic():
                last_line[0] += 5
                err.write(p.line() + "\n")
                err.flush()

        with Journal(journal_path, plan_id=plan.id, plan_checksum=checksum) as journal:
            if held is not None:
                await held.hold_for_writing(plan.playbook_name, workdir)
            events.apply_started(plan, changes=len(left), resumed=previous is not None)
            executor = Executor(
                client,
                plan,
                journal,
                previous=previous,
                options=request.options,
                retry=retry,
                stop=stop,
                on_progress=progress,
                archive=Path(request.archive) if request.archive else None,
                on_finish=events.change_finished,
            )
            try:
                result = await executor.run()
            except Exception as error:  # a checkpoint failure, maybe inside a task group
                failure = _checkpoint_failure(error)
                if failure is None:
                    raise
                events.apply_ended(False, executor.outcomes.values(), error=str(failure))
                err.write(
                    f"runner: {failure}; the apply stopped. What the checkpoint recorded stays;"
                    f" with room again, resume with: runner apply --resume {journal_path}\n"
                )
                return Applied(EXIT_ERROR, plan)
        events.apply_ended(
            result.complete and not result.count("raced"),
            result.outcomes.values(),
            stopped=result.stopped,
        )
        result.events = await events.flush()  # before the summary, which counts them
        code = _summarise(result, plan, journal_path, out, err)
        if request.report and not _write_report(request.report, result, plan, journal_path, err):
            code = code if code != EXIT_OK else EXIT_ERROR
        if request.artifact:
            stored = await _store_artifact(executor, plan, result, out, err)
            if not stored and code == EXIT_OK:
                code = EXIT_ERROR
        return Applied(code, plan, result)


def _flow_run() -> UUID | None:
    """The Prefect flow run this apply runs in, if it does."""
    try:
        return UUID(os.environ["PREFECT__FLOW_RUN_ID"])
    except (KeyError, ValueError):
        return None


async def _plan_stage(
    request: ApplyRequest,
    client: PrefectClient,
    *,
    now: datetime,
    out: TextIO,
    lock: ServerLock | None = None,
    journals: dict[Path, JournalState] | None = None,
) -> tuple[Plan, Path | None, RetryPolicy, str | None]:
    """The plan to apply; the folder of the unfinished apply it resumes, if it does, with the
    checksum its ``plan.json`` was verified against (and in ``journals``, its checkpoint
    when the lookup read it); and the playbook's retry policy for the
    reads and writes that follow. ``lock`` is taken before the server is read for a plan (a
    saved or resumed plan takes it before its first write)."""
    server_url = client.settings.display_url
    if request.resume:
        workdir = Path(request.resume)
        if workdir.is_file():
            workdir = workdir.parent
        plan, checksum = read_plan_checked(workdir / "plan.json")
        check_applicable(plan, server_url=server_url, now=now, max_age_seconds=request.max_plan_age)
        out.write(f"Resuming plan {plan.id} from {workdir}\n")
        return plan, workdir, RetryPolicy(), checksum
    if request.undo is not None:
        return await _undo_stage(request, client, now=now, out=out, lock=lock)
    if request.target.endswith(".json"):
        plan = read_plan(request.target)
        check_applicable(plan, server_url=server_url, now=now, max_age_seconds=request.max_plan_age)
        return plan, None, RetryPolicy(), None
    playbook = load_playbook(request.target, variables=request.variables)
    retry = policy_for(playbook.defaults.retry)
    if not request.fresh and not request.dry_run:
        unfinished = _find_unfinished(
            request.state_dir,
            playbook,
            server_url=server_url,
            now=now,
            max_age_seconds=request.max_plan_age,
            out=out,
        )
        if unfinished is not None:  # resumed as it was: the server is not read again
            folder, plan, checksum, state = unfinished
            out.write(
                f"Resuming unfinished plan {plan.id} from {folder} (made"
                f" {plan.created_at:%Y-%m-%d %H:%M:%S}Z); --fresh plans anew.\n"
            )
            if journals is not None:
                journals[folder / "checkpoint.jsonl"] = state
            return plan, folder, retry, checksum
    if lock is not None:
        await lock.take(playbook.name)
        now = datetime.now(timezone.utc)  # the plan counts from when the lock was taken
    plan = await plan_playbook(playbook, client.with_retry(retry), now=now, exclude=request.exclude)
    return plan, None, retry, None


async def _undo_stage(
    request: ApplyRequest,
    client: PrefectClient,
    *,
    now: datetime,
    out: TextIO,
    lock: ServerLock | None,
) -> tuple[Plan, Path | None, RetryPolicy, str | None]:
    """The undo plan of the apply in ``request.undo``: an unfinished undo of it resumed as it
    was (the server is not read again), else made anew once the lock is taken."""
    assert request.undo is not None
    folder = applied_folder(request.undo)
    original, _ = read_applied(folder)
    if not request.fresh and not request.dry_run:
        for workdir, undo, state in reversed(earlier_undos(request.state_dir, original)):
            if all(state.status(c.key) in FINISHED for c in undo.work):
                continue
            age = (now - undo.created_at).total_seconds()
            if request.max_plan_age is not None and age > request.max_plan_age:
                out.write(
                    f"An unfinished undo in {workdir} (plan {undo.id}) is"
                    f" {plural(round(age / 60), 'minute')} old, more than --max-plan-age:"
                    f" planned anew (runner apply --resume {workdir} --max-plan-age none"
                    " finishes it instead).\n"
                )
                break
            plan, checksum = read_plan_checked(workdir / "plan.json")
            out.write(
                f"Resuming unfinished undo {plan.id} from {workdir} (made"
                f" {plan.created_at:%Y-%m-%d %H:%M:%S}Z); --fresh plans anew.\n"
            )
            return plan, workdir, RetryPolicy(), checksum
    if lock is not None:
        await lock.take(f"undo of {original.id}")
        now = datetime.now(timezone.utc)
    plan = await plan_undo(
        folder, client, state_dir=request.state_dir, now=now, guards=request.undo_guards
    )
    return plan, None, RetryPolicy(), None


def _already_applied(plan: Plan, state: JournalState, journal: Path, out: TextIO) -> None:
    started = f" on {state.started_at:%Y-%m-%d %H:%M:%S}Z" if state.started_at else ""
    counts = {s: sum(1 for c in plan.work if state.status(c.key) == s) for s in FINISHED}
    outcome = ", ".join(f"{counts[s]} {s}" for s in ("done", "drifted", "raced") if counts[s])
    out.write(
        f"Plan {plan.id} ({plan.playbook_name}) was applied already{started}: {outcome}."
        f" Nothing to do; nothing was sent.\n"
        f"Its checkpoint: {journal} (runner status {journal.parent} shows it).\n"
    )


def _nothing_sent(
    request: ApplyRequest,
    plan: Plan,
    previous: JournalState | None,
    journal: Path | None,
    err: TextIO,
) -> Applied:
    """An apply with nothing left to do: the ``--report`` is written all the same (each change
    with the outcome its checkpoint recorded), so a pipeline always finds one."""
    outcomes: dict[str, Outcome] = {}
    for change in plan.work:
        entry = previous.entries.get(change.key) if previous else None
        if entry is not None and entry.status in FINISHED:
            outcomes[change.key] = Outcome(change, entry.status, entry.detail, entry.new_run_id)
    result = ApplyResult(
        outcomes=outcomes, stopped=None, requests=0, retries=0, seconds=0.0, strategies={}
    )
    if request.report and not _write_report(request.report, result, plan, journal, err):
        return Applied(EXIT_ERROR, plan)
    return Applied(EXIT_OK, plan)


def _checkpoint_failure(error: BaseException | None) -> CheckpointWriteError | None:
    """The checkpoint write failure in ``error`` (or in the exception groups it holds)."""
    if isinstance(error, CheckpointWriteError):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _checkpoint_failure(inner)
        if found is not None:
            return found
    return None


def _same_file(one: str, other: str) -> bool:
    """Whether two paths name one file (after links; existing or not)."""
    a, b = Path(one), Path(other)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _write_report(
    path: str, result: ApplyResult, plan: Plan, journal: Path | None, err: TextIO
) -> bool:
    """``--report``, written after the summary: a failure to write it loses nothing applied."""
    text = json.dumps(report_document(result, plan), indent=2) + "\n"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        where = (
            f"; the outcome of every run is in the checkpoint: runner status {journal}"
            if journal is not None
            else ""
        )
        err.write(f"runner: --report {path}: cannot write: {exc.strerror or exc}{where}\n")
        return False
    return True


async def _store_artifact(
    executor: Executor, plan: Plan, result: ApplyResult, out: TextIO, err: TextIO
) -> bool:
    """``--artifact``: the summary as a markdown artifact (linked to the surrounding flow
    run), sent by the executor like every other write."""
    key = artifact_key(plan.playbook_name)
    flow_run = os.environ.get("PREFECT__FLOW_RUN_ID")
    try:
        await executor.store_artifact(
            key,
            summary_markdown(plan, result, dry_run=False),
            description=f"runner apply of {plan.playbook_name} (plan {plan.id})",
            flow_run_id=UUID(flow_run) if flow_run else None,
        )
    except (RunnerError, ValueError) as exc:
        err.write(f"runner: the changes are recorded, but the artifact {key} was not: {exc}\n")
        return False
    out.write(f"Summary stored as artifact {key}.\n")
    return True


def _summarise(result: ApplyResult, plan: Plan, journal: Path, out: TextIO, err: TextIO) -> int:
    done, drifted, failed = result.count("done"), result.count("drifted"), result.count("failed")
    pending = result.count("pending") + result.count("created")
    raced = result.count("raced")
    out.write(
        f"Applied: {done} done, {drifted} drifted (left alone), {failed} failed, {pending} pending"
        + (f", {raced} raced (made, over a state the plan did not see)" if raced else "")
        + f" in {result.seconds:.1f}s, {plural(result.requests, 'request')}"
        f" ({', '.join(f'step {i + 1}: {s}' for i, s in result.strategies.items())}).\n"
    )
    if result.archive is not None:
        archive = result.archive
        more = f"; it holds {archive.runs}" if archive.runs != archive.written else ""
        out.write(
            f"Archive: {plural(archive.written, 'run')} archived before the delete to"
            f" {archive.path}{more} (runner show {archive.path} lists them).\n"
        )
    for outcome in [*result.outcomes.values()]:
        if outcome.status in ("drifted", "raced", "failed"):
            run = outcome.change.run
            detail = printable(outcome.detail or "")
            out.write(f"  {outcome.status}: {printable(run.name)} ({run.id}): {detail}\n")
    events = result.events.summary_line() if result.events is not None else None
    if events is not None:
        out.write(events)
    if result.stopped or failed or pending:
        err.write(
            f"runner: {result.stopped or 'not everything was applied'}; resume with:"
            f" runner apply --resume {journal}\n"
        )
    if raced:
        err.write(
            f"runner: {plural(raced, 'change')} landed on a state the plan did not see (the run"
            " changed while the write was in flight): look at the runs listed as raced\n"
        )
    if result.stopped == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if result.complete and not raced else EXIT_ERROR


def status(path: str, *, fmt: str = "text", out: TextIO) -> int:
    """``runner status CHECKPOINT``: done / drifted / failed / pending counts (``fmt``
    ``json``: those and every change's status, one document). 0 when every change is
    finished (done, drifted or raced), 1 when one failed or is pending (a resume finishes it)."""
    target = Path(path)
    workdir = target.parent if target.is_file() else target
    plan = read_plan(workdir / "plan.json")
    journal = workdir / "checkpoint.jsonl"
    state = read_journal(journal, plan_id=plan.id) if journal.exists() else None
    counts = {"done": 0, "drifted": 0, "raced": 0, "failed": 0, "pending": 0}
    statuses: dict[str, str] = {}
    for change in plan.work:
        recorded = state.status(change.key) if state else None
        statuses[change.key] = (
            recorded if recorded in ("done", "drifted", "raced", "failed") else "pending"
        )
        counts[statuses[change.key]] += 1
    code = EXIT_OK if counts["failed"] == 0 and counts["pending"] == 0 else EXIT_ERROR
    if fmt == "json":
        document = {
            "plan_id": plan.id,
            "playbook": plan.playbook_name,
            "server": plan.server_url,
            "checkpoint": str(journal) if state else None,
            "archive": (
                {"path": str(workdir / state.archive), "runs": state.archive_runs}
                if state and state.archive
                else None
            ),
            "started_at": state.started_at.isoformat() if state and state.started_at else None,
            "complete": code == EXIT_OK,
            "counts": counts,
            "torn_lines": state.torn_lines if state else 0,
            "runs": [
                {
                    "key": change.key,
                    "step": change.step,
                    "run_id": str(change.run.id),
                    "run_name": change.run.name,
                    "op": change.op,
                    "status": statuses[change.key],
                    "detail": entry.detail if entry else None,
                    "new_run_id": entry.new_run_id if entry else None,
                    **_object_fields(change),
                }
                for change in plan.work
                for entry in [state.entries.get(change.key) if state else None]
            ],
        }
        out.write(json.dumps(document, indent=2) + "\n")
        return code
    archive = ""
    if state and state.archive:
        held = state.archive_runs
        archive = f"archive: {workdir / state.archive}"
        archive += (f" ({plural(held, 'run')})" if held is not None else "") + "\n"
    out.write(
        f"plan {plan.id} ({plan.playbook_name}) against {plan.server_url}: {summary_line(plan)}\n"
        + archive
        + f"done {counts['done']}, drifted {counts['drifted']}, failed {counts['failed']},"
        f" pending {counts['pending']}"
        + (f", raced {counts['raced']}" if counts["raced"] else "")
        + "\n"
    )
    if state and state.torn_lines:
        out.write(
            f"({plural(state.torn_lines, 'torn line')} in the checkpoint"
            f" {'was' if state.torn_lines == 1 else 'were'} skipped)\n"
        )
    return code
