"""Prefect's state types (kept free of heavy imports: the CLI loads this at start-up)."""

from __future__ import annotations

import enum

TERMINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


class StateType(str, enum.Enum):
    """Prefect's state types."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    @property
    def is_terminal(self) -> bool:
        return self.value in TERMINAL_STATE_TYPES


#: Every state name Prefect itself gives a flow run (3.x and 2.x; a name outside these is
#: one the user's code set, allowed in a selection with ``custom: true``).
PREFECT_STATE_NAMES = (
    "Scheduled",
    "Late",
    "AwaitingRetry",
    "AwaitingConcurrencySlot",
    "Resuming",
    "Pending",
    "Submitting",
    "InfrastructurePending",
    "NotReady",
    "Running",
    "Retrying",
    "Paused",
    "Suspended",
    "Cancelling",
    "Completed",
    "Cached",
    "RolledBack",
    "Failed",
    "TimedOut",
    "Cancelled",
    "Crashed",
)
