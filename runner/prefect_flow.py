"""Run playbooks on a schedule inside Prefect: the ``runner[prefect]`` extra.

``apply_playbook`` is a Prefect flow that applies a playbook from a path, or from a git
repository it checks out, and publishes what it did as a markdown artifact. Deploy it like any
flow, e.g. a nightly history clean-up::

    from runner.prefect_flow import apply_playbook

    apply_playbook.serve(
        name="cleanup-old-runs",
        cron="0 3 * * *",
        parameters={
            "playbook": "playbooks/cleanup-old-runs.yaml",
            "repository": "https://github.com/acme/prefect-ops.git",
        },
    )

or on a work pool's workers (``apply_playbook.deploy(name=..., work_pool_name=...)``, or
``prefect deploy`` with ``docs/examples/prefect.yaml``). Its deployments record the module
entrypoint ``runner.prefect_flow.apply_playbook``, which resolves wherever runner is
installed, not a file path relative to where ``serve`` or ``deploy`` ran.

The flow talks to the same API as the Prefect it runs under (its URL, key and auth string),
never selects its own flow run, and fails when the apply does not finish, with the reason as
the Failed state's message (a guard's refusal, the failed changes, the playbook's problems),
so a failed clean-up shows in the UI and an automation on it has the reason. Unfinished
applies resume on the next run when ``state_dir`` persists between runs.

This is the only module of runner that imports ``prefect``.
"""

from __future__ import annotations

import functools
import io
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
from prefect import Flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.deployments.runner import EntrypointType

from runner.apply import Applied, ApplyRequest, apply, report_document
from runner.artifact import artifact_key, summary_markdown
from runner.errors import EXIT_OK, PlaybookError, RunnerError
from runner.executor import ApplyOptions
from runner.settings import ConnectionSettings, resolve_settings
from runner.words import plural

FLOW_NAME = "runner-apply-playbook"
#: The failed changes named, with their reasons, in the failure message (the flow run's logs
#: name every one).
FIRST_REASONS = 3
#: A reason longer than this is cut in the failure message (Prefect keeps a state message
#: whole, and cuts it to 100,000 characters in the event it emits for the state).
REASON_CHARS = 300


class PlaybookApplyFailed(RuntimeError):
    """The apply did not finish: the playbook did not load, a guard refused the plan,
    changes failed or are pending, or the server failed. Its text says which and why: it is
    the flow run's Failed state message (``PlaybookApplyFailed: <text>``)."""


def _prefect_connection() -> ConnectionSettings:
    """The API the surrounding Prefect talks to, with its credentials."""
    import prefect.settings as ps

    def value(name: str) -> Any:
        setting = getattr(ps, name, None)
        if setting is None:
            return None
        raw = setting.value()
        if hasattr(raw, "get_secret_value"):
            raw = raw.get_secret_value()
        return raw or None

    return resolve_settings(
        api_url=value("PREFECT_API_URL"),
        api_key=value("PREFECT_API_KEY"),
        auth_string=value("PREFECT_API_AUTH_STRING"),
    )


