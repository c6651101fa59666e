"""Time and peak memory of `runner plan` over a selection of N runs on a real local server.

    .venv/bin/python bench/plan_scale.py [--runs 20000] [--repeat 3]

Starts a Prefect server (the test suite's version, SQLite), seeds N late runs of one
deployment (one through the API, the rest cloned in the database: see seed_db.py), then runs
`runner plan` on a playbook that selects all of them, in a fresh process each time, measuring
wall time and the process's peak RSS. Writes bench/results/plan_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.prefect_server import start_server  # noqa: E402
from tests.support.seed import Seeder  # noqa: E402
from tests.support.seed_db import clone_runs  # noqa: E402

PLAYBOOK = """version: 1
name: plan-scale
steps:
  - name: delete every late run of the bench deployment
    select:
      deployments: bench/bench-deployment
      state: {name: Late}
    action: delete
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = start_server()
    try:
        seeder = Seeder(server.api_url)
        flow = seeder.flow("bench")
        dep = seeder.deployment(flow, "bench-deployment")
        template = seeder.run(flow, "Late", deployment=dep)
        started = time.perf_counter()
        clone_runs(server.home / "prefect.db", template["id"], args.runs - 1)
        seeded_in = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            playbook = Path(tmp) / "plan-scale.yaml"
            playbook.write_text(PLAYBOOK)
            runner = str(Path(sys.executable).parent / "runner")
            env = {**os.environ, "PREFECT_API_URL": server.api_url}
            walls, peaks = [], []
            for _ in range(args.repeat):
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                t0 = time.perf_counter()
                result = subprocess.run(
                    [
                        "/usr/bin/time",
                        "-f",
                        "%M",
                        runner,
                        "plan",
                        str(playbook),
                        "--format",
                        "json",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                walls.append(time.perf_counter() - t0)
                if result.returncode != 0:
                    raise SystemExit(result.stderr)
                peaks.append(int(result.stderr.strip().splitlines()[-1]) / 1024)
                del before
                planned = json.loads(result.stdout)["steps"][0]["selected"]
        out = {
            "runs": args.runs,
            "planned": planned,
            "repeat": args.repeat,
            "wall_s": {
                "median": round(statistics.median(walls), 2),
                "min": round(min(walls), 2),
                "max": round(max(walls), 2),
            },
            "peak_rss_mb": {
                "median": round(statistics.median(peaks), 1),
                "max": round(max(peaks), 1),
            },
            "runs_per_s": round(args.runs / statistics.median(walls)),
            "seeded_in_s": round(seeded_in, 1),
            "server": "Prefect (test suite version), SQLite, local",
        }
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / "plan_scale.json").write_text(
            json.dumps(out, indent=2) + "\n"
        )
        print(json.dumps(out, indent=2))
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)


if __name__ == "__main__":
    main()
