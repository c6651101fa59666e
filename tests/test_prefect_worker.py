"""Playbooks on a Prefect worker, end to end: ``docs/examples/prefect.yaml`` deployed with
``prefect deploy``, and a second deployment made with ``apply_playbook.deploy``, both to a
process work pool; a real ``prefect worker`` runs their scheduled runs.

The worker and the deploys run in the Prefect server's venv, where runner is importable
(``PYTHONPATH``) as it would be installed on a worker machine. Nothing is built or shipped:
the deployments name the flow by its module, and the flow clones the playbooks' repository.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prefect_server import ROOT, PrefectServer
from tests.support.seed import Seeder, unique, utcnow
from tests.test_prefect_flow import failed_with, git_repo

pytestmark = [pytest.mark.server, pytest.mark.prefect2_nightly]

EXAMPLE = ROOT / "docs" / "examples" / "prefect.yaml"
PLACEHOLDER = "https://github.com/acme/prefect-ops.git"
MODULE_ENTRYPOINT = "runner.prefect_flow.apply_playbook"
#: Bound on each wait: a deploy, the worker picking a run up and the run finishing.
TIMEOUT = 120.0


def prefect_env(server: PrefectServer, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Prefect client process of the test server, in its own home."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=server.api_url,
        PREFECT_HOME=str(home),
        PREFECT_CLI_PROMPT="false",
        PREFECT_LOGGING_LEVEL="INFO",
        # runner as a worker machine has it: importable, here from this checkout
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


@contextlib.contextmanager
def worker(server: PrefectServer, pool: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``prefect worker start`` on ``pool``, polling every second; stopped with its runs."""
    log = tmp_path / "worker.log"
    env = prefect_env(
        server,
        tmp_path / "worker-home",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(server.venv / "bin" / "prefect"),
                "worker",
                "start",
                "--pool",
                pool,
                "--type",
                "process",
                "--limit",
                "2",
                "--install-policy",
                "never",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the flow runs it started, if any left
            os.killpg(process.pid, signal.SIGKILL)


def finished(
    seeder: Seeder, run_ids: list[str], process: subprocess.Popen[bytes], log: Path
) -> dict[str, dict[str, Any]]:
    """Each run once it is in a terminal state, waited for with a bound."""
    deadline = time.monotonic() + TIMEOUT
    runs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for run_id in run_ids:
            run = seeder.read_run(run_id) or {}
            if run.get("state_type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                runs[run_id] = run
        if len(runs) == len(run_ids):
            return runs
        assert process.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"runs not finished after {TIMEOUT}s: {runs}\n{log.read_text()[-3000:]}")


def scheduled_now(seeder: Seeder, deployment: dict[str, Any], parameters: dict[str, Any]) -> str:
    """A run of the deployment due now, as its schedule would make it."""
    flow = {"id": deployment["flow_id"]}
    return str(
        seeder.run(flow, deployment=deployment, scheduled=utcnow(), parameters=parameters)["id"]
    )


def deploy_script(pool: str, deployments: dict[str, dict[str, Any]]) -> str:
    """``apply_playbook.deploy`` as docs/ci.md shows it, to the test's pool: each deployment
    by name, with its parameters."""
    calls = "".join(
        f"apply_playbook.deploy(name={name!r}, work_pool_name={pool!r},"
        f" parameters={parameters!r}, ignore_warnings=True)\n"
        for name, parameters in deployments.items()
    )
    return "from runner.prefect_flow import apply_playbook\n" + calls


def failed_event(seeder: Seeder, run_id: str) -> dict[str, Any]:
    """The ``prefect.flow-run.Failed`` event of the run, once the server has stored it."""
    deadline = time.monotonic() + TIMEOUT
    query = {
        "filter": {
            "event": {"name": ["prefect.flow-run.Failed"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        },
        "limit": 1,
    }
    while time.monotonic() < deadline:
        if events := seeder._call("POST", "events/filter", json=query)["events"]:
            return dict(events[0])
        time.sleep(0.5)
    raise AssertionError(f"no prefect.flow-run.Failed event for {run_id} after {TIMEOUT}s")


def deployment(seeder: Seeder, name: str) -> dict[str, Any]:
    return dict(seeder._call("GET", f"deployments/name/runner-apply-playbook/{name}"))


def artifacts(seeder: Seeder, key: str) -> list[dict[str, Any]]:
    return list(
        seeder._call("POST", "artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}})
    )


def test_playbooks_run_on_a_worker_and_a_refusal_fails_the_run_with_its_reason(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    """The example deployment applies its playbook on the worker: the runs it selects are
    deleted, the artifact is on its flow run. The other deployment's guard refuses: its run
    is Failed with the refusal as the state's message, and nothing is deleted."""
    old = seeder.flow(unique("old-history"))
    completed = seeder.runs(3, old, "Completed")
    kept = seeder.run(old, "Failed")
    guarded = seeder.flow(unique("guarded-history"))
    spared = seeder.runs(3, guarded, "Completed")
    cleanup, careful = unique("nightly-cleanup"), unique("careful-cleanup")
    example = EXAMPLE.read_text()
    assert PLACEHOLDER in example
    repo = tmp_path / "prefect-ops"
    url = repo.as_uri()
    git_repo(
        repo,
        {
            "prefect.yaml": example.replace(PLACEHOLDER, url),
            "playbooks/cleanup-old-runs.yaml": textwrap.dedent(
                f"""\
                version: 1
                name: {cleanup}
                steps:
                  - name: delete finished history
                    select: {{flows: {old["name"]}, state: {{type: COMPLETED}}}}
                    action: delete
                """
            ),
            "playbooks/careful.yaml": textwrap.dedent(
                f"""\
                version: 1
                name: {careful}
                guards: {{max_affected: 2}}
                steps:
                  - name: delete history
                    select: {{flows: {guarded["name"]}}}
                    action: delete
                """
            ),
        },
    )
    pool = seeder.work_pool(unique("ops"))["name"]
    from_python = {"careful-cleanup": {"playbook": "playbooks/careful.yaml", "repository": url}}
    if is_prefect2:  # 2.x's `prefect deploy` takes only file:function: the example from Python
        [documented] = yaml.safe_load(example.replace(PLACEHOLDER, url))["deployments"]
        from_python[documented["name"]] = documented["parameters"]
    deploys = tmp_path / "deploys"
    made: list[str] = []
    try:
        # One worker for both runs, started first: it comes up while the deploys run.
        with worker(prefect_server, pool, tmp_path) as process:
            # The example as documented (its placeholder address replaced), to the test's pool
            deploy_yaml = (
                None
                if is_prefect2
                else subprocess.Popen(
                    [
                        str(prefect_server.venv / "bin" / "prefect"),
                        "deploy",
                        "--all",
                        "--pool",
                        pool,
                    ],
                    env=prefect_env(prefect_server, deploys / "yaml"),
                    cwd=repo,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
            # ... and from Python as docs/ci.md shows, away from runner's directory.
            deploy_python = subprocess.run(
                [
                    str(prefect_server.venv / "bin" / "python"),
                    "-c",
                    deploy_script(pool, from_python),
                ],
                env=prefect_env(prefect_server, deploys / "py"),
                cwd=deploys / "py",
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            if deploy_yaml is not None:
                yaml_out, _ = deploy_yaml.communicate(timeout=TIMEOUT)
                assert deploy_yaml.returncode == 0, yaml_out
            assert deploy_python.returncode == 0, deploy_python.stdout + deploy_python.stderr
            nightly = deployment(seeder, "cleanup-old-runs")
            guarded_deployment = deployment(seeder, "careful-cleanup")
            made += [nightly["id"], guarded_deployment["id"]]
            state_dir = str(tmp_path / "state")
            run_ids = [
                scheduled_now(seeder, nightly, {"state_dir": state_dir}),
                scheduled_now(seeder, guarded_deployment, {"state_dir": state_dir}),
            ]
            runs = finished(seeder, run_ids, process, tmp_path / "worker.log")
    finally:
        for deployment_id in made:  # and with them the runs their schedules made
            seeder._call("DELETE", f"deployments/{deployment_id}")

    # Both deployments name the flow by its module: it resolves wherever runner is installed.
    assert nightly["entrypoint"] == MODULE_ENTRYPOINT
    assert guarded_deployment["entrypoint"] == MODULE_ENTRYPOINT
    done, refused = runs[run_ids[0]], runs[run_ids[1]]
    assert done["state_type"] == "COMPLETED", done["state"]
    assert seeder.read_runs(r["id"] for r in completed) == []
    assert seeder.read_run(kept["id"])["state_name"] == "Failed"  # type: ignore[index]
    [artifact] = artifacts(seeder, f"runner-{cleanup}")
    assert artifact["flow_run_id"] == done["id"]
    assert "**Applied**: 3 done, 0 drifted (left alone), 0 failed, 0 pending" in artifact["data"]

    assert refused["state_type"] == "FAILED"
    message = failed_with(
        is_prefect2,
        f"PlaybookApplyFailed: {careful}: refused, nothing was applied:"
        " the playbook would change 3 runs, more than its max_affected (2)",
    )
    assert refused["state"]["message"] == message
    assert len(seeder.read_runs(r["id"] for r in spared)) == 3
    if not is_prefect2:  # what an automation on the failure is given (2.x has no events API)
        assert failed_event(seeder, refused["id"])["resource"]["prefect.state-message"] == message
