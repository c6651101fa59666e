"""An apply of 100,000 bulk deletes, killed at ~90% and resumed: peak memory, what the resume
spends before it asks the server anything, and the checkpoint's size per change.

    .venv/bin/python bench/big_apply.py [--backend sqlite|postgresql] [--runs 100000] \
        [--kill-at 0.9]

Starts a Prefect server (the test suite's version; PostgreSQL made by bench/postgres.py),
clones ``--runs`` finished runs of one flow in the database, and runs ``runner apply`` on a
playbook that deletes them (``archive: false``, ``--strategy bulk``) as its own process
(peak RSS from ``os.wait4``, as bench/harness.py measures). When the checkpoint holds
``--kill-at`` of the changes, the apply is killed with SIGKILL (a crash: nothing is flushed
on the way out), then the same command is run again and resumes. Measured: both parts' wall
time and peak RSS; for the resume, the seconds from its start to its first request and to
its first write (reading the saved plan and the checkpoint happen before either); the
checkpoint's bytes per change; and the server's count afterwards (0 left, none deleted
twice: a bulk delete of an absent run is not an error, so the count is what tells). Writes
bench/results/big_apply.json. Not part of CI; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import LAUNCHER, Backend  # noqa: E402

PLAYBOOK = """version: 1
name: big-delete
guards: {{max_affected: {runs}}}
steps:
  - name: delete the finished runs of the bench flow
    select: {{flows: {flow}, state: {{type: COMPLETED}}}}
    action: {{delete: {{archive: false}}}}
"""


def checkpoint_lines(state: Path) -> int:
    total = 0
    for journal in state.glob("*/checkpoint.jsonl"):
        with open(journal, "rb") as handle:
            total += sum(1 for _ in handle) - 1  # the header
    return max(total, 0)


def child_of(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def run(
    command: list[str], env: dict[str, str], tmp: Path, *, kill_at: int | None, state: Path
) -> dict[str, Any]:
    """One apply as its own process (from the launcher, for its own peak RSS); killed with
    SIGKILL once the checkpoint holds ``kill_at`` changes."""
    usage_file, first_file = tmp / f"usage-{time.monotonic_ns()}", tmp / "first"
    write_file = tmp / "first-write"
    first_file.unlink(missing_ok=True)
    write_file.unlink(missing_ok=True)
    env = {
        **env,
        "BENCH_FIRST_FILE": str(first_file),
        "BENCH_FIRST_WRITE_FILE": str(write_file),
        "BENCH_COUNT_FILE": str(tmp / "count"),
    }
    started_wall, started = time.time(), time.perf_counter()
    with open(tmp / "out.txt", "w") as out, open(tmp / "err.txt", "w") as err:
        launcher = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", LAUNCHER, str(usage_file), *command],
            env=env,
            stdout=out,
            stderr=err,
            cwd=tmp,
        )
        killed = False
        while launcher.poll() is None:
            if kill_at is not None and not killed and checkpoint_lines(state) >= kill_at:
                child = child_of(launcher.pid)
                if child is not None:
                    os.kill(child, signal.SIGKILL)
                    killed = True
            time.sleep(0.05)
    wall = time.perf_counter() - started
    usage = json.loads(usage_file.read_text())
    first = float(first_file.read_text()) - started_wall if first_file.exists() else None
    write = float(write_file.read_text()) - started_wall if write_file.exists() else None
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage["rss_kb"] / 1024, 1),
        "cpu_s": round(usage["cpu"], 1),
        "exit": usage["code"],
        "killed": killed,
        "first_request_s": round(first, 2) if first is not None else None,
        "first_write_s": round(write, 2) if write is not None else None,
        "requests": int((tmp / "count").read_text()) if (tmp / "count").exists() else None,
        "stderr_tail": (tmp / "err.txt").read_text()[-400:],
        "stdout_tail": (tmp / "out.txt").read_text()[-600:],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--kill-at", type=float, default=0.9)
    args = parser.parse_args()
    backend = Backend(args.backend)
    try:
        flow, _ = backend.seed("Completed", args.runs, False)
        with tempfile.TemporaryDirectory(prefix="runner-big-apply-") as tmp_name:
            tmp = Path(tmp_name)
            state = tmp / "state"
            playbook = tmp / "big-delete.yaml"
            playbook.write_text(PLAYBOOK.format(runs=args.runs, flow=flow["name"]))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_API_URL=backend.server.api_url, NO_COLOR="1", PYTHONPATH=str(ROOT))
            command = [
                sys.executable,
                "-c",
                "import bench.counting, sys; from runner.cli import main;"
                " sys.argv = ['runner', *sys.argv[1:]]; main()",
                "apply",
                str(playbook),
                "--yes",
                "--strategy",
                "bulk",
                "--no-events",
                "--state-dir",
                str(state),
            ]
            kill_at = int(args.runs * args.kill_at)
            first = run(command, env, tmp, kill_at=kill_at, state=state)
            at_kill = checkpoint_lines(state)
            left_at_kill = len(backend.runs(flow))
            print(json.dumps({"killed run": first, "checkpoint lines": at_kill}), flush=True)
            resumed = run(command, env, tmp, kill_at=None, state=state)
            journals = list(state.glob("*/checkpoint.jsonl"))
            journal_bytes = sum(j.stat().st_size for j in journals)
            lines = checkpoint_lines(state)
            left = len(backend.runs(flow))
        out = {
            "backend": args.backend,
            "prefect": backend.version,
            "runs": args.runs,
            "killed": first,
            "changes in the checkpoint when killed": at_kill,
            "runs left on the server when killed": left_at_kill,
            "resumed": resumed,
            "checkpoint lines": lines,
            "checkpoint bytes": journal_bytes,
            "checkpoint bytes per change": round(journal_bytes / max(lines, 1), 1),
            "runs left on the server": left,
        }
    finally:
        backend.close()
    print(json.dumps(out, indent=2))
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"big_apply-{args.backend}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
