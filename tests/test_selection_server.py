"""Selections that say exactly what the operator means (issue 19), against a real server:
names the server does not know, exclusions (and a typo in one), ``tags.none``, and the
selection keys the server cannot filter on (``parameters``, ``state.since``, ``created``)
or reads through task runs (``parent_id``)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

import runner.observe as observe_module
from runner.client import PrefectClient
from runner.errors import PlaybookError, SelectionError
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.plan import Plan
from runner.render import to_text
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.prefect_server import PrefectServer
from tests.support.seed import Seeder, unique
from tests.support.seed_db import clone_runs_at

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _between(earlier: str, later: str) -> str:
    """An ISO time between two of the server's timestamps (never the client's clock)."""
    a, b = _when(earlier), _when(later)
    assert a < b, (earlier, later)
    return (a + (b - a) / 2).isoformat().replace("+00:00", "Z")


async def _plan(settings: ConnectionSettings, text: str) -> Plan:
    playbook = load_text(text, name="p.yaml", env={})
    async with PrefectClient(settings) as client:
        return await plan_playbook(playbook, client)


def _ids(plan: Plan, step: int = 0) -> set[str]:
    return {str(c.run.id) for c in plan.steps[step].changes}


def test_names_the_server_does_not_know_are_errors_with_suggestions(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    suffix = unique("")
    flow = seeder.flow(f"ingest{suffix}")
    pool = seeder.work_pool(f"proc-pool{suffix}")
    seeder.deployment(flow, "nightly", work_pool=pool["name"], work_queue="critical")
    path = tmp_path / "typos.yaml"
    path.write_text(
        "version: 1\n"
        "steps:\n"
        "  - name: typos\n"
        "    select:\n"
        f"      flows: ingset{suffix}\n"
        f"      work_pools: [proc-pol{suffix}]\n"
        "      work_queues: critcal\n"
        "    action: cancel\n"
        "  - name: deployment typo in an exclusion\n"
        "    select:\n"
        f"      flows: ingest{suffix}\n"
        "      exclude:\n"
        f"        deployments: ingest{suffix}/nightyl\n"
        "    action: cancel\n"
    )
    result = run_cli("plan", str(path), api_url=api_url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"{path}:5:14: steps[0].select.flows: no flow 'ingset{suffix}' on {api_url};"
        f" did you mean 'ingest{suffix}'?\n"
        f"{path}:6:20: steps[0].select.work_pools[0]: no work pool 'proc-pol{suffix}' on"
        f" {api_url}; did you mean 'proc-pool{suffix}'?\n"
        f"{path}:7:20: steps[0].select.work_queues: no work queue 'critcal' on {api_url};"
        " did you mean 'critical'?\n"
        f"{path}:13:22: steps[1].select.exclude.deployments: no deployment"
        f" 'ingest{suffix}/nightyl' on {api_url}; did you mean 'ingest{suffix}/nightly'?\n"
    )


async def test_exclusions_leave_runs_out_and_a_typo_in_one_is_flagged(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    flow = seeder.flow()
    other = seeder.deployment(flow, "critical")
    plain = seeder.runs(3, flow, "Completed")
    keep = seeder.runs(2, flow, "Completed", tags=["keep"])
    critical = seeder.run(flow, "Completed", deployment=other)
    name = flow["name"]
    text = (
        "version: 1\n"
        "steps:\n"
        "  - name: clean\n"
        "    select:\n"
        f"      flows: {name}\n"
        "      state: {type: COMPLETED}\n"
        "      exclude:\n"
        "        tags: {any: [%s]}\n"
        f"        deployments: {name}/critical\n"
        "    action: delete\n"
    )
    plan = await _plan(settings, text % "keep")
    assert _ids(plan) == {r["id"] for r in plain}
    assert plan.steps[0].show_tags
    assert not [n for n in plan.notes if "matched none" in n]
    # The typo of the issue: every protected run would be deleted; the plan says so.
    typo = await _plan(settings, text % "Keep")
    assert _ids(typo) == {r["id"] for r in [*plain, *keep]}
    assert critical["id"] not in _ids(typo)
    assert (
        "step 1 ('clean'): select.exclude.tags matched none of the selected runs (a typo in a"
        " name or tag? runner checks names, not tags)"
    ) in typo.notes
    assert typo.violations == ()
    rendered = to_text(typo)
    assert "Note: step 1 ('clean'): select.exclude.tags matched none" in rendered
    header = next(line for line in rendered.splitlines() if line.startswith("  run "))
    assert " tags " in header
    assert "keep" in rendered  # the column a reviewer needs to see the typo
    strict = text.replace(
        "    action: delete\n", "    action: delete\n    guards: {expect: exclusions_match}\n"
    )
    refused = await _plan(settings, strict % "Keep")
    assert refused.violations == (
        "step 1 ('clean'): select.exclude.tags matched none of the selected runs, and its"
        " guards expect every exclusion to match (expect: exclusions_match)",
    )
    assert (await _plan(settings, strict % "keep")).violations == ()


async def test_tags_none_and_a_list_of_exclusions(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    flow = seeder.flow()
    dep = seeder.deployment(flow, "d")
    bare = seeder.run(flow, "Failed")
    keep = seeder.run(flow, "Failed", tags=["keep", "x"])
    both = seeder.run(flow, "Failed", deployment=dep, tags=["x"])
    only_dep = seeder.run(flow, "Failed", deployment=dep)
    none = await _plan(
        settings,
        f"version: 1\nsteps:\n  - name: s\n    select:\n      flows: {flow['name']}\n"
        "      tags: {none: [keep]}\n    action: cancel\n",
    )
    assert _ids(none) == {bare["id"], both["id"], only_dep["id"]}
    # A list item is one exclusion: all of its keys must match.
    listed = await _plan(
        settings,
        f"version: 1\nsteps:\n  - name: s\n    select:\n      flows: {flow['name']}\n"
        f"      exclude:\n        - {{deployments: {flow['name']}/d, tags: {{all: [x]}}}}\n"
        "    action: cancel\n",
    )
    assert _ids(listed) == {bare["id"], keep["id"], only_dep["id"]}


async def test_selection_by_parameters(settings: ConnectionSettings, seeder: Seeder) -> None:
    flow = seeder.flow()
    eu_full = seeder.run(flow, "Failed", parameters={"region": "eu", "config": {"mode": "full"}})
    seeder.run(flow, "Failed", parameters={"region": "eu", "config": {"mode": "delta"}})
    seeder.run(flow, "Failed", parameters={"region": "us", "config": {"mode": "full"}})
    seeder.run(flow, "Failed", parameters={"region": "eu"})
    seeder.run(flow, "Failed", parameters={"region": "eu", "config": {"mode": 1}})
    number = seeder.run(flow, "Failed", parameters={"n": 1.0})
    seeder.run(flow, "Failed", parameters={"n": True})
    plan = await _plan(
        settings,
        f"version: 1\nsteps:\n  - name: s\n    select:\n      flows: {flow['name']}\n"
        "      parameters: {region: eu, config.mode: full}\n    action: cancel\n"
        "  - name: n\n    select:\n"
        f"      flows: {flow['name']}\n      parameters: {{n: 1}}\n    action: cancel\n",
    )
    assert _ids(plan, 0) == {eu_full["id"]}
    assert _ids(plan, 1) == {number["id"]}
    # Kept in the plan: a change of them before the apply is drift.
    assert plan.steps[0].changes[0].run.parameters == {"region": "eu", "config": {"mode": "full"}}
    assert any("runner applied select.parameters itself" in n for n in plan.notes)


async def test_state_since_is_time_in_the_current_state(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    """ "Pending for a while" is not "expected to start a while ago": a run that went
    Pending seconds ago, hours after its expected start, is left alone."""
    flow = seeder.flow()
    long_ago = datetime.now().astimezone() - timedelta(hours=2)
    old = seeder.run(flow, "Late", scheduled=long_ago)
    fresh = seeder.run(flow, "Late", scheduled=long_ago)
    seeder.set_state(old["id"], "PENDING", "Pending")
    seeder.set_state(fresh["id"], "PENDING", "Pending")
    old_state = seeder.read_run(old["id"])
    fresh_state = seeder.read_run(fresh["id"])
    assert old_state and fresh_state
    cut = _between(old_state["state"]["timestamp"], fresh_state["state"]["timestamp"])
    select = f"version: 1\nsteps:\n  - name: s\n    select:\n      flows: {flow['name']}\n"
    by_start = await _plan(
        settings, select + "      expected_start: {before: -1h}\n    action: cancel\n"
    )
    assert _ids(by_start) == {old["id"], fresh["id"]}
    since = await _plan(
        settings,
        select + f"      state:\n        type: PENDING\n        since: {{before: '{cut}'}}\n"
        "    action: cancel\n",
    )
    assert _ids(since) == {old["id"]}
    change = since.steps[0].changes[0]
    assert change.run.state_since == _when(old_state["state"]["timestamp"])


async def test_created_window(settings: ConnectionSettings, seeder: Seeder) -> None:
    flow = seeder.flow()
    first = seeder.run(flow, "Completed")
    second = seeder.run(flow, "Completed")
    cut = _between(first["created"], second["created"])
    plan = await _plan(
        settings,
        f"version: 1\nsteps:\n  - name: s\n    select:\n      flows: {flow['name']}\n"
        f"      created: {{before: '{cut}'}}\n    action: delete\n",
    )
    assert _ids(plan) == {first["id"]}


async def test_parent_id_selects_the_subflows_of_a_run(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    flow = seeder.flow()
    child_flow = seeder.flow()
    parents = seeder.runs(2, flow, "Running")
    children: list[dict[str, Any]] = []
    for parent in parents:
        task = seeder.task_run(parent["id"])
        children.append(seeder.run(child_flow, "Running", parent_task_run_id=task["id"]))
    seeder.run(child_flow, "Running")  # a top-level run of the same flow
    plan = await _plan(
        settings,
        f"version: 1\nsteps:\n  - name: s\n    select:\n      parent_id: {parents[0]['id']}\n"
        "    action: cancel\n",
    )
    assert _ids(plan) == {children[0]["id"]}
    assert plan.steps[0].changes[0].run.parent_task_run_id is not None
    both = await _plan(
        settings,
        "version: 1\nsteps:\n  - name: s\n    select:\n"
        f"      parent_id: [{parents[0]['id']}, {parents[1]['id']}]\n"
        f"      flows: {child_flow['name']}\n    action: cancel\n",
    )
    assert _ids(both) == {c["id"] for c in children}
    assert UUID(children[1]["id"]) in {c.run.id for c in both.changes}


def test_an_unknown_state_name_is_refused_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "version: 1\nsteps:\n  - name: s\n    select: {state: {name: Runing}}\n    action: cancel\n"
    )
    # No server at all: validate says it, and plan says it before connecting.
    result = run_cli("plan", str(path), api_url="http://127.0.0.1:9/api")
    assert result.returncode == 1
    assert result.stderr == (
        f"{path}:4:28: steps[0].select.state.name: 'Runing' is not a Prefect state name;"
        " did you mean 'Running'? (a name your code sets: add custom: true to the state"
        " selection)\n"
    )
    with pytest.raises(PlaybookError):
        load_text(path.read_text(), env={})


async def test_a_custom_state_name_no_run_has_had_is_noted_where_the_server_can_say(
    settings: ConnectionSettings, seeder: Seeder, server_minor: tuple[int, int]
) -> None:
    flow = seeder.flow()
    (waiting,) = seeder.runs(1, flow, "Scheduled")
    seeder.set_state(waiting["id"], "PAUSED", f"Awaiting{flow['name']}")
    text = (
        "version: 1\n"
        "steps:\n"
        "  - name: approvals\n"
        "    select:\n"
        f"      flows: {flow['name']}\n"
        f"      state: {{name: [Awaiting{flow['name']}, Awaitng{flow['name']}], custom: true}}\n"
        "    action: cancel\n"
    )
    plan = await _plan(settings, text)
    assert _ids(plan) == {waiting["id"]}
    if server_minor < (3, 9):  # no /observed-states (new in 3.9): nothing said
        assert not [n for n in plan.notes if "has been in a state" in n]
        return
    column = text.splitlines()[5].index(f"Awaitng{flow['name']}") + 1
    assert plan.notes[0] == (
        f"p.yaml:6:{column}: steps[0].select.state.name[1]: no run on {settings.display_url} has"
        f" been in a state named 'Awaitng{flow['name']}' (its retained history); did you"
        f" mean 'Awaiting{flow['name']}'?"
    )


@pytest.mark.parametrize("share", ["most", "less"])
async def test_a_selection_that_is_most_of_its_window_is_read_by_the_window_alone(
    settings: ConnectionSettings, seeder: Seeder, monkeypatch: pytest.MonkeyPatch, share: str
) -> None:
    """A selection that is most (80%) of the runs in its expected start window is read by
    the window alone (SQLite sorts every page of a state filter; a range on the expected
    start costs the same wherever it starts), and runner applies the rest of the selection
    itself: the plan holds exactly the runs the selection means, read either way."""
    monkeypatch.setattr(observe_module, "WIDE_MIN_RUNS", 5)  # 20,000 outside this test
    flow, other = seeder.flow(), seeder.flow()
    start = datetime(2090, 1, 1, tzinfo=timezone.utc) + timedelta(
        days=random.randrange(3000), seconds=random.randrange(86_400)
    )

    def at(i: int) -> datetime:
        return start + timedelta(minutes=i)

    wanted = {seeder.run(flow, "Scheduled", scheduled=at(i))["id"] for i in range(8)}
    seeder.run(other, "Scheduled", scheduled=at(8))  # another flow
    seeder.run(flow, "Late", scheduled=at(9))  # another state name, the same type
    if share == "less":
        for i in range(10, 13):
            seeder.run(other, "Scheduled", scheduled=at(i))
    seeder.run(flow, "Scheduled", scheduled=at(60 * 24))  # outside the window
    window = f"{{after: '{at(0).isoformat()}', before: '{at(30).isoformat()}'}}"
    plan = await _plan(
        settings,
        "version: 1\nsteps:\n  - name: s\n"
        f"    select: {{flows: [{flow['name']}], state: {{name: Scheduled}},"
        f" expected_start: {window}}}\n"
        "    action: delete\n",
    )
    assert _ids(plan) == wanted
    wide = [n for n in plan.notes if "read by its expected start window alone" in n]
    if share == "most":
        assert wide == [
            "step 's': read by its expected start window alone, the selection being most of"
            " it (the server's own filter sorts every page on SQLite); runner applied the"
            " rest of select itself: read 10 runs, kept 8"
        ]
    else:
        assert wide == []


async def _read_both_ways(
    settings: ConnectionSettings, monkeypatch: pytest.MonkeyPatch, select: str
) -> dict[str, set[str]]:
    """The names of the runs a delete step with ``select`` plans, read by the whole filter
    ("narrow") and read wide (forced: no count decides)."""
    text = f"version: 1\nsteps:\n  - name: s\n    select: {select}\n    action: delete\n"
    planned: dict[str, set[str]] = {}
    for way, least in (("narrow", 10**15), ("wide", 0)):
        monkeypatch.setattr(observe_module, "WIDE_MIN_RUNS", least)
        monkeypatch.setattr(observe_module, "WIDE_SHARE", 0.0)
        try:
            plan = await _plan(settings, text)
        except SelectionError as exc:
            assert "which does not match select.state.type" in str(exc)
            planned[way] = {"(refused)"}
            continue
        wide = any("read by its expected start window alone" in n for n in plan.notes)
        assert wide == (way == "wide"), plan.notes
        planned[way] = {c.run.name for c in plan.steps[0].changes}
    return planned


@pytest.mark.parametrize(
    "case",
    [
        "name_like",
        "deployment_like",
        "queue deleted",
        "no state",
        "state columns say Completed",
        "state columns say Scheduled",
        "tags, parameters",
    ],
)
async def test_the_wide_read_plans_what_the_whole_filter_plans(
    settings: ConnectionSettings,
    seeder: Seeder,
    prefect_server: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """Where runner's own check could be looser than the server's filter, the wide read
    keeps the filter on the server (a pattern: SQLite folds the case of ASCII letters only;
    a queue: the server follows the run's link, the run keeps a deleted queue's name) or
    checks as the server does (a run without a state matches no state filter). Found by an
    adversary round: each case planned one run more read wide. A run whose state columns
    (what the server's filter reads) and state record disagree (a database edit) is left out,
    or stops the plan, as in the narrow read."""
    flow = seeder.flow()
    start = datetime(2090, 1, 1, tzinfo=timezone.utc) + timedelta(
        days=random.randrange(3000), seconds=random.randrange(86_400)
    )
    window = (
        f"{{after: '{start.isoformat()}', before: '{(start + timedelta(hours=1)).isoformat()}'}}"
    )
    tag = unique("")

    def at(minute: int) -> datetime:
        return start + timedelta(minutes=minute)

    if case == "name_like":
        for i in range(3):
            seeder.run(flow, "Scheduled", scheduled=at(i), name=f"strasse-{i}")
        seeder.run(flow, "Scheduled", scheduled=at(9), name="Straße-odd")
        select = f"{{flows: [{flow['name']}], name_like: strasse, expected_start: {window}}}"
    elif case == "deployment_like":
        good = seeder.deployment(flow, f"strasse{tag}")
        odd = seeder.deployment(flow, f"Straße{tag}")
        for i in range(3):
            seeder.run(flow, "Scheduled", deployment=good, scheduled=at(i), name=f"good-{i}")
        seeder.run(flow, "Scheduled", deployment=odd, scheduled=at(9), name="odd")
        select = (
            f"{{flows: [{flow['name']}], deployment_like: strasse{tag}, expected_start: {window}}}"
        )
    elif case == "queue deleted":
        queue = unique("crit")
        pool_a, pool_b = seeder.work_pool(), seeder.work_pool()
        seeder.work_queue(pool_a["name"], queue)
        seeder.work_queue(pool_b["name"], queue)
        dep_a = seeder.deployment(flow, work_pool=pool_a["name"], work_queue=queue)
        dep_b = seeder.deployment(flow, work_pool=pool_b["name"], work_queue=queue)
        seeder.run(flow, "Scheduled", deployment=dep_a, scheduled=at(9), name="in-deleted-queue")
        for i in range(3):
            seeder.run(flow, "Scheduled", deployment=dep_b, scheduled=at(i), name=f"inq-{i}")
        seeder._call("DELETE", f"work_pools/{pool_a['name']}/queues/{queue}")
        select = f"{{flows: [{flow['name']}], work_queues: [{queue}], expected_start: {window}}}"
    elif case == "no state":
        for i in range(3):
            seeder.run(flow, "Scheduled", scheduled=at(i), name=f"s-{i}")
        template = seeder.run(flow, "Scheduled", scheduled=at(9), name="template")
        db = prefect_server.home / "prefect.db"
        (clone,) = clone_runs_at(db, template["id"], [timedelta(seconds=1)], name_prefix="none")
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection, connection:
            connection.execute(
                "UPDATE flow_run SET state_id = NULL, state_type = NULL, state_name = NULL"
                " WHERE id = ?",
                (clone,),
            )
        select = (
            f"{{flows: [{flow['name']}], state: {{not_type: [COMPLETED]}},"
            f" expected_start: {window}}}"
        )
    elif case.startswith("state columns"):
        for i in range(3):
            seeder.run(flow, "Scheduled", scheduled=at(i), name=f"s-{i}")
        record = "Scheduled" if case.endswith("Completed") else "Completed"
        odd = seeder.run(flow, record, scheduled=at(9), name="odd")
        column = ("COMPLETED", "Completed") if record == "Scheduled" else ("SCHEDULED", "Scheduled")
        db = prefect_server.home / "prefect.db"
        with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection, connection:
            connection.execute(
                "UPDATE flow_run SET state_type = ?, state_name = ?, expected_start_time = ?"
                " WHERE id = ?",
                (*column, at(9).strftime("%Y-%m-%d %H:%M:%S.%f"), odd["id"]),
            )
        select = (
            f"{{flows: [{flow['name']}], state: {{type: [SCHEDULED]}}, expected_start: {window}}}"
        )
    else:
        for i in range(4):
            seeder.run(
                flow,
                "Scheduled",
                scheduled=at(i),
                name=f"t-{i}",
                tags=["a"] if i % 2 else ["b", "keep"],
                parameters={"n": i % 3},
            )
        select = (
            f"{{flows: [{flow['name']}], tags: {{any: [a, b]}}, parameters: {{n: 1}},"
            f" expected_start: {window}, exclude: [{{tags: {{any: [keep]}}}}]}}"
        )
    planned = await _read_both_ways(settings, monkeypatch, select)
    assert planned["wide"] == planned["narrow"]
    assert planned["narrow"], "the case selects something"
