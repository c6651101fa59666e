"""The ``runner[prefect]`` flow, run for real: in the Prefect server's own venv, against it.

The flow checks a playbook out of a git repository, applies it, publishes a markdown artifact
and returns the report; the run applying the playbook never selects itself. A run that does
not finish is Failed with the reason as its state message; the flow's deployments name it by
its module. (On a worker: tests/test_prefect_worker.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.prefect_server import ROOT, PrefectServer
from tests.support.seed import Seeder, unique

pytestmark = [pytest.mark.server, pytest.mark.prefect2_nightly]

FLOW_NAME = "runner-apply-playbook"


def git_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository holding ``files`` on branch ``main``; returns its file:// URL."""
    path.mkdir()
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "playbooks"], check=True)
    return path.as_uri()


def run_flow(
    server: PrefectServer, tmp_path: Path, **parameters: Any
) -> subprocess.CompletedProcess[str]:
    """Call the flow in a fresh interpreter of the Prefect venv, pointed at the test server."""
    script = textwrap.dedent(
        """
        import json, sys
        from runner.prefect_flow import apply_playbook
        state = apply_playbook(**json.loads(sys.argv[1]), return_state=True)
        print("FLOW-STATE " + state.type.value)
        if state.is_completed():
            print("REPORT " + json.dumps(state.result()))
        """
    )
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=server.api_url,
        PREFECT_HOME=str(home),
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
    )
    return subprocess.run(
        [str(server.venv / "bin" / "python"), "-c", script, json.dumps(parameters)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


def flow_runs_of(api_url: str, flow_name: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{api_url}/flow_runs/filter",
        json={"flows": {"name": {"any_": [flow_name]}}, "limit": 200},
    )
    response.raise_for_status()
    return list(response.json())


def artifacts(api_url: str, key: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{api_url}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}
    )
    response.raise_for_status()
    return list(response.json())


def test_flow_applies_a_playbook_from_git_and_publishes_an_artifact(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path
) -> None:
    old = seeder.flow(unique("old-history"))
    stuck = seeder.flow(unique("stuck"))
    completed = seeder.runs(4, old, "Completed")
    kept = seeder.run(old, "Failed")
    running = seeder.run(stuck, "Running")
    name = unique("nightly-cleanup")
    playbook = f"""\
        version: 1
        name: {name}
        guards: {{allow_active: true}}
        steps:
          - name: delete finished history
            select: {{flows: {old["name"]}, state: {{type: COMPLETED}}}}
            action: delete
          - name: cancel whatever is running, this flow's own runs included
            select:
              flows: [{stuck["name"]}, {FLOW_NAME}]
              state: {{type: RUNNING}}
            action: {{cancel: {{message: stuck}}}}
        """
    url = git_repo(tmp_path / "ops", {"playbooks/cleanup.yaml": textwrap.dedent(playbook)})

    result = run_flow(
        prefect_server,
        tmp_path,
        playbook="playbooks/cleanup.yaml",
        repository=url,
        ref="main",
        state_dir=str(tmp_path / "state"),
    )

    assert "FLOW-STATE COMPLETED" in result.stdout, result.stdout + result.stderr
    report = json.loads(result.stdout.split("REPORT ", 1)[1])
    assert report["counts"]["done"] == 5
    assert report["counts"]["failed"] == 0
    assert report["exit_code"] == 0
    assert seeder.read_runs(r["id"] for r in completed) == []
    assert seeder.read_run(kept["id"])["state_name"] == "Failed"  # type: ignore[index]
    assert seeder.read_run(running["id"])["state_type"] == "CANCELLING"  # type: ignore[index]
    # The flow run that applied the playbook was Running and matched step 2: not selected.
    [own] = [
        r
        for r in flow_runs_of(prefect_server.api_url, FLOW_NAME)
        if r["parameters"].get("repository") == url
    ]
    assert own["state_type"] == "COMPLETED"
    assert own["id"] not in {r["run_id"] for r in report["runs"]}

    [artifact] = artifacts(prefect_server.api_url, f"runner-{name}")
    assert artifact["type"] == "markdown"
    assert artifact["flow_run_id"] == own["id"]
    assert "delete finished history" in artifact["data"]
    assert "**Applied**: 5 done, 0 drifted (left alone), 0 failed, 0 pending" in artifact["data"]


def test_flow_fails_when_a_guard_refuses_and_changes_nothing(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    """The refusal is the Failed state's message, what the UI and an automation on the
    failure see (not only a line of the logs)."""
    old = seeder.flow(unique("old-history"))
    completed = seeder.runs(3, old, "Completed")
    name = unique("careful-cleanup")
    path = tmp_path / "cleanup.yaml"
    path.write_text(
        f"version: 1\nname: {name}\nguards: {{max_affected: 2}}\nsteps:\n"
        f"  - name: delete history\n    select: {{flows: {old['name']}}}\n    action: delete\n"
    )

    result = run_flow(prefect_server, tmp_path, playbook=str(path))

    assert "FLOW-STATE FAILED" in result.stdout, result.stdout + result.stderr
    assert len(seeder.read_runs(r["id"] for r in completed)) == 3
    [artifact] = artifacts(prefect_server.api_url, f"runner-{name}")
    assert "the playbook would change 3 runs, more than its max_affected (2)" in artifact["data"]
    assert "**Nothing was applied**" in artifact["data"]
    assert own_run(prefect_server.api_url, str(path))["state"]["message"] == failed_with(
        is_prefect2,
        f"PlaybookApplyFailed: {name}: refused, nothing was applied: the playbook would change"
        " 3 runs, more than its max_affected (2)",
    )


def own_run(api_url: str, playbook: str) -> dict[str, Any]:
    """The flow run that applied ``playbook`` (by its parameter), as the server holds it."""
    [run] = [r for r in flow_runs_of(api_url, FLOW_NAME) if r["parameters"]["playbook"] == playbook]
    return run


def failed_with(is_prefect2: bool, text: str) -> str:
    """The Failed state's message the flow's exception makes (Prefect's words, then ours)."""
    return f"Flow run encountered an exception{'.' if is_prefect2 else ':'} {text}"


def test_flow_fails_with_the_failed_changes_and_their_reasons(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    """Changes the server rejects: the Failed state's message counts them and gives the
    first three with the server's reason, in the plan's order; the logs and the artifact
    have the rest."""
    flow = seeder.flow(unique("cancelling"))
    runs = [seeder.run(flow, "Cancelling", name=f"{c}-{unique('run')}") for c in "abcd"]
    name = unique("fail-the-cancelling")
    path = tmp_path / "fail.yaml"
    path.write_text(
        f"version: 1\nname: {name}\nsteps:\n  - name: fail them\n"
        f"    select: {{flows: {flow['name']}, sort: NAME_ASC}}\n"
        "    action: {set_state: {type: FAILED}}\n"
    )

    result = run_flow(prefect_server, tmp_path, playbook=str(path))

    assert "FLOW-STATE FAILED" in result.stdout, result.stdout + result.stderr
    reason = "REJECT: Cannot transition flows that are cancelling to a state other than Cancelled."
    first = "; ".join(f"{r['name']} ({r['id']}): {reason}" for r in runs[:3])
    assert own_run(prefect_server.api_url, str(path))["state"]["message"] == failed_with(
        is_prefect2,
        f"PlaybookApplyFailed: {name}: 4 failed of 4 changes (0 done, 0 drifted): {first};"
        " and 1 more in the flow run's logs",
    )
    [artifact] = artifacts(prefect_server.api_url, f"runner-{name}")
    assert f"| {runs[3]['name']} | `{runs[3]['id']}` | failed | {reason} |" in artifact["data"]
    assert {r["state_type"] for r in seeder.read_runs(r["id"] for r in runs)} == {"CANCELLING"}


def test_flow_fails_with_the_playbooks_problems_where_its_repository_has_them(
    prefect_server: PrefectServer, tmp_path: Path, is_prefect2: bool
) -> None:
    """A playbook that does not load: the message is its problems at file:line:col, the file
    named as in its repository (not the flow's temporary checkout), every problem on one line."""
    playbook = "version: 1\nname: broken\nsteps:\n  - name: x\n    select: {statee: {}}\n"
    url = git_repo(tmp_path / "ops", {"playbooks/broken.yaml": playbook})

    result = run_flow(prefect_server, tmp_path, playbook="playbooks/broken.yaml", repository=url)

    assert "FLOW-STATE FAILED" in result.stdout, result.stdout + result.stderr
    [run] = [
        r
        for r in flow_runs_of(prefect_server.api_url, FLOW_NAME)
        if r["parameters"].get("repository") == url
    ]
    assert run["state"]["message"] == failed_with(
        is_prefect2,
        "PlaybookApplyFailed: playbooks/broken.yaml:4:5: steps[0]: missing required key"
        " 'action'; playbooks/broken.yaml:5:14: steps[0].select.statee: unknown key 'statee';"
        " did you mean 'state'?",
    )


def test_a_deployment_of_the_flow_names_it_by_its_module(
    prefect_server: PrefectServer, tmp_path: Path, is_prefect2: bool
) -> None:
    """``serve``, ``deploy`` and ``to_deployment`` record ``runner.prefect_flow.apply_playbook``,
    which resolves wherever runner is installed. Prefect's default, a file path relative to
    the directory they run in, named a file under the venv from anywhere else (3.x) or raised
    (2.x); a caller's own ``entrypoint_type`` still wins."""
    script = textwrap.dedent(
        """
        from prefect.deployments.runner import EntrypointType
        from runner.prefect_flow import apply_playbook

        print(apply_playbook.to_deployment(name="a").entrypoint)
        print(apply_playbook.with_options(retries=1).to_deployment(name="b").entrypoint)
        try:  # Prefect's default, asked for
            chosen = apply_playbook.to_deployment(name="c", entrypoint_type=EntrypointType.FILE_PATH)
            print(chosen.entrypoint)
        except ValueError as error:
            print(type(error).__name__)
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server.api_url, PREFECT_HOME=str(tmp_path / "home"))
    env.update(PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [str(prefect_server.venv / "bin" / "python"), "-c", script],
        env=env,
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=300,
    )
    venv_file = os.path.relpath(ROOT / "runner" / "prefect_flow.py", elsewhere)
    assert result.stdout.splitlines() == [
        "runner.prefect_flow.apply_playbook",
        "runner.prefect_flow.apply_playbook",
        "ValueError" if is_prefect2 else f"{venv_file}:apply_playbook",
    ], result.stdout + result.stderr
