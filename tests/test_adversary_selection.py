"""Adversarial tests of the selection features of bdd8918 (exclude, tags.none, parameters,
state.since, created, parent_id, names checked against the server, state names checked at
load, the flag on exclusions that match nothing, the tags column).

Each test is a finding: it failed against bdd8918 and passes since the fix that followed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

import pytest

from runner.client import PrefectClient
from runner.errors import PlaybookError
from runner.executor import ApplyOptions, Executor
from runner.journal import Journal
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import Plan, RunView
from runner.render import to_text
from runner.selection import failed_keys
from runner.settings import ConnectionSettings
from tests.support.seed import Seeder, unique

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]


def _playbook(select: str, action: str = "cancel") -> str:
    lines = "".join(f"      {line}\n" for line in select.strip().splitlines())
    return f"version: 1\nsteps:\n  - name: s\n    select:\n{lines}    action: {action}\n"


async def _plan(settings: ConnectionSettings, text: str) -> Plan:
    playbook = load_text(text, name="p.yaml", env={})
    async with PrefectClient(settings) as client:
        return await plan_playbook(playbook, client)


def _ids(plan: Plan, step: int = 0) -> set[str]:
    return {str(c.run.id) for c in plan.steps[step].changes}


# -- medium ----------------------------------------------------------------------------------


async def test_a_run_whose_parameters_changed_after_the_plan_has_drifted(
    settings: ConnectionSettings, seeder: Seeder, tmp_path: Path
) -> None:
    """FINDING (medium). Drift is "what a selection reads" changing between plan and apply
    (executor._drift: state, tags, name, deployment, work queue, work pool). Since bdd8918 a
    selection also reads parameters, but they are not compared (the plan even drops them):
    a run that is given the protecting parameter after the review, so that the playbook now
    leaves it out, is still deleted. The same change made with a tag is caught as drift."""
    flow = seeder.flow()
    run = seeder.run(flow, "Failed", parameters={"keep": False})
    seeder.run(flow, "Failed", parameters={"keep": True})  # the exclusion matches: no flag
    plan = await _plan(
        settings,
        _playbook(f"flows: {flow['name']}\nexclude: {{parameters: {{keep: true}}}}", "delete"),
    )
    assert _ids(plan) == {run["id"]}
    # After the review, before the apply: the run is marked to be kept.
    seeder._call("PATCH", f"flow_runs/{run['id']}", json={"parameters": {"keep": True}})
    async with PrefectClient(settings) as client:
        with Journal(tmp_path / "j", plan_id=plan.id, plan_checksum="test") as journal:
            result = await Executor(
                client, plan, journal, previous=None, options=ApplyOptions()
            ).run()
    outcomes = [(o.status, o.detail) for o in result.outcomes.values()]
    assert seeder.read_run(run["id"]) is not None, (
        f"the run the playbook now leaves out was deleted: {outcomes}"
    )
    assert [status for status, _ in outcomes] == ["drifted"]


# -- low -------------------------------------------------------------------------------------


async def test_the_tags_column_shows_each_tag_unambiguously_and_no_terminal_controls(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    """FINDING (low). The new tags column prints tags as the server has them, joined with
    ", ": a run with the one tag "keep, nightly" (which ``exclude: {tags: {any: [keep]}}``
    does not protect) reads exactly like a run tagged keep and nightly; and a tag's escape
    sequences and carriage returns go to the reviewer's terminal raw (a tag can erase its own
    row of the review, run name and all). Run names have the same problem."""
    flow = seeder.flow()
    seeder.run(flow, "Completed", tags=["keep", "nightly"])
    lookalike = seeder.run(flow, "Completed", tags=["keep, nightly"])
    seeder.run(flow, "Completed", tags=["x\x1b[2K\rok"])
    plan = await _plan(
        settings,
        _playbook(
            f"flows: {flow['name']}\nexclude: {{tags: {{any: [keep]}}}}\n"
            "state: {type: COMPLETED}",
            "delete",
        ),
    )
    assert lookalike["id"] in _ids(plan)  # rightly: it has no tag "keep"
    text = to_text(plan)
    assert "\x1b" not in text and "\r" not in text, "terminal controls from a tag reach the review"
    row = next(line for line in text.splitlines() if lookalike["name"] in line)
    assert '"keep, nightly"' in row, (
        f"a run with the one tag 'keep, nightly' looks like one tagged keep and nightly: {row!r}"
    )


async def test_name_like_is_case_insensitive_beyond_ascii(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    """FINDING (low). docs/playbooks.md: name_like matches "case-insensitive". The server's
    ILIKE on SQLite folds ASCII only, so ``name_like: été`` does not select the run named
    "ÉTÉ-..." (runner's own check, used for exclusions, would match it): the plan selects
    fewer runs than the playbook says, with no note."""
    flow = seeder.flow()
    run = seeder.run(flow, "Failed", name=f"ÉTÉ-{unique('backfill')}")
    plan = await _plan(settings, _playbook(f"flows: {flow['name']}\nname_like: été"))
    assert _ids(plan) == {run["id"]}


@pytest.mark.parametrize(
    "select",
    [
        "flows: f\nstate: {custom: true}",
        "flows: f\nexclude: {state: {custom: true}}",
        "flows: f\nexclude: [{parent: any}]",
    ],
    ids=["select-state-custom-only", "exclude-state-custom-only", "exclude-parent-any"],
)
def test_a_selection_key_that_says_nothing_is_refused(select: str) -> None:
    """FINDING (low). ``state: {custom: true}`` passes the schema's minProperties (whose own
    message says a state selection needs type, name, not_type, not_name or since) and then
    matches every state: a delete step written ``state: {custom: true}`` (its name dropped)
    selects every run of the flow. The same holds in an exclusion, where it (like
    ``parent: any``, while ``{}`` is refused: "an exclusion needs at least one selection
    key") leaves out every run."""
    with pytest.raises(PlaybookError):
        load_text(_playbook(select, "delete"), name="p.yaml", env={})


@pytest.mark.parametrize(
    ("written", "meant"),
    [("no", "no"), ("on", "on"), ("012", "012"), ("12:30", "12:30")],
)
def test_a_parameter_value_is_not_silently_retyped_by_yaml_1_1(written: str, meant: str) -> None:
    """FINDING (low). Parameter values are the one selection value of any JSON type, so
    YAML 1.1's retyping reaches them unchecked: ``parameters: {country: no}`` is false,
    ``on`` true, ``012`` the number 10, ``12:30`` the number 750 (while ``1e3`` stays a
    string). ``exclude: {parameters: {country: no}}`` then leaves out no Norwegian run (only
    the matched-none flag hints at it, and not at all if some run has country false). Either
    keep what was written or refuse it with a hint to quote it."""
    text = _playbook(f"flows: f\nexclude: {{parameters: {{country: {written}}}}}", "delete")
    try:
        playbook = load_text(text, name="p.yaml", env={})
    except PlaybookError:
        return  # refused: fine
    (exclusion,) = playbook.steps[0].select.exclude
    assert exclusion.select.parameters == (("country", meant),)


def test_a_dotted_path_into_a_list_matches_or_is_refused() -> None:
    """FINDING (low). The schema accepts ``batches.0`` ("a dotted path into a nested
    value"), but a path never enters a list: ``exclude: {parameters: {batches.0: prod}}``
    leaves out no run, silently but for the matched-none flag. Either index lists or refuse
    the key at load time."""
    text = _playbook("flows: f\nexclude: {parameters: {batches.0: prod}}", "delete")
    try:
        playbook = load_text(text, name="p.yaml", env={})
    except PlaybookError:
        return  # refused: fine
    (exclusion,) = playbook.steps[0].select.exclude
    run = RunView(id=UUID(int=1), name="r", flow="f", parameters={"batches": ["prod", "dev"]})
    now = datetime.now(timezone.utc)
    assert failed_keys(exclusion.select, run, now=now) == []
