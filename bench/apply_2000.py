"""Wall time and HTTP requests for applying 2,000 changes, bulk against per-run.

    .venv/bin/python bench/apply_2000.py [--runs 2000] [--cases cancel,delete,reschedule,recreate]

One local Prefect server (the test suite's version, SQLite). For each case and strategy the
runs are seeded fresh (one through the API, the rest cloned in the database), then
`runner apply --yes` runs in its own process with `--strategy`. Writes
bench/results/apply_2000.json. The full side-by-side harness (seed recipe, raw ceiling,
PostgreSQL) is a separate benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.prefect_server import start_server  # noqa: E402
from tests.support.seed import Seeder, unique  # noqa: E402
from tests.support.seed_db import clone_runs  # noqa: E402

CASES = {
    # name: (seed state, action, strategies)
    "cancel": ("Running", "cancel", ["per-run", "bulk"]),
    "delete": ("Completed", "delete", ["per-run", "bulk"]),
    "reschedule": ("Late", "{reschedule: {at: now+6h}}", ["per-run", "bulk"]),
    "recreate": ("Late", "{reschedule: {at: now+6h, strategy: recreate}}", ["per-run"]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    server = start_server()
    results = []
    try:
        seeder = Seeder(server.api_url)
        runner = str(Path(sys.executable).parent / "runner")
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "NO_COLOR": "1"}
        for case in args.cases.split(","):
            state, action, strategies = CASES[case]
            for strategy in strategies:
                flow = seeder.flow(unique(f"bench-{case}"))
                dep = seeder.deployment(flow, "d")
                template = seeder.run(flow, state, deployment=dep)
                clone_runs(server.home / "prefect.db", template["id"], args.runs - 1)
                with tempfile.TemporaryDirectory() as tmp:
                    playbook = Path(tmp) / "p.yaml"
                    playbook.write_text(
                        f"version: 1\nname: bench\nguards: {{allow_active: true}}\nsteps:\n"
                        f"  - name: {case}\n    select: {{flows: {flow['name']}}}\n"
                        f"    action: {action}\n"
                    )
                    t0 = time.perf_counter()
                    result = subprocess.run(
                        [
                            runner,
                            "apply",
                            str(playbook),
                            "--yes",
                            "--strategy",
                            strategy,
                            "--state-dir",
                            str(Path(tmp) / "state"),
                            "--report",
                            str(Path(tmp) / "report.json"),
                        ],
                        env=env,
                        capture_output=True,
                        text=True,
                        cwd=tmp,
                    )
                    wall = time.perf_counter() - t0
                    report = Path(tmp) / "report.json"
                    window = (
                        json.loads(report.read_text()).get("read_to_write")
                        if report.exists()
                        else None
                    )
                match = re.search(
                    r"Applied: (\d+) done, (\d+) drifted \(left alone\), (\d+) failed, (\d+) pending"
                    r" in ([\d.]+)s, (\d+) requests",
                    result.stdout,
                )
                if match is None:
                    raise SystemExit(result.stdout[-2000:] + result.stderr[-2000:])
                done, drifted, failed, pending, apply_s, requests = match.groups()
                row = {
                    "case": case,
                    "strategy": strategy,
                    "runs": args.runs,
                    "done": int(done),
                    "drifted": int(drifted),
                    "failed": int(failed),
                    "pending": int(pending),
                    "apply_s": float(apply_s),
                    "wall_s": round(wall, 1),
                    "requests": int(requests),
                    "runs_per_s": round(int(done) / float(apply_s), 1) if float(apply_s) else None,
                    # seconds between runner's read-back of a run and its write (if recorded)
                    "read_to_write": window,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "apply_2000.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
