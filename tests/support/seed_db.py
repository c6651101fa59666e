"""Seed many flow runs fast by cloning one template run inside the server's SQLite database.

Creating runs through the API runs at ~20-45 runs/s on SQLite (../shared/PREFECT_API.md);
cloning rows runs at tens of thousands a second. For the benchmarks and the reliability
suite's thousands of runs; the feature tests seed through the API. Each clone gets its own
run id, state row, name and expected start time. The template run is made through the API.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def clone_runs(
    db_path: Path,
    template_run_id: str,
    count: int,
    *,
    spread: timedelta = timedelta(seconds=1),
    name_prefix: str = "bench",
    batch: int = 5000,
) -> list[str]:
    """``count`` copies of the template run, expected starts stepping back by ``spread``."""
    return clone_runs_at(
        db_path,
        template_run_id,
        [-spread * i for i in range(count)],
        name_prefix=name_prefix,
        batch=batch,
    )


def clone_runs_at(
    db_path: Path,
    template_run_id: str,
    shifts: Sequence[timedelta | None],
    *,
    name_prefix: str = "bench",
    batch: int = 5000,
) -> list[str]:
    """A copy of the template run for each of ``shifts``: its expected start the template's
    moved by it, or none at all (None: a run Prefect's API never makes, for the paging tests)."""
    connection = sqlite3.connect(db_path, timeout=60)
    connection.row_factory = sqlite3.Row
    try:
        run = dict(
            connection.execute("SELECT * FROM flow_run WHERE id = ?", (template_run_id,)).fetchone()
        )
        state = dict(
            connection.execute(
                "SELECT * FROM flow_run_state WHERE id = ?", (run["state_id"],)
            ).fetchone()
        )
        base = datetime.strptime(str(run["expected_start_time"]), _FORMAT)
        run_cols = list(run)
        state_cols = list(state)
        run_sql = f"INSERT INTO flow_run ({', '.join(run_cols)}) VALUES ({', '.join('?' * len(run_cols))})"
        state_sql = f"INSERT INTO flow_run_state ({', '.join(state_cols)}) VALUES ({', '.join('?' * len(state_cols))})"
        details = json.loads(state["state_details"]) if state.get("state_details") else {}
        ids: list[str] = []
        for start in range(0, len(shifts), batch):
            run_rows, state_rows = [], []
            for i in range(start, min(len(shifts), start + batch)):
                run_id, state_id = str(uuid.uuid4()), str(uuid.uuid4())
                shift = shifts[i]
                when = base + (shift or timedelta(0))
                stamp = when.strftime(_FORMAT) if shift is not None else None
                new_run = {
                    **run,
                    "id": run_id,
                    "state_id": state_id,
                    "name": f"{name_prefix}-{i}",
                    "expected_start_time": stamp,
                    "next_scheduled_start_time": stamp
                    if run.get("next_scheduled_start_time")
                    else None,
                    "idempotency_key": None,
                }
                new_details = {**details, "flow_run_id": run_id}
                if new_details.get("scheduled_time"):
                    new_details["scheduled_time"] = when.isoformat() + "Z"
                new_state = {
                    **state,
                    "id": state_id,
                    "flow_run_id": run_id,
                    "state_details": json.dumps(new_details),
                }
                run_rows.append([new_run[c] for c in run_cols])
                state_rows.append([new_state[c] for c in state_cols])
                ids.append(run_id)
            with connection:
                connection.executemany(state_sql, state_rows)
                connection.executemany(run_sql, run_rows)
        return ids
    finally:
        connection.close()


#: Drop every run of a flow (``{id}``), states first: what a cell or scenario leaves behind.
REMOVE_RUNS_OF_FLOW = (
    "DELETE FROM flow_run_state WHERE flow_run_id IN (SELECT id FROM flow_run WHERE flow_id = '{id}')",
    "DELETE FROM flow_run WHERE flow_id = '{id}'",
)


def remove_runs_of_flow(db_path: Path, flow_id: str) -> None:
    """Drop a flow's runs in the database, so later work meets a server of the same size."""
    connection = sqlite3.connect(db_path, timeout=60)
    try:
        with connection:
            for statement in REMOVE_RUNS_OF_FLOW:
                connection.execute(statement.format(id=flow_id))
    finally:
        connection.close()
