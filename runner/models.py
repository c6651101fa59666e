"""Typed views of what the Prefect API returns, limited to what runner needs.

Unknown fields are ignored so that the same models read Prefect 2.x and 3.x answers.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from runner.states import TERMINAL_STATE_TYPES, StateType

__all__ = ["TERMINAL_STATE_TYPES", "StateType"]


class SetStateStatus(str, enum.Enum):
    """The orchestration verdict on a proposed state."""

    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    ABORT = "ABORT"
    WAIT = "WAIT"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class StateDetails(_Model):
    scheduled_time: datetime | None = None
    transition_id: UUID | None = None
    pause_timeout: datetime | None = None
    pause_reschedule: bool = False
    pause_key: str | None = None


class State(_Model):
    id: UUID | None = None
    type: StateType
    name: str | None = None
    timestamp: datetime | None = None
    message: str | None = None
    state_details: StateDetails = Field(default_factory=StateDetails)


class FlowRun(_Model):
    id: UUID
    name: str
    flow_id: UUID
    deployment_id: UUID | None = None
    work_queue_name: str | None = None
    work_pool_name: str | None = None
    parent_task_run_id: UUID | None = None
    tags: tuple[str, ...] = ()
    parameters: dict[str, Any] = Field(default_factory=dict)
    #: None where the server does not have them (Prefect 2.x before job variables).
    job_variables: dict[str, Any] | None = None
    idempotency_key: str | None = None
    state: State | None = None
    expected_start_time: datetime | None = None
    next_scheduled_start_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    created: datetime | None = None
    updated: datetime | None = None
    #: The run's ``state_type`` and ``state_name`` columns, as the server sends them beside
    #: ``state``: what its state filter reads (set only where the answer has them).
    column_state_type: str | None = Field(default=None, alias="state_type")
    column_state_name: str | None = Field(default=None, alias="state_name")

    @property
    def state_type(self) -> StateType | None:
        return self.state.type if self.state else None

    @property
    def state_name(self) -> str | None:
        return self.state.name if self.state else None


class Flow(_Model):
    id: UUID
    name: str
    tags: tuple[str, ...] = ()


class Deployment(_Model):
    id: UUID
    name: str
    flow_id: UUID
    work_pool_name: str | None = None
    work_queue_name: str | None = None
    tags: tuple[str, ...] = ()
    parameters: dict[str, Any] = Field(default_factory=dict)


class OrchestrationResult(_Model):
    """The server's answer to a proposed state: a verdict, the resulting state, a reason."""

    status: SetStateStatus
    state: State | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        reason = self.details.get("reason")
        return str(reason) if reason is not None else None

    @property
    def accepted(self) -> bool:
        return self.status is SetStateStatus.ACCEPT


class BulkStateResult(_Model):
    """One run's answer from ``/flow_runs/bulk_set_state``."""

    flow_run_id: UUID
    status: SetStateStatus
    state: State | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    def as_result(self) -> OrchestrationResult:
        return OrchestrationResult(status=self.status, state=self.state, details=self.details)


class ServerInfo(_Model):
    """What runner learned about the server it talks to."""

    version: str | None = None
    api_version: str | None = None
    bulk_routes: bool = False


class ConcurrencyLimit(_Model):
    """A global concurrency limit (``/v2/concurrency_limits/``): what the server lock is."""

    id: UUID
    name: str
    limit: int
    active: bool = True
    active_slots: int = 0


class LimitSlot(_Model):
    """A limit an ``increment-with-lease`` counted against."""

    id: UUID
    name: str
    limit: int


class LeaseGrant(_Model):
    """``increment-with-lease`` answered 200: the lease, and the limits it takes a slot of
    (none when no limit has the name asked for: the server grants a lease on nothing)."""

    lease_id: UUID
    limits: tuple[LimitSlot, ...] = ()


class LeaseRefused(_Model):
    """``increment-with-lease`` answered 423 Locked: every slot is taken. ``retry_after`` is
    the server's ``Retry-After`` (seconds); ``after_lost_answer`` says the request was sent
    again after an attempt whose answer was lost (which may have taken the slot)."""

    retry_after: float | None = None
    after_lost_answer: bool = False
