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

The flow talks to the same API as the Prefect it runs under (its URL, key and auth string),
never selects its own flow run, and fails when a change fails, so a failed clean-up shows in
the UI and can trigger an automation. Unfinished applies resume on the next run when
``state_dir`` persists between runs.

This is the only module of runner that imports ``prefect``.
"""

from __future__ import annotations

import functools
import io
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from runner.apply import ApplyRequest, apply, report_document
from runner.artifact import artifact_key, summary_markdown
from runner.errors import EXIT_OK
from runner.executor import ApplyOptions
from runner.settings import ConnectionSettings, resolve_settings


class PlaybookApplyFailed(RuntimeError):
    """The apply did not finish: a guard refused the plan, or changes failed or are pending."""


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
        raise RuntimeError(f"git clone {repository} failed: {result.stderr.strip()}")
    return into


def _current_flow_run_id() -> UUID | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return UUID(str(run_id)) if run_id else None


@flow(name="runner-apply-playbook")
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
    out at ``ref``) is given. ``events``: record the apply in Prefect's event feed, related
    to this flow run (``runner apply --no-events`` is ``False``). Returns the apply report
    (see ``runner apply --report``).
    """
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="runner-flow-") as tmp:
        path = Path(playbook)
        if repository:
            checkout = _checkout(repository, ref, Path(tmp) / "checkout")
            path = checkout / playbook
        out, err = io.StringIO(), io.StringIO()
        own = _current_flow_run_id()
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
        raise PlaybookApplyFailed(
            f"runner apply exited {applied.code}: "
            + (err.getvalue().strip().splitlines() or ["see the flow run's logs"])[-1]
        )
    return report
