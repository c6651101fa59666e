"""What archiving before a delete costs: 500 finished runs deleted on a fresh local server,
without an archive, with one (the default), and with their logs (10 lines a run).

    .venv/bin/python -m bench.archive_cost

One measurement each, in process (runner's executor, not the CLI: no interpreter start-up):
runs/s, requests, and the archive's size. Runs are cloned in the server's SQLite database
(``tests/support/seed_db.py``); their logs are written through the API.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import anyio

from runner.client import PrefectClient
from runner.executor import Executor
from runner.journal import Journal
from runner.loader import load_text
from runner.observe import plan_playbook
from runner.settings import ConnectionSettings
from tests.support.prefect_server import start_server
from tests.support.seed import Seeder
from tests.support.seed_db import clone_runs

RUNS = 500
CASES = {"no archive": "{delete: {archive: false}}", "archive": "delete"}
CASES["archive + logs"] = "{delete: {archive: {logs: true}}}"


async def measure(settings: ConnectionSettings, flow: str, prefix: str, action: str) -> str:
    book = load_text(
        f"version: 1\nname: cost\nsteps:\n  - name: rm\n"
        f"    select: {{flows: {flow}, name_like: {prefix}-}}\n    action: {action}\n",
        env={},
    )
    folder = Path(tempfile.mkdtemp(prefix="runner-archive-cost-"))
    try:
        async with PrefectClient(settings) as client:
            plan = await plan_playbook(book, client)
            assert len(plan.pending) == RUNS
            with Journal(folder / "checkpoint.jsonl", plan_id=plan.id, plan_checksum="x") as j:
                started = time.monotonic()
                result = await Executor(client, plan, j).run()
                seconds = time.monotonic() - started
        assert result.count("done") == RUNS, result.stopped
        archive = folder / "archive.jsonl.gz"
        size = f"{archive.stat().st_size / 1024:.0f} KiB" if archive.exists() else "-"
        return (
            f"{RUNS / seconds:6.1f} runs/s  {seconds:5.1f}s  {result.requests:5d} requests"
            f"  ({result.requests / RUNS:.2f} a run)  archive {size}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    server = start_server()
    try:
        seeder = Seeder(server.api_url)
        flow = seeder.flow()
        settings = ConnectionSettings(api_url=server.api_url, request_timeout=60)
        for index, (name, action) in enumerate(CASES.items()):
            template = seeder.run(flow, "Completed")
            prefix = f"cost{index}"
            ids = clone_runs(server.home / "prefect.db", template["id"], RUNS, name_prefix=prefix)
            if "logs" in action:
                for run_id in ids:
                    seeder.logs(run_id, [f"line {i} of a finished run" for i in range(10)])
            line = anyio.run(measure, settings, flow["name"], prefix, action)
            print(f"{name:15s} {line}", flush=True)
        seeder.close()
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)


if __name__ == "__main__":
    main()
