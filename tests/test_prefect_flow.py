"""The ``runner[prefect]`` flow, run for real: in the Prefect server's own venv, against it.

The flow checks a playbook out of a git repository, applies it, publishes a markdown artifact
and returns the report; the run applying the playbook never selects itself.
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

pytestmark = [pytest.mark.server, pytest.mark.prefect2]

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
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path
) -> None:
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
