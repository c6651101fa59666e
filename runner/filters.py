"""The body of ``POST /flow_runs/filter``, typed.

Every model forbids unknown fields: the server silently ignores an unknown top-level key and
then matches every run, so a misspelled filter must fail here, before it is sent.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class FlowRunSort(str, enum.Enum):
    """Every sort the flow-run filter route accepts (Prefect 2.x and 3.x alike)."""

    ID_DESC = "ID_DESC"
    START_TIME_ASC = "START_TIME_ASC"
    START_TIME_DESC = "START_TIME_DESC"
    EXPECTED_START_TIME_ASC = "EXPECTED_START_TIME_ASC"
    EXPECTED_START_TIME_DESC = "EXPECTED_START_TIME_DESC"
    NAME_ASC = "NAME_ASC"
    NAME_DESC = "NAME_DESC"
    NEXT_SCHEDULED_START_TIME_ASC = "NEXT_SCHEDULED_START_TIME_ASC"
    END_TIME_DESC = "END_TIME_DESC"


class _Filter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnyIds(_Filter):
    any_: tuple[UUID, ...] | None = None
    not_any_: tuple[UUID, ...] | None = None


class IdsOrNull(_Filter):
    any_: tuple[UUID, ...] | None = None
    is_null_: bool | None = None


class Names(_Filter):
    any_: tuple[str, ...] | None = None
    like_: str | None = None


class NamesAnyOf(_Filter):
    any_: tuple[str, ...] | None = None


class NamesAnyNotAny(_Filter):
    any_: tuple[str, ...] | None = None
    not_any_: tuple[str, ...] | None = None


class Tags(_Filter):
    all_: tuple[str, ...] | None = None
    any_: tuple[str, ...] | None = None
    is_null_: bool | None = None


class TimeWindow(_Filter):
    before_: datetime | None = None
    after_: datetime | None = None
    is_null_: bool | None = None


class StateFilter(_Filter):
    type: NamesAnyNotAny | None = None
    name: NamesAnyNotAny | None = None


class FlowRunFilter(_Filter):
    id: AnyIds | None = None
    name: Names | None = None
    tags: Tags | None = None
    deployment_id: IdsOrNull | None = None
    work_queue_name: NamesAnyOf | None = None
    state: StateFilter | None = None
    parent_task_run_id: IdsOrNull | None = None
    parent_flow_run_id: AnyIds | None = None
    expected_start_time: TimeWindow | None = None
    next_scheduled_start_time: TimeWindow | None = None
    start_time: TimeWindow | None = None
    end_time: TimeWindow | None = None


class FlowFilter(_Filter):
    id: AnyIds | None = None
    name: Names | None = None
    tags: Tags | None = None


class DeploymentFilter(_Filter):
    id: AnyIds | None = None
    name: Names | None = None
    tags: Tags | None = None


class WorkPoolFilter(_Filter):
    name: NamesAnyOf | None = None


class WorkQueueFilter(_Filter):
    name: NamesAnyOf | None = None


class FlowRunQuery(_Filter):
    """Which flow runs to read: the filter part of the request body, without paging."""

    flows: FlowFilter | None = None
    flow_runs: FlowRunFilter | None = None
    deployments: DeploymentFilter | None = None
    work_pools: WorkPoolFilter | None = None
    work_pool_queues: WorkQueueFilter | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body, leaving out everything unset."""
        return self.model_dump(mode="json", exclude_none=True)


def by_ids(ids: Iterable[UUID]) -> FlowRunFilter:
    """A filter on exactly these run ids (never empty: see the bulk routes' danger)."""
    id_tuple = tuple(ids)
    if not id_tuple:
        raise ValueError("a filter by ids needs at least one id")
    return FlowRunFilter(id=AnyIds(any_=id_tuple))
