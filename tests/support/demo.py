"""The demo behind `bash scripts/demo`: a real Prefect server, seeded as in Prefect's own
"reschedule late runs" recipe, the playbook's dry run, the apply, and the result read back.

`bash scripts/demo --keep` leaves the server (with its UI) running afterwards. Ctrl-C, SIGTERM
or SIGHUP, at any point, stop the server and remove the demo's temporary folders.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from tests.support.prefect_server import PrefectServer, start_server
from tests.support.seed import Seeder

ROOT = Path(__file__).resolve().parent.parent.parent
PLAYBOOK = "playbooks/reschedule-late.yaml"
#: One run of etl/nightly in each of these states: none is the playbook's business.
ETL_STATES = ("Late", "Running", "Scheduled", "Completed", "Failed")
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def show(*args: str, env: dict[str, str]) -> int:
    print(f"\n$ runner {' '.join(args)}", flush=True)
    runner = str(Path(sys.executable).parent / "runner")
    return subprocess.run([runner, *args], env=env, cwd=ROOT).returncode


def main() -> None:
    keep = "--keep" in sys.argv
    # SIGTERM and SIGHUP stop the demo as Ctrl-C does, through the clean-up below (by
    # default they end Python at once, and the server, in a session of its own, runs on).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    print(
        "Starting a local Prefect server (the first run installs it: about a minute)...", flush=True
    )
    ui = {"PREFECT_UI_ENABLED": "true", "PREFECT_SERVER_UI_ENABLED": "true"} if keep else {}
    server: PrefectServer | None = None
    state_dir: str | None = None
    exit_code = 0
    try:
        state_dir = tempfile.mkdtemp(prefix="runner-demo-")
        server = start_server(extra_env=ui)  # stops and removes what it started if interrupted
        print(f"Prefect server up at {server.api_url} in {server.startup_seconds:.1f}s")
        seeder = Seeder(server.api_url)
        flow = seeder.flow("healthcheck")
        pool = seeder.work_pool("demo-pool")
        deployment = seeder.deployment(flow, "healthcheck-storage-test", work_pool=pool["name"])
        late = seeder.late_runs(12, flow, deployment=deployment, spread=timedelta(minutes=7))
        seeder.run(flow, "Running", deployment=deployment)
        seeder.run(flow, "Scheduled", deployment=deployment)
        etl = seeder.flow("etl")
        nightly = seeder.deployment(etl, "nightly", work_pool=pool["name"])
        for state in ETL_STATES:
            seeder.run(etl, state, deployment=nightly)
        etl_before = {(r["id"], r["state_name"]) for r in seeder.runs_of_flow(etl)}
        print(
            f"Seeded {len(late)} late runs of healthcheck/healthcheck-storage-test, one running"
            f" and one scheduled run of it, and {len(etl_before)} runs of etl/nightly, one"
            f" each {', '.join(ETL_STATES[:-1])} and {ETL_STATES[-1]}."
        )
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "NO_COLOR": "1"}
        show("apply", PLAYBOOK, "--dry-run", env=env)
        code = show("apply", PLAYBOOK, "--yes", "--state-dir", state_dir, env=env)
        if code != 0:
            raise SystemExit(f"the apply exited {code}")
        print("\nRead back from the server: runs of healthcheck/healthcheck-storage-test")
        runs = sorted(
            (r for r in seeder.runs_of_flow(flow)),
            key=lambda r: r["next_scheduled_start_time"] or r["expected_start_time"],
        )
        for r in runs:
            when = r["next_scheduled_start_time"] or r["expected_start_time"]
            message = (r.get("state") or {}).get("message") or ""
            print(f"  {r['name']:<24} {r['state_name']:<10} next start {when[:19]}Z  {message}")
        gone = {r["id"] for r in late} - {r["id"] for r in runs}
        etl_after = {(r["id"], r["state_name"]) for r in seeder.runs_of_flow(etl)}
        untouched = "untouched" if etl_after == etl_before else "CHANGED"
        print(
            f"  ({len(gone)} late runs deleted; the {len(etl_before)} etl/nightly runs {untouched})"
        )
        if etl_after != etl_before:
            raise SystemExit("runs outside the playbook's selection changed")
        show("apply", PLAYBOOK, "--yes", "--state-dir", state_dir, env=env)
        ui_url = server.api_url.removesuffix("/api")
        if keep:
            print(
                f"\nThe server keeps running at {ui_url}. Open the Prefect UI there to see the"
                " rescheduled runs and their state messages (Runs, filtered on"
                " healthcheck-storage-test); PREFECT_API_URL="
                f"{server.api_url} points runner or prefect at it. Ctrl-C stops it."
            )
            try:
                assert server.process is not None
                server.process.wait()
            except KeyboardInterrupt:  # how --keep is ended: not a failure
                pass
        else:
            print(
                f"\nThe server ran at {server.api_url}. To look around in the Prefect UI"
                " (the rescheduled runs and their state messages), run"
                " `bash scripts/demo --keep`: it keeps the server, with its UI, running."
            )
    except KeyboardInterrupt as exc:
        print(f"\nInterrupted ({exc or 'SIGINT'}).", flush=True)
        exit_code = 130
    finally:
        for signum in STOPPING:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        if server is not None:
            server.stop()
            shutil.rmtree(server.home, ignore_errors=True)
            print("Server stopped.", flush=True)
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    if exit_code:
        raise SystemExit(exit_code)


if __name__ == "__main__":
    main()
