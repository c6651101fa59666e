"""A throwaway PostgreSQL server on loopback for the benchmarks, and run cloning inside it.

Debian's ``postgresql`` package is installed when missing (``apt-get``), the cluster is made
with ``initdb`` in a temporary folder (as the ``postgres`` user when run as root), trust
authentication on 127.0.0.1, a free port. Prefect reaches it with
``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://postgres@127.0.0.1:PORT/prefect``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.prefect_server import free_port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env
        )
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Postgres:
    data: Path
    port: int
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def psql(self, sql: str) -> str:
        result = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "prefect",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_postgres() -> Postgres:
    bin_dir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="runner-bench-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(data / "log"),
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 30
    while True:
        ready = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "-At",
                "-c",
                "CREATE DATABASE prefect",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if ready.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the server is still starting: poll with a bound
    return Postgres(data=data, port=port, bin=bin_dir)


def clone_runs_pg(pg: Postgres, template_run_id: str, count: int, *, name_prefix: str) -> None:
    """``count`` copies of the template run and its state, in one statement per table."""
    if count <= 0:
        return

    def columns(table: str) -> list[str]:
        rows = pg.psql(
            "SELECT column_name FROM information_schema.columns"
            f" WHERE table_name = '{table}' ORDER BY ordinal_position"
        )
        return [r for r in rows.splitlines() if r]

    run_cols, state_cols = columns("flow_run"), columns("flow_run_state")
    run_override = {
        "id": "n.rid",
        "state_id": "n.sid",
        "name": f"'{name_prefix}-' || n.i",
        "expected_start_time": "r.expected_start_time - n.i * interval '1 second'",
        "next_scheduled_start_time": "CASE WHEN r.next_scheduled_start_time IS NULL THEN NULL"
        " ELSE r.next_scheduled_start_time - n.i * interval '1 second' END",
        "idempotency_key": "NULL",
    }
    details_type = pg.psql(
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_name = 'flow_run_state' AND column_name = 'state_details'"
    ).strip()
    details = "jsonb_set(s.state_details::jsonb, '{flow_run_id}', to_jsonb(n.rid::text))"
    state_override = {
        "id": "n.sid",
        "flow_run_id": "n.rid",
        "state_details": details if details_type == "jsonb" else f"{details}::{details_type}",
    }
    run_override["state_id"] = (
        "NULL"  # set once the states exist (the two tables point at each other)
    )
    run_select = ", ".join(run_override.get(c, f"r.{c}") for c in run_cols)
    state_select = ", ".join(state_override.get(c, f"s.{c}") for c in state_cols)
    pg.psql(
        "BEGIN;"
        "CREATE TEMP TABLE n AS SELECT gen_random_uuid() AS rid, gen_random_uuid() AS sid, i"
        f" FROM generate_series(1, {count}) AS i;"
        f"INSERT INTO flow_run ({', '.join(run_cols)}) SELECT {run_select}"
        f" FROM n, flow_run r WHERE r.id = '{template_run_id}';"
        f"INSERT INTO flow_run_state ({', '.join(state_cols)}) SELECT {state_select}"
        f" FROM n, flow_run r JOIN flow_run_state s ON s.id = r.state_id"
        f" WHERE r.id = '{template_run_id}';"
        "UPDATE flow_run SET state_id = n.sid FROM n WHERE flow_run.id = n.rid;"
        "COMMIT;"
    )
