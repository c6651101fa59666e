"""runner: declarative batch operations on Prefect flow runs.

The public surface is re-exported here; heavier pieces load on first use, so that
``import runner`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PrefectClient": "runner.client",
    "ProposedState": "runner.client",
    "ensure_accepted": "runner.client",
    "ConnectionSettings": "runner.settings",
    "resolve_settings": "runner.settings",
    "RetryPolicy": "runner.retry",
    "FlowRunQuery": "runner.filters",
    "FlowRunFilter": "runner.filters",
    "FlowRunSort": "runner.filters",
    "RunnerError": "runner.errors",
    "SettingsError": "runner.errors",
    "APIError": "runner.errors",
    "Unreachable": "runner.errors",
    "Unauthorized": "runner.errors",
    "NotFound": "runner.errors",
    "InvalidRequest": "runner.errors",
    "ServerError": "runner.errors",
    "UnsupportedByServer": "runner.errors",
    "OrchestrationRejected": "runner.errors",
}

__all__ = [  # noqa: RUF022 - grouped as in _EXPORTS
    "__version__",
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
    "APIError",
    "Unreachable",
    "Unauthorized",
    "NotFound",
    "InvalidRequest",
    "ServerError",
    "UnsupportedByServer",
    "OrchestrationRejected",
]

if TYPE_CHECKING:
    from runner.client import PrefectClient, ProposedState, ensure_accepted
    from runner.errors import (
        APIError,
        InvalidRequest,
        NotFound,
        OrchestrationRejected,
        RunnerError,
        ServerError,
        SettingsError,
        Unauthorized,
        Unreachable,
        UnsupportedByServer,
    )
    from runner.filters import FlowRunFilter, FlowRunQuery, FlowRunSort
    from runner.retry import RetryPolicy
    from runner.settings import ConnectionSettings, resolve_settings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
