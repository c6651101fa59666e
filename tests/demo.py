"""The demo behind `bash scripts/demo`: a real Prefect server, seeded, and runner against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.prefect_server import start_server
from tests.seed import Seeder

ROOT = Path(__file__).resolve().parent.parent


def show(*args: str, env: dict[str, str]) -> None:
    print(f"\n$ runner {' '.join(args)}", flush=True)
    subprocess.run([str(Path(sys.executable).parent / "runner"), *args], env=env, cwd=ROOT)


def main() -> None:
    keep = "--keep" in sys.argv
    print("Starting a local Prefect server (first run installs it: about a minute)...", flush=True)
    server = start_server()
    try:
        print(f"Prefect server up at {server.api_url} in {server.startup_seconds:.1f}s")
        seeder = Seeder(server.api_url)
        flow = seeder.flow("healthcheck")
        pool = seeder.work_pool("demo-pool")
        deployment = seeder.deployment(flow, "healthcheck-storage-test", work_pool=pool["name"])
        late = seeder.late_runs(12, flow, deployment=deployment)
        other = seeder.deployment(seeder.flow("etl"), "nightly", work_pool=pool["name"])
        for state in ("Running", "Scheduled", "Completed", "Failed"):
            seeder.run({"id": other["flow_id"]}, state, deployment=other)
        print(f"Seeded {len(late)} late runs of healthcheck/healthcheck-storage-test, plus others.")
        env = {**os.environ, "PREFECT_API_URL": server.api_url}
        show("doctor", env=env)
        show(
            "validate",
            *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yaml")),
            env=env,
        )
        if keep:
            print(f"\nThe server keeps running: PREFECT_API_URL={server.api_url}. Ctrl-C stops it.")
            try:
                assert server.process is not None
                server.process.wait()
            except KeyboardInterrupt:
                pass
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
        print("Server stopped.")


if __name__ == "__main__":
    main()