def _checkout(repository: str, ref: str | None, into: Path) -> Path:
    command = ["git", "clone", "--quiet", "--depth", "1"]
    if ref:
        command += ["--branch", ref]
    command += [repository, str(into)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        # git's own message names the repository as given; it never holds our secrets.
        raise PlaybookApplyFailed(f"git clone {repository} failed: {result.stderr.strip()}")
    return into


def _current_flow_run_id() -> UUID | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return UUID(str(run_id)) if run_id else None


def _with_module_entrypoint(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def deploying(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("entrypoint_type", EntrypointType.MODULE_PATH)
        return method(self, *args, **kwargs)

    if hasattr(method, "aio"):  # Prefect 3's async variant, reached as ``flow.deploy.aio``
        deploying.aio = _with_module_entrypoint(method.aio)  # type: ignore[attr-defined]
    return deploying


def _keeping_class(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def copying(self: Any, *args: Any, **kwargs: Any) -> Any:
        copy = method(self, *args, **kwargs)
        copy.__class__ = type(self)
        return copy

    return copying


#: Flow methods that make deployments, by Prefect version (3.x has the a- variants).
_DEPLOYING = ("to_deployment", "ato_deployment", "serve", "aserve", "deploy", "adeploy")

#: A Flow whose deployments record the module entrypoint (``runner.prefect_flow.apply_playbook``)
#: unless told otherwise. Prefect's default, a file path relative to the working directory of
#: ``serve`` or ``deploy`` (``../.venv/lib/python3.11/site-packages/runner/prefect_flow.py``),
#: names a file that a worker on another machine, or in another directory, does not have.
_PlaybookFlow: type[Any] = type(
    "_PlaybookFlow",
    (Flow,),
    {
        **{n: _with_module_entrypoint(getattr(Flow, n)) for n in _DEPLOYING if hasattr(Flow, n)},
        "with_options": _keeping_class(Flow.with_options),
        "__module__": __name__,
    },
)


def _playbook_flow(fn: Callable[..., dict[str, Any]]) -> Any:
    return _PlaybookFlow(fn, name=FLOW_NAME)


@_playbook_flow
def apply_playbook(
    playbook: str,
    repository: str | None = None,
    ref: str | None = None,
    variables: dict[str, str] | None = None,
    dry_run: bool = False,
    state_dir: str = ".runner",
    rate_limit: float | None = None,
    concurrency: int | None = None,
    events: bool = True,
) -> dict[str, Any]:
    """Apply a runner playbook and publish the plan and its outcome as a markdown artifact.

    ``playbook`` is a path, relative to the checkout when ``repository`` (a git URL, checked
    out at ``ref``) is given. Returns the apply report (see ``runner apply --report``); raises
    :class:`PlaybookApplyFailed`, saying why, when the apply does not finish.
    """
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="runner-flow-") as tmp:
        path = Path(playbook)
        checkout: Path | None = None
        if repository:
            checkout = _checkout(repository, ref, Path(tmp) / "checkout")
            path = checkout / playbook
        out, err = io.StringIO(), io.StringIO()
        own = _current_flow_run_id()
        try:
            request = ApplyRequest(
                target=str(path),
                variables=dict(variables or {}),
                settings=_prefect_connection(),
                options=ApplyOptions(rate_limit=rate_limit, concurrency=concurrency),
                state_dir=Path(state_dir),
                max_plan_age=None,
                exclude=frozenset({own}) if own else frozenset(),
                dry_run=dry_run,
                events=events,
                host_flow_run=own,
            )
            applied = anyio.run(functools.partial(apply, request, out=out, err=err))
        except RunnerError as error:  # the playbook's problems, the server's failure, a lock
            text = str(error).replace("\n", "; ")
            if checkout is not None:  # the playbook named as in its repository
                text = text.replace(f"{checkout}/", "")
            # A playbook's problems name it (file:line:col); anything else is said of it.
            where = "" if isinstance(error, PlaybookError) else f"{playbook}: "
            raise PlaybookApplyFailed(where + text) from error
        finally:
            for line in (out.getvalue() + err.getvalue()).splitlines():
                if line.strip():
                    logger.info(line)
    plan = applied.plan
    if plan is not None:
        create_markdown_artifact(
            key=artifact_key(plan.playbook_name),
            markdown=summary_markdown(plan, applied.result, dry_run=dry_run),
            description=f"runner: {plan.playbook_name}",
        )
    report: dict[str, Any] = (
        report_document(applied.result, plan)
        if applied.result is not None and plan is not None
        else {"plan_id": plan.id if plan else None, "counts": {}, "runs": []}
    )
    report["exit_code"] = applied.code
    if applied.code != EXIT_OK:
        raise PlaybookApplyFailed(failure_message(applied, playbook=playbook, err=err.getvalue()))
    return report


def failure_message(applied: Applied, *, playbook: str, err: str = "") -> str:
    """Why an apply did not finish, on one line: the Failed state's message.

    ``<playbook>: refused, nothing was applied: <each guard's refusal>``, or ``<playbook>:
    <counts> of N changes (...): <the first failed changes and their reasons>``; ``err`` (the
    apply's error output) is the fallback.
    """
    plan, result = applied.plan, applied.result
    name = plan.playbook_name if plan is not None else playbook
    if plan is not None and plan.violations:
        return f"{name}: refused, nothing was applied: " + "; ".join(plan.violations)
    if plan is not None and result is not None:
        counts = {s: result.count(s) for s in ("done", "drifted", "raced", "failed")}
        counts["pending"] = result.count("pending") + result.count("created")
        unfinished = ", ".join(
            f"{counts[s]} {s}" for s in ("failed", "raced", "pending") if counts[s]
        )
        total = len(plan.pending)
        parts = [
            f"{unfinished or 'not finished'} of {plural(total, 'change')}"
            f" ({counts['done']} done, {counts['drifted']} drifted)"
        ]
        if result.stopped:
            parts.insert(0, result.stopped)
        named = [
            result.outcomes[c.key]
            for c in plan.pending
            if c.key in result.outcomes and result.outcomes[c.key].status in ("failed", "raced")
        ]
        reasons = [
            f"{o.change.run.name} ({o.change.run.id}): {_cut(o.detail or o.status)}"
            for o in named[:FIRST_REASONS]
        ]
        if len(named) > FIRST_REASONS:
            reasons.append(f"and {len(named) - FIRST_REASONS} more in the flow run's logs")
        return f"{name}: " + "; ".join(parts) + (": " + "; ".join(reasons) if reasons else "")
    lines = [ln.removeprefix("runner: ") for ln in err.strip().splitlines() if ln.strip()]
    return f"{name}: " + (
        lines[-1] if lines else "the apply did not finish; see the flow run's logs"
    )


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."
