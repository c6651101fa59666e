"""The typed, frozen form of a playbook. Field names are the schema's keys, one for one.

Built only by :func:`runner.loader.load_playbook`, after the schema and the semantic checks
passed; a test keeps these models and ``schemas/playbook.schema.json`` in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar, Literal, Union
from uuid import UUID

from runner.states import StateType
from runner.timeexpr import TimeExpr

Names = tuple[str, ...]
JSONValue = Union[None, bool, int, float, str, list["JSONValue"], dict[str, "JSONValue"]]  # noqa: UP007
Strategy = Literal["in_place", "recreate"]
#: What a reschedule's ``delay`` counts from: the run's current scheduled time, or the plan's now.
DelayFrom = Literal["scheduled", "now"]
Parent = Literal["any", "top_level", "subflow"]
Expectation = Literal["any", "non_empty", "exclusions_match"]
#: What a step acts on: flow runs (the default), or deployments, work pools, work queues.
Target = Literal["flow_runs", "deployments", "work_pools", "work_queues"]

DEFAULT_MESSAGE = "runner: {playbook} / {step}"


#: Marks the fields that describe where a playbook came from rather than what it says.
SOURCE = {"source": True}


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    max_attempts: int = 11
    backoff: timedelta = timedelta(seconds=0.05)
    max_backoff: timedelta = timedelta(seconds=20)


@dataclass(frozen=True, slots=True, kw_only=True)
class Defaults:
    concurrency: int = 8
    rate_limit: float | None = None
    retry: Retry = field(default_factory=Retry)
    message: str = DEFAULT_MESSAGE


@dataclass(frozen=True, slots=True, kw_only=True)
class Guards:
    max_affected: int | None = None
    allow_active: bool = False
    #: What the plan expects of each step (one value or several in the playbook).
    expect: tuple[Expectation, ...] = ("any",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    before: TimeExpr | None = None
    after: TimeExpr | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StateSelect:
    type: tuple[StateType, ...] = ()
    name: Names = ()
    not_type: tuple[StateType, ...] = ()
    not_name: Names = ()
    #: When the run entered its current state (its state's timestamp).
    since: Window | None = None
    #: State names that are not Prefect's own are allowed.
    custom: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TagSelect:
    all: Names = ()
    any: Names = ()
    none: Names = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Select:
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
    parent_id: tuple[UUID, ...] = ()
    expected_start: Window | None = None
    start: Window | None = None
    end: Window | None = None
    next_scheduled_start: Window | None = None
    created: Window | None = None
    #: Parameter name or dotted path -> the value it must equal (as JSON).
    parameters: tuple[tuple[str, JSONValue], ...] = ()
    sort: str | None = None
    limit: int | None = None
    exclude: tuple[Exclusion, ...] = ()

    def keys(self) -> tuple[str, ...]:
        """The selection keys this select sets (for notes and messages)."""
        return tuple(name for name in _SELECT_KEYS if getattr(self, name) not in (None, (), "any"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Exclusion:
    """Runs a step leaves out: every key of ``select`` must match (``sort``, ``limit`` and
    ``exclude`` unused). ``label`` says where it was written (``exclude.tags``,
    ``exclude[1]``), for the plan's flag when it matches none of the selected runs."""

    label: str
    select: Select


