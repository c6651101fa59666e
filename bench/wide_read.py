"""`runner plan` read wide and read narrow, side by side, as one flow's history grows (SQLite).

    .venv/bin/python bench/wide_read.py [--sizes 10000,100000,500000] [--narrow-max 500000]

Starts a Prefect server (the test suite's version, SQLite), grows one flow's Completed runs
to each size (one run through the API, the rest cloned in the database, a second apart),
and at each size runs `runner plan` on a playbook selecting `{flows: <it>, state: {type:
COMPLETED}}` (the harness's plan curve) twice, each in a fresh process: as runner does
(the selection is all of its window, so it is read *wide*: the server sent no filter but the
window, see runner/selection.py `wide_query`), and with the wide read switched off (the
server sent the whole filter, read by keyset as before). Measures wall time, runs/s and peak
RSS, checks both plans selected every run, and writes bench/results/wide_read.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.prefect_server import start_server  # noqa: E402
from tests.support.seed import Seeder  # noqa: E402
from tests.support.seed_db import clone_runs_at  # noqa: E402

#: `runner plan` with the wide read switched off: the threshold out of reach.
NARROW = (
    "import sys, runner.observe as o, runner.cli as c; o.WIDE_MIN_RUNS = 10**15;"
    " sys.argv[0] = 'runner'; sys.exit(c.main())"
)


def plan_once(mode: str, playbook: Path, api_url: str) -> dict[str, Any]:
    python = str(Path(sys.executable))
    command = (
        [str(Path(sys.executable).parent / "runner")] if mode == "wide" else [python, "-c", NARROW]
    )
    env = {**os.environ, "PREFECT_API_URL": api_url}
    started = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command, "plan", str(playbook), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    document = json.loads(result.stdout)
    notes = " ".join(document.get("notes") or [])
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(int(result.stderr.strip().splitlines()[-1]) / 1024, 1),
        "selected": document["steps"][0]["selected"],
        "read_wide": "read by its expected start window alone" in notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,500000")
    parser.add_argument(
        "--narrow-max", type=int, default=500_000, help="the largest size read narrow too"
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    server = start_server()
    rows: list[dict[str, Any]] = []
    try:
        seeder = Seeder(server.api_url)
        flow = seeder.flow("wide-read")
        template = seeder.run(flow, "Completed")
        have = 1
        with tempfile.TemporaryDirectory() as tmp:
            playbook = Path(tmp) / "wide-read.yaml"
            playbook.write_text(
                "version: 1\nname: wide-read\nsteps:\n  - name: completed\n"
                f"    select: {{flows: {flow['name']}, state: {{type: COMPLETED}}}}\n"
                "    action: delete\n"
            )
            for size in sizes:
                shifts = [timedelta(seconds=-(have + i)) for i in range(size - have)]
                clone_runs_at(server.home / "prefect.db", template["id"], shifts)
                have = size
                for mode in ("wide", "narrow"):
                    if mode == "narrow" and size > args.narrow_max:
                        continue
                    row = {"runs": size, "mode": mode, **plan_once(mode, playbook, server.api_url)}
                    row["runs_per_s"] = round(size / row["wall_s"], 1)
                    assert row["selected"] == size, row
                    assert row["read_wide"] == (mode == "wide" and size >= 20_000), row
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
    out = {"server": "Prefect (test suite version), SQLite, local", "rows": rows}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "wide_read.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
