"""The typed, frozen form of a playbook. Field names are the schema's keys, one for one.

Built only by :func:`runner.loader.load_playbook`, after the schema and the semantic checks
passed; a test keeps these models and ``schemas/playbook.schema.json`` in step.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar, Literal, Union
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from runner.models import StateType
from runner.timeexpr import TimeExpr

Names = tuple[str, ...]
Strategy = Literal["in_place", "recreate"]
Parent = Literal["any", "top_level", "subflow"]
Expectation = Literal["any", "non_empty"]

DEFAULT_MESSAGE = "runner: {playbook} / {step}"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Retry(_Frozen):
    max_attempts: int = 8
    backoff: timedelta = timedelta(seconds=0.25)
    max_backoff: timedelta = timedelta(seconds=20)


class Defaults(_Frozen):
    concurrency: int = 8
    rate_limit: float | None = None
    retry: Retry = Field(default_factory=Retry)
    message: str = DEFAULT_MESSAGE


class Guards(_Frozen):
    max_affected: int | None = None
    allow_active: bool = False
    expect: Expectation = "any"


class Window(_Frozen):
    before: TimeExpr | None = None
    after: TimeExpr | None = None


class StateSelect(_Frozen):
    type: tuple[StateType, ...] = ()
    name: Names = ()
    not_type: tuple[StateType, ...] = ()
    not_name: Names = ()


class TagSelect(_Frozen):
    all: Names = ()
    any: Names = ()


class Select(_Frozen):
    state: StateSelect | None = None
    flows: Names = ()
    deployments: Names = ()
    deployment_ids: tuple[UUID, ...] = ()
    deployment_like: str | None = None
    tags: TagSelect | None = None
    work_pools: Names = ()
    work_queues: Names = ()
    name_like: str | None = None
    parent: Parent = "any"
    expected_start: Window | None = None
    start: Window | None = None
    end: Window | None = None
    next_scheduled_start: Window | None = None
    sort: str | None = None
    limit: int | None = None


class Delete(_Frozen):
    kind: ClassVar[str] = "delete"
    destructive: ClassVar[bool] = True


class Cancel(_Frozen):
    kind: ClassVar[str] = "cancel"
    destructive: ClassVar[bool] = True
    message: str | None = None


class SetState(_Frozen):
    kind: ClassVar[str] = "set_state"
    destructive: ClassVar[bool] = True
    type: StateType
    name: str | None = None
    message: str | None = None
    force: bool = False


class Reschedule(_Frozen):
    kind: ClassVar[str] = "reschedule"
    destructive: ClassVar[bool] = False
    delay: timedelta | None = None
    at: TimeExpr | None = None
    strategy: Strategy = "in_place"
    message: str | None = None

    @property
    def recreates(self) -> bool:
        return self.strategy == "recreate"


class RetryRuns(_Frozen):
    kind: ClassVar[str] = "retry"
    destructive: ClassVar[bool] = False
    delay: timedelta | None = None
    message: str | None = None


class Resume(_Frozen):
    kind: ClassVar[str] = "resume"
    destructive: ClassVar[bool] = False


class Tag(_Frozen):
    kind: ClassVar[str] = "tag"
    destructive: ClassVar[bool] = False
    add: Names = ()
    remove: Names = ()


Action = Union[Delete, Cancel, SetState, Reschedule, RetryRuns, Resume, Tag]  # noqa: UP007
ACTION_TYPES: dict[str, type[_Frozen]] = {
    "delete": Delete,
    "cancel": Cancel,
    "set_state": SetState,
    "reschedule": Reschedule,
    "retry": RetryRuns,
    "resume": Resume,
    "tag": Tag,
}


class Step(_Frozen):
    name: str
    select: Select
    action: Action
    concurrency: int | None = None
    rate_limit: float | None = None
    retry: Retry | None = None
    guards: Guards | None = None


class Playbook(_Frozen):
    version: Literal[1] = 1
    name: str
    description: str | None = None
    vars: dict[str, str | int | float | bool] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    guards: Guards = Field(default_factory=Guards)
    steps: tuple[Step, ...]

    # Where it came from: not part of the playbook language, so not in the schema.
    _path: str = PrivateAttr(default="<string>")
    _digest: str = PrivateAttr(default="")

    @property
    def path(self) -> str:
        """The file the playbook was read from, as given."""
        return self._path

    @property
    def digest(self) -> str:
        """``sha256:`` of the file's bytes, so a saved plan can name exactly what it came from."""
        return self._digest

    def message_for(self, step: Step, override: str | None = None) -> str:
        """The state message for a change made by ``step``."""
        template = override or self.defaults.message
        return template.replace("{playbook}", self.name).replace("{step}", step.name)
