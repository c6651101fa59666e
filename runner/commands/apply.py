"""``runner apply PLAYBOOK|plan.json``: plan (or read a saved plan), show, confirm, apply.

Stages, each a boundary: load -> plan -> show the diff -> stop if --dry-run -> confirm ->
apply with the journal -> report. Each apply keeps its plan and checkpoint in
``<state-dir>/<plan-id>/``; re-running an unfinished apply of the same playbook resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO
from uuid import UUID

import anyio

from runner.artifact import artifact_key, summary_markdown
from runner.client import PrefectClient
from runner.commands.output import check_file, check_folder
from runner.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CheckpointWriteError,
    OutputError,
    RunnerError,
)
from runner.executor import ApplyOptions, ApplyResult, Executor, Progress
from runner.journal import FINISHED, Journal, read_journal
from runner.loader import load_playbook
from runner.observe import plan_playbook
from runner.plan import Plan
from runner.planfile import check_applicable, check_plan_id, read_plan, write_plan
from runner.render import render, summary_line
from runner.retry import RetryPolicy, policy_for
from runner.settings import ConnectionSettings

DESTRUCTIVE_OPS = frozenset({"delete", "set_state", "recreate"})
STATUSES = ("done", "drifted", "raced", "failed", "pending", "created")


@dataclass(frozen=True)
class ApplyRequest:
    target: str
    variables: Mapping[str, str]
    settings: ConnectionSettings
    options: ApplyOptions
    yes: bool
    state_dir: Path
    resume: str | None
    fresh: bool
    max_plan_age: float | None
    report: str | None
    interactive: bool
    colour: bool
    exclude: frozenset[UUID] = frozenset()
    handle_signals: bool = True
    dry_run: bool = False
    artifact: bool = False


@dataclass(frozen=True)
class Applied:
    """What an apply came to: the exit code, the plan (if one was made) and the result."""

    code: int
    plan: Plan | None = None
    result: ApplyResult | None = None


def _workdir(state_dir: Path, plan: Plan) -> Path:
    check_plan_id(plan.id)  # a folder of the state dir, never a path out of it
    return state_dir / plan.id


def _find_unfinished(
    state_dir: Path, plan: Plan, *, now: datetime, max_age_seconds: float | None, out: TextIO
) -> Path | None:
    """An earlier apply of the same playbook, variables and server that did not finish and is
    no older than ``max_age_seconds`` (an older one is set aside, said so, and planned anew:
    one change that keeps failing must not pin every later apply to an old plan)."""
    if not state_dir.is_dir():
        return None
    for candidate in sorted(state_dir.glob("*/plan.json"), key=lambda p: p.stat().st_mtime):
        try:
            old = read_plan(candidate)
        except Exception:
            continue
        if (
            old.playbook_digest != plan.playbook_digest
            or old.server_url != plan.server_url
            or old.variables != plan.variables
        ):
            continue
        journal = candidate.with_name("checkpoint.jsonl")
        if not journal.exists():
            continue
        state = read_journal(journal, plan_id=old.id)
        if all(state.status(c.key) in FINISHED for c in old.pending):
            continue
        age = (now - old.created_at).total_seconds()
        if max_age_seconds is not None and age > max_age_seconds:
            out.write(
                f"An unfinished apply in {candidate.parent} (plan {old.id}) is"
                f" {age / 60:.0f} minutes old, more than --max-plan-age: planned anew"
                f" (runner apply --resume {candidate.parent} --max-plan-age none finishes"
                " the old plan instead).\n"
            )
            continue
        return candidate.parent
    return None


def _confirm(plan: Plan, request: ApplyRequest, out: TextIO) -> bool:
    if request.yes:
        return True
    # By what the changes do, not what their steps are called (a saved plan is data).
    destructive = any(c.op in DESTRUCTIVE_OPS for c in plan.pending)
    if not request.interactive:
        if destructive:
            print(
                "runner: not a terminal: pass --yes to apply changes that delete, cancel or"
                " change the state of runs",
                file=sys.stderr,
            )
            return False
        return True
    out.write(f"Apply {len(plan.pending)} changes to {plan.server_url}? [y/N] ")
    out.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


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
        "counts": {s: result.count(s) for s in STATUSES},
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
            }
            for o in result.outcomes.values()
        ],
    }


def run(request: ApplyRequest, *, out: TextIO, err: TextIO) -> int:
    return anyio.run(apply, request, out, err).code


async def apply(request: ApplyRequest, out: TextIO, err: TextIO) -> Applied:
    """Plan (or read the saved plan), show it, confirm, apply with the journal, report."""
    if not request.dry_run:  # where the apply writes, checked before the server is asked
        if request.resume:
            resumed = Path(request.resume)
            check_folder(resumed.parent if resumed.is_file() else resumed, "--resume")
        else:
            check_folder(request.state_dir, "--state-dir")
        if request.report:
            check_file(request.report, "--report", replaced=False)
    policy = RetryPolicy()
    async with PrefectClient(request.settings, retry=policy) as client:
        now = datetime.now(timezone.utc)
        workdir: Path | None = None
        if request.resume:
            workdir = Path(request.resume)
            if workdir.is_file():
                workdir = workdir.parent
            plan = read_plan(workdir / "plan.json")
            check_applicable(
                plan,
                server_url=client.settings.display_url,
                now=now,
                max_age_seconds=request.max_plan_age,
            )
            out.write(f"Resuming plan {plan.id} from {workdir}\n")
        elif request.target.endswith(".json"):
            plan = read_plan(request.target)
            check_applicable(
                plan,
                server_url=client.settings.display_url,
                now=now,
                max_age_seconds=request.max_plan_age,
            )
        else:
            playbook = load_playbook(request.target, variables=request.variables)
            client.retry_policy = policy_for(playbook.defaults.retry, policy)
            plan = await plan_playbook(playbook, client, now=now, exclude=request.exclude)
            if not request.fresh:
                unfinished = _find_unfinished(
                    request.state_dir,
                    plan,
                    now=now,
                    max_age_seconds=request.max_plan_age,
                    out=out,
                )
                if unfinished is not None:
                    workdir = unfinished
                    plan = read_plan(unfinished / "plan.json")
                    out.write(
                        f"Resuming unfinished plan {plan.id} from {unfinished} (made"
                        f" {plan.created_at:%Y-%m-%d %H:%M:%S}Z); --fresh plans anew.\n"
                    )
        out.write(render(plan, "text", colour=request.colour))
        if plan.violations:
            return Applied(EXIT_ERROR, plan)
        if request.dry_run:
            return Applied(EXIT_OK, plan)
        workdir = workdir or _workdir(request.state_dir, plan)
        journal_path = workdir / "checkpoint.jsonl"
        previous = read_journal(journal_path, plan_id=plan.id) if journal_path.exists() else None
        left = [c for c in plan.pending if not previous or previous.status(c.key) not in FINISHED]
        if not left:
            out.write("Nothing to do.\n")
            return Applied(EXIT_OK, plan)
        if not _confirm(plan, request, out):
            return Applied(EXIT_ERROR, plan)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            if not (workdir / "plan.json").exists():
                write_plan(plan, workdir / "plan.json")
        except OSError as exc:  # nothing is sent yet
            raise OutputError(f"{workdir}: cannot write the plan: {exc.strerror or exc}") from None
        checksum = json.loads((workdir / "plan.json").read_text())["checksum"]
        stop = anyio.Event()
        last_line = [0.0]

        def progress(p: Progress) -> None:
            if p.started + last_line[0] + 5 <= time.monotonic():
                last_line[0] += 5
                err.write(p.line() + "\n")
                err.flush()

        with Journal(journal_path, plan_id=plan.id, plan_checksum=checksum) as journal:
            executor = Executor(
                client,
                plan,
                journal,
                previous=previous,
                options=request.options,
                stop=stop,
                on_progress=progress,
            )
            error: Exception | None = None
            async with anyio.create_task_group() as group:

                async def watch_signals() -> None:
                    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            err.write(
                                f"\nrunner: {signal.Signals(signum).name}: finishing requests in"
                                " flight, then stopping\n"
                            )
                            stop.set()
                            return

                if request.handle_signals:
                    group.start_soon(watch_signals)
                try:
                    result = await executor.run()
                except Exception as exc:  # re-raised below, not wrapped in an exception group
                    error = exc
                finally:
                    group.cancel_scope.cancel()
            failure = _checkpoint_failure(error)
            if failure is not None:
                err.write(
                    f"runner: {failure}; the apply stopped. What the checkpoint recorded stays;"
                    f" with room again, resume with: runner apply --resume {journal_path}\n"
                )
                return Applied(EXIT_ERROR, plan)
            if error is not None:
                raise error
        code = _summarise(result, plan, journal_path, out, err)
        if request.report and not _write_report(request.report, result, plan, journal_path, err):
            code = code if code != EXIT_OK else EXIT_ERROR
        if request.artifact:
            stored = await _store_artifact(client, plan, result, out, err)
            if not stored and code == EXIT_OK:
                code = EXIT_ERROR
        return Applied(code, plan, result)


def _checkpoint_failure(error: BaseException | None) -> CheckpointWriteError | None:
    """The checkpoint write failure in ``error`` (or in the exception groups it holds)."""
    if isinstance(error, CheckpointWriteError):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _checkpoint_failure(inner)
        if found is not None:
            return found
    return None


def _write_report(path: str, result: ApplyResult, plan: Plan, journal: Path, err: TextIO) -> bool:
    """``--report``, written after the summary: a failure to write it loses nothing applied."""
    text = json.dumps(report_document(result, plan), indent=2) + "\n"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        err.write(
            f"runner: --report {path}: cannot write: {exc.strerror or exc}; the outcome of"
            f" every run is in the checkpoint: runner status {journal}\n"
        )
        return False
    return True


async def _store_artifact(
    client: PrefectClient, plan: Plan, result: ApplyResult, out: TextIO, err: TextIO
) -> bool:
    """``--artifact``: the summary as a markdown artifact (linked to the surrounding flow run)."""
    key = artifact_key(plan.playbook_name)
    flow_run = os.environ.get("PREFECT__FLOW_RUN_ID")
    try:
        await client.create_markdown_artifact(
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
        + f" in {result.seconds:.1f}s, {result.requests} requests"
        f" ({', '.join(f'step {i + 1}: {s}' for i, s in result.strategies.items())}).\n"
    )
    for outcome in [*result.outcomes.values()]:
        if outcome.status in ("drifted", "raced", "failed"):
            run = outcome.change.run
            out.write(f"  {outcome.status}: {run.name} ({run.id}): {outcome.detail}\n")
    if result.stopped or failed or pending:
        err.write(
            f"runner: {result.stopped or 'not everything was applied'}; resume with:"
            f" runner apply --resume {journal}\n"
        )
    if raced:
        err.write(
            f"runner: {raced} change(s) landed on a state the plan did not see (the run changed"
            " while the write was in flight): look at the runs listed as raced\n"
        )
    if result.stopped == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if result.complete and not raced else EXIT_ERROR


def status(path: str, *, out: TextIO) -> int:
    """``runner status CHECKPOINT``: done / drifted / failed / pending counts."""
    target = Path(path)
    workdir = target.parent if target.is_file() else target
    plan = read_plan(workdir / "plan.json")
    journal = workdir / "checkpoint.jsonl"
    state = read_journal(journal, plan_id=plan.id) if journal.exists() else None
    counts = {"done": 0, "drifted": 0, "raced": 0, "failed": 0, "pending": 0}
    for change in plan.pending:
        status = state.status(change.key) if state else None
        counts[status if status in ("done", "drifted", "raced", "failed") else "pending"] += 1
    out.write(
        f"plan {plan.id} ({plan.playbook_name}) against {plan.server_url}: {summary_line(plan)}\n"
        f"done {counts['done']}, drifted {counts['drifted']}, failed {counts['failed']},"
        f" pending {counts['pending']}"
        + (f", raced {counts['raced']}" if counts["raced"] else "")
        + "\n"
    )
    if state and state.torn_lines:
        out.write(f"({state.torn_lines} torn line(s) in the checkpoint were skipped)\n")
    return EXIT_OK if counts["failed"] == 0 and counts["pending"] == 0 else EXIT_ERROR
