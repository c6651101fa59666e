"""Reading a selection by keyset against reading it by offset, as the history grows.

    .venv/bin/python bench/keyset_paging.py [--backend sqlite|postgresql] \
        [--sizes 10000,100000,500000] [--repeat 2]

Starts a Prefect server (the test suite's version; PostgreSQL made by bench/postgres.py),
then for each size in turn grows one flow's late runs to it (cloned in the database) and
reads them all through ``PrefectClient.iter_flow_runs``, each of :data:`WAYS`: by keyset
with four slices at once (what plans and ``runner ls`` do), by keyset with one cursor, and
by offset (``sort=ID_DESC``, four pages at once: what they did before). Prints and writes
bench/results/keyset_paging.json: runs/s for each way and size (best of ``--repeat``), and
keyset's over offset's. Not part of CI; run it on a quiet machine. The plan-level
figures (runs/s of ``runner plan``, peak RSS) are bench/harness.py's and bench/plan_scale.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import Backend  # noqa: E402
from runner.client import PrefectClient  # noqa: E402
from runner.filters import AnyIds, FlowFilter, FlowRunQuery, FlowRunSort  # noqa: E402
from runner.settings import ConnectionSettings  # noqa: E402
from tests.support.seed import unique  # noqa: E402

#: The ways a selection is read: (name, sort, concurrency).
WAYS = (
    ("keyset-4", None, 4),  # what plans and runner ls do: four slices at once
    ("keyset-1", None, 1),  # one cursor, the next page asked for while one is parsed
    ("offset-4", FlowRunSort.ID_DESC, 4),  # what they did before
)


async def read_all(
    api_url: str, flow_id: str, sort: FlowRunSort | None, concurrency: int
) -> tuple[int, float]:
    """How many runs one full read hands on, and its seconds."""
    query = FlowRunQuery(flows=FlowFilter(id=AnyIds(any_=(UUID(flow_id),))))
    settings = ConnectionSettings(api_url=api_url, request_timeout=120)
    async with PrefectClient(settings) as client:
        started = time.perf_counter()
        count = 0
        async for page in client.iter_flow_runs(query, sort=sort, concurrency=concurrency):
            count += len(page)
        return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--sizes", default="10000,100000,500000")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    backend = Backend(args.backend)
    results: list[dict[str, Any]] = []
    try:
        flow = backend.seeder.flow(unique("keyset"))
        template = backend.seeder.run(flow, "Late")
        have = 1
        for size in sizes:
            backend.grow(template["id"], size - have, "k")
            have = size
            row: dict[str, Any] = {"backend": args.backend, "runs": size}
            for name, sort, concurrency in WAYS:
                rates = []
                for _ in range(args.repeat):
                    count, seconds = asyncio.run(
                        read_all(backend.server.api_url, flow["id"], sort, concurrency)
                    )
                    if count != size:
                        raise SystemExit(f"{name}: read {count} runs of {size}")
                    rates.append(count / seconds)
                row[name] = round(max(rates), 1)
            row["keyset-4 / offset-4"] = round(row["keyset-4"] / row["offset-4"], 2)
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        backend.close()
    out = ROOT / "bench" / "results" / "keyset_paging.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"version": backend.version, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
