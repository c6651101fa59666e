"""Cold start of `runner validate` on the example playbooks (target: under 0.4 s).

    .venv/bin/python bench/validate_cold_start.py [--runs 20]

Each run is a new process, as a user or a pre-commit hook starts it. Prints the median,
the fastest and the slowest wall time, and writes them to bench/results/validate_cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    runner = shutil.which("runner", path=str(Path(sys.executable).parent)) or "runner"
    playbooks = sorted(str(p) for p in (ROOT / "playbooks").glob("*.yaml"))
    command = [runner, "validate", *playbooks]
    subprocess.run(command, check=True, capture_output=True)  # warm the file cache once
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    result = {
        "command": "runner validate playbooks/*.yaml",
        "playbooks": len(playbooks),
        "runs": args.runs,
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "target_s": 0.4,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate_cold_start.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"runner validate ({len(playbooks)} playbooks), {args.runs} cold starts:"
        f" median {result['median_s']}s, min {result['min_s']}s, max {result['max_s']}s"
        f" (target {result['target_s']}s)"
    )


if __name__ == "__main__":
    main()
