"""runner: declarative batch operations on Prefect flow runs.

The product API, re-exported here (heavier pieces load on first use, so that ``import
runner`` stays cheap for the CLI)::

    playbook = runner.load_playbook("playbooks/cleanup.yaml")
    async with runner.PrefectClient(runner.resolve_settings()) as client:
        plan = await runner.plan_playbook(playbook, client)      # sends no write
    print(runner.render_plan(plan, "text"))
    applied = await runner.apply_playbook(                       # the CLI's apply path
        runner.ApplyRequest(target="playbooks/cleanup.yaml", settings=..., ),
        out=sys.stdout, err=sys.stderr,
    )
    undo = await runner.plan_undo(".runner/<plan-id>", client, state_dir=Path(".runner"))

Errors are one tree under :class:`RunnerError` (see :mod:`runner.errors`).
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

_EXPORTS = {
    # loading a playbook
    "load_playbook": "runner.loader",
    "load_text": "runner.loader",
    "load_select": "runner.loader",
    "Playbook": "runner.playbook",
    # planning: the observation of the server, then the pure planner
    "plan_playbook": "runner.observe",
    "make_plan": "runner.planner",
    "Plan": "runner.plan",
    "Change": "runner.plan",
    "Observation": "runner.plan",
    "read_plan": "runner.planfile",
    "write_plan": "runner.planfile",
    # listing what each step selects (runner ls)
    "list_selections": "runner.listing",
    "ListingWriter": "runner.listing",
    # showing a plan
    "render_plan": "runner.render",
    # applying: the one apply path
    "apply_playbook": "runner.apply",
    "ApplyRequest": "runner.apply",
    "Applied": "runner.apply",
    "ApplyOptions": "runner.executor",
    "ApplyResult": "runner.executor",
    # undoing an apply (runner undo): the plan that puts back what it changed
    "plan_undo": "runner.undo",
    "make_undo_plan": "runner.undo",
    # the archive deletes write
    "read_archive": "runner.archive",
    # talking to Prefect
    "PrefectClient": "runner.client",
    "ProposedState": "runner.client",
    "ensure_accepted": "runner.client",
    "ConnectionSettings": "runner.settings",
    "resolve_settings": "runner.settings",
    "RetryPolicy": "runner.retry",
    "FlowRunQuery": "runner.filters",
    "FlowRunFilter": "runner.filters",
    "FlowRunSort": "runner.filters",
    # errors
    "RunnerError": "runner.errors",
    "SettingsError": "runner.errors",
    "PlaybookError": "runner.errors",
    "SelectionError": "runner.errors",
    "PlanFileError": "runner.errors",
    "CheckpointError": "runner.errors",
    "CheckpointWriteError": "runner.errors",
    "ArchiveError": "runner.errors",
    "ArchiveWriteError": "runner.errors",
    "LockError": "runner.errors",
    "OutputError": "runner.errors",
    "APIError": "runner.errors",
    "Unreachable": "runner.errors",
    "Unauthorized": "runner.errors",
    "NotFound": "runner.errors",
    "InvalidRequest": "runner.errors",
    "ServerError": "runner.errors",
    "UnsupportedByServer": "runner.errors",
    "OrchestrationRejected": "runner.errors",
}
#: Where a public name is defined under another name.
_ALIASES = {"apply_playbook": "apply", "render_plan": "render"}

__all__ = [  # noqa: RUF022 - grouped as in _EXPORTS (a test keeps the two in step)
    "__version__",
    "load_playbook",
    "load_text",
    "load_select",
    "Playbook",
    "plan_playbook",
    "make_plan",
    "Plan",
    "Change",
    "Observation",
    "read_plan",
    "write_plan",
    "list_selections",
    "ListingWriter",
    "render_plan",
    "apply_playbook",
    "ApplyRequest",
    "Applied",
    "ApplyOptions",
    "ApplyResult",
    "plan_undo",
    "make_undo_plan",
    "read_archive",
    "PrefectClient",
    "ProposedState",
    "ensure_accepted",
    "ConnectionSettings",
    "resolve_settings",
    "RetryPolicy",
    "FlowRunQuery",
    "FlowRunFilter",
    "FlowRunSort",
    "RunnerError",
    "SettingsError",
    "PlaybookError",
    "SelectionError",
    "PlanFileError",
    "CheckpointError",
    "CheckpointWriteError",
    "ArchiveError",
    "ArchiveWriteError",
    "LockError",
    "OutputError",
    "APIError",
    "Unreachable",
    "Unauthorized",
    "NotFound",
    "InvalidRequest",
    "ServerError",
    "UnsupportedByServer",
    "OrchestrationRejected",
]

if _typing.TYPE_CHECKING:
    from runner.apply import Applied, ApplyRequest
    from runner.apply import apply as apply_playbook
    from runner.archive import read_archive
    from runner.client import PrefectClient, ProposedState, ensure_accepted
    from runner.errors import (
        APIError,
        ArchiveError,
        ArchiveWriteError,
        CheckpointError,
        CheckpointWriteError,
        InvalidRequest,
        LockError,
        NotFound,
        OrchestrationRejected,
        OutputError,
        PlanFileError,
        PlaybookError,
        RunnerError,
        SelectionError,
        ServerError,
        SettingsError,
        Unauthorized,
        Unreachable,
        UnsupportedByServer,
    )
    from runner.executor import ApplyOptions, ApplyResult
    from runner.filters import FlowRunFilter, FlowRunQuery, FlowRunSort
    from runner.listing import ListingWriter, list_selections
    from runner.loader import load_playbook, load_select, load_text
    from runner.observe import plan_playbook
    from runner.plan import Change, Observation, Plan
    from runner.planfile import read_plan, write_plan
    from runner.planner import make_plan
    from runner.playbook import Playbook
    from runner.render import render as render_plan
    from runner.retry import RetryPolicy
    from runner.settings import ConnectionSettings, resolve_settings
    from runner.undo import make_undo_plan, plan_undo


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    return getattr(_importlib.import_module(module), _ALIASES.get(name, name))


def __dir__() -> list[str]:
    return sorted(__all__)