_SELECT_KEYS = (
    "state",
    "flows",
    "deployments",
    "deployment_ids",
    "deployment_like",
    "tags",
    "work_pools",
    "work_queues",
    "name_like",
    "parent",
    "parent_id",
    "expected_start",
    "start",
    "end",
    "next_scheduled_start",
    "created",
    "parameters",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Archive:
    """What a delete writes to its archive before the run is deleted: the run as the API
    returns it and its state history, always; its logs with ``logs``."""

    logs: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    kind: ClassVar[str] = "delete"
    destructive: ClassVar[bool] = True
    #: None: ``archive: false``, deleted without an archive.
    archive: Archive | None = field(default_factory=Archive)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    kind: ClassVar[str] = "cancel"
    destructive: ClassVar[bool] = True
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetState:
    kind: ClassVar[str] = "set_state"
    destructive: ClassVar[bool] = True
    type: StateType
    name: str | None = None
    message: str | None = None
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Reschedule:
    kind: ClassVar[str] = "reschedule"
    destructive: ClassVar[bool] = False
    delay: timedelta | None = None
    at: TimeExpr | None = None
    #: The playbook's ``from`` (a Python keyword, so the field's metadata names the key).
    from_: DelayFrom = field(default="scheduled", metadata={"key": "from"})
    spread: timedelta | None = None
    allow_past: bool = False
    strategy: Strategy = "in_place"
    message: str | None = None

    @property
    def recreates(self) -> bool:
        return self.strategy == "recreate"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRuns:
    kind: ClassVar[str] = "retry"
    destructive: ClassVar[bool] = False
    delay: timedelta | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    kind: ClassVar[str] = "resume"
    destructive: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Tag:
    kind: ClassVar[str] = "tag"
    destructive: ClassVar[bool] = False
    add: Names = ()
    remove: Names = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectSelect:
    """Which deployments, work pools or work queues a step acts on (its ``target``). Every
    key given must match; a list matches any of its items. Keys a target has no use for are
    refused by the schema (``flows`` on a work pool step)."""

    #: Names (globs: ``*``, ``?``, ``[...]``): a deployment as ``flow/deployment``, a work
    #: pool by its name, a work queue by its name (in any pool).
    names: Names = ()
    #: Deployments of these flows.
    flows: Names = ()
    #: Deployments by their tags.
    tags: TagSelect | None = None
    #: Deployments whose work pool, or work queues whose pool, is one of these.
    work_pools: Names = ()
    #: Deployments whose work queue is one of these.
    work_queues: Names = ()
    #: Work pools of these types (``kubernetes``, ``process``...).
    types: Names = ()
    #: Paused or not (a deployment's ``paused`` flag, a pool's or queue's ``is_paused``).
    paused: bool | None = None
    #: Names (globs) left out, whatever else they match.
    exclude: Names = ()

    def keys(self) -> tuple[str, ...]:
        return tuple(
            name
            for name in ("names", "flows", "tags", "work_pools", "work_queues", "types", "paused")
            if getattr(self, name) not in (None, ())
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """Pause a deployment (its ``paused`` flag: no new scheduled runs; each schedule's own
    ``active`` flag is left as it is), a work pool or a work queue (workers get no runs from
    it)."""

    kind: ClassVar[str] = "pause"
    destructive: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Unpause:
    """Resume a paused deployment, work pool or work queue (the playbook's ``resume`` on a
    step whose target is not flow runs)."""

    kind: ClassVar[str] = "resume"
    destructive: ClassVar[bool] = False


Action = Union[Delete, Cancel, SetState, Reschedule, RetryRuns, Resume, Tag, Pause, Unpause]  # noqa: UP007
ACTION_TYPES: dict[str, type[Action]] = {
    "delete": Delete,
    "cancel": Cancel,
    "set_state": SetState,
    "reschedule": Reschedule,
    "retry": RetryRuns,
    "resume": Resume,
    "tag": Tag,
}
#: The actions of a step whose target is not flow runs.
OBJECT_ACTION_TYPES: dict[str, type[Pause | Unpause]] = {"pause": Pause, "resume": Unpause}


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str
    #: For a ``flow_runs`` step; ``Select()`` (never read) on a step of another target.
    select: Select
    action: Action
    target: Target = "flow_runs"
    #: The playbook's ``select`` of a step whose target is not flow runs.
    objects: ObjectSelect | None = field(default=None, metadata={"key": "select"})
    concurrency: int | None = None
    rate_limit: float | None = None
    retry: Retry | None = None
    guards: Guards | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Playbook:
    version: Literal[1] = 1
    name: str
    description: str | None = None
    vars: dict[str, str | int | float | bool] = field(default_factory=dict)
    defaults: Defaults = field(default_factory=Defaults)
    guards: Guards = field(default_factory=Guards)
    steps: tuple[Step, ...]

    # Where it came from: not part of the playbook language, so not in the schema.
    #: The file the playbook was read from, as given.
    path: str = field(default="<string>", compare=False, metadata=SOURCE)
    #: ``sha256:`` of the file's bytes: a saved plan names exactly what it came from.
    digest: str = field(default="", compare=False, metadata=SOURCE)
    #: Where each value of a step stands in the file ("steps[0].select.flows" -> (line,
    #: column)), for problems found later (a name the server does not know).
    positions: Mapping[str, tuple[int, int]] = field(
        default_factory=dict, compare=False, metadata=SOURCE
    )

    def where(self, path: str) -> tuple[int, int]:
        """The line and column of ``path`` (or of the nearest enclosing value)."""
        probe = path
        while probe:
            if probe in self.positions:
                return self.positions[probe]
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return (1, 1)

    @property
    def run_steps(self) -> tuple[tuple[int, Step], ...]:
        """The steps that act on flow runs, with their index."""
        return tuple((i, s) for i, s in enumerate(self.steps) if s.target == "flow_runs")

    def message_for(self, step: Step, override: str | None = None) -> str:
        """The state message for a change made by ``step``."""
        template = override or self.defaults.message
        return template.replace("{playbook}", self.name).replace("{step}", step.name)
