"""Seeding helpers: flows, work pools, deployments and flow runs in any state, via the API."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

#: How long a seeding request is asked again while the server answers busy.
BUSY_SECONDS = 60.0

STATES: dict[str, tuple[str, str]] = {
    # label: (type, name)
    "Scheduled": ("SCHEDULED", "Scheduled"),
    "Late": ("SCHEDULED", "Late"),
    "AwaitingRetry": ("SCHEDULED", "AwaitingRetry"),
    "Pending": ("PENDING", "Pending"),
    "Running": ("RUNNING", "Running"),
    "Paused": ("PAUSED", "Paused"),
    "Cancelling": ("CANCELLING", "Cancelling"),
    "Completed": ("COMPLETED", "Completed"),
    "Failed": ("FAILED", "Failed"),
    "Crashed": ("CRASHED", "Crashed"),
    "Cancelled": ("CANCELLED", "Cancelled"),
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Seeder:
    """Creates objects on a real server. Retries the SQLite server's 'busy' answers."""

    def __init__(self, api_url: str, *, auth: tuple[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=60, auth=auth)

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request, asked again while the server is busy, for up to ``BUSY_SECONDS``: a
        SQLite server on a loaded machine answers 503 ("database is locked") for seconds on
        end now and then (measured: over 9 s, with two shards of the suite side by side)."""
        deadline = time.monotonic() + BUSY_SECONDS
        attempt = 0
        while True:
            attempt += 1
            pause = min(0.2 * attempt, 1.0)
            last = time.monotonic() + pause >= deadline
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError:
                if last:
                    raise
                time.sleep(pause)
                continue
            if response.status_code in (429, 502, 503, 504) and not last:
                time.sleep(pause)
                continue
            response.raise_for_status()
            return response.json() if response.content else None

    def flow(self, name: str | None = None) -> dict[str, Any]:
        return dict(self._call("POST", "flows/", json={"name": name or unique("flow")}))

    def work_pool(self, name: str | None = None) -> dict[str, Any]:
        return dict(
            self._call(
                "POST", "work_pools/", json={"name": name or unique("pool"), "type": "process"}
            )
        )

    def work_queue(self, pool: str, name: str | None = None) -> dict[str, Any]:
        """A queue of ``pool`` (besides the ``default`` queue every pool has)."""
        return dict(
            self._call("POST", f"work_pools/{pool}/queues", json={"name": name or unique("q")})
        )

    def schedule_runs(
        self, deployment: dict[str, Any], max_runs: int = 3, min_runs: int | None = None
    ) -> None:
        """Have the server make a scheduled deployment's runs now (``POST
        /deployments/{id}/schedule``, as its scheduler loop does): afterwards the loop makes
        no more, so none appears between a plan and its apply."""
        body: dict[str, int] = {"max_runs": max_runs}
        if min_runs is not None:
            body["min_runs"] = min_runs
        self._call("POST", f"deployments/{deployment['id']}/schedule", json=body)

    def deployment(
        self,
        flow: dict[str, Any],
        name: str | None = None,
        *,
        work_pool: str | None = None,
        work_queue: str | None = None,
        tags: Sequence[str] = (),
        parameters: dict[str, Any] | None = None,
        schedules: Sequence[dict[str, Any]] = (),
        paused: bool | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name or unique("deployment"),
            "flow_id": flow["id"],
            "tags": list(tags),
            "parameters": parameters or {},
        }
        if schedules:
            body["schedules"] = list(schedules)
        if paused is not None:
            body["paused"] = paused
        if work_pool:
            body["work_pool_name"] = work_pool
        if work_queue:
            body["work_queue_name"] = work_queue
        return dict(self._call("POST", "deployments/", json=body))

    def run(
        self,
        flow: dict[str, Any],
        state: str = "Scheduled",
        *,
        deployment: dict[str, Any] | None = None,
        tags: Sequence[str] = (),
        scheduled: datetime | None = None,
        name: str | None = None,
        parameters: dict[str, Any] | None = None,
        parent_task_run_id: str | None = None,
        idempotency_key: str | None = None,
        work_queue: str | None = None,
        job_variables: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One run. For Scheduled-type states ``scheduled`` sets the expected start time
        (default: an hour ago for Late, in an hour otherwise). ``work_queue`` (a queue of the
        deployment's work pool) and ``job_variables`` need a ``deployment``."""
        state_type, state_name = STATES[state]
        body_state: dict[str, Any] = {"type": state_type, "name": state_name}
        if state_type == "SCHEDULED":
            if scheduled is None:
                offset = timedelta(hours=-1 if state == "Late" else 1)
                scheduled = utcnow() + offset
            body_state["state_details"] = {"scheduled_time": scheduled.isoformat()}
        body: dict[str, Any] = {"state": body_state, "tags": list(tags)}
        if name:
            body["name"] = name
        if parameters is not None:
            body["parameters"] = parameters
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if work_queue is not None:
            body["work_queue_name"] = work_queue
        if job_variables is not None:
            body["job_variables"] = job_variables
        if deployment is not None:
            return dict(
                self._call("POST", f"deployments/{deployment['id']}/create_flow_run", json=body)
            )
        body["flow_id"] = flow["id"]
        if parent_task_run_id:
            body["parent_task_run_id"] = parent_task_run_id
        return dict(self._call("POST", "flow_runs/", json=body))

    def runs(
        self, count: int, flow: dict[str, Any], state: str = "Scheduled", **kwargs: Any
    ) -> list[dict[str, Any]]:
        return [self.run(flow, state, **kwargs) for _ in range(count)]

    def late_runs(
        self,
        count: int,
        flow: dict[str, Any],
        *,
        deployment: dict[str, Any] | None = None,
        spread: timedelta = timedelta(minutes=10),
        tags: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Late runs whose expected start times are spread back from an hour ago."""
        base = utcnow() - timedelta(hours=1)
        return [
            self.run(flow, "Late", deployment=deployment, scheduled=base - i * spread, tags=tags)
            for i in range(count)
        ]

    def task_run(self, flow_run_id: str) -> dict[str, Any]:
        """A task run inside ``flow_run_id``: the parent of a subflow run."""
        return dict(
            self._call(
                "POST",
                "task_runs/",
                json={
                    "flow_run_id": flow_run_id,
                    "task_key": unique("task"),
                    "dynamic_key": "0",
                    "name": unique("task"),
                },
            )
        )

    def logs(
        self, run_id: str, messages: Sequence[str], *, at: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Log lines of ``run_id``, a millisecond apart from ``at`` (default: now)."""
        base = at or utcnow()
        lines = [
            {
                "name": "prefect.flow_runs",
                "level": 20,
                "message": message,
                "timestamp": (base + timedelta(milliseconds=i)).isoformat(),
                "flow_run_id": run_id,
                "task_run_id": None,
            }
            for i, message in enumerate(messages)
        ]
        for start in range(0, len(lines), 200):
            self._call("POST", "logs/", json=lines[start : start + 200])
        return lines

    def logs_at_one_time(self, run_id: str, count: int, at: datetime) -> None:
        """``count`` log lines of ``run_id``, every one at the same time ``at``."""
        line = {"name": "prefect.flow_runs", "level": 20, "flow_run_id": run_id}
        lines = [
            {**line, "message": f"same time {i}", "timestamp": at.isoformat(), "task_run_id": None}
            for i in range(count)
        ]
        for start in range(0, len(lines), 200):
            self._call("POST", "logs/", json=lines[start : start + 200])

    def set_state(self, run_id: str, state_type: str, name: str) -> None:
        """Force ``run_id`` into a new state (the server's clock stamps it)."""
        state = {"type": state_type, "name": name}
        self._call("POST", f"flow_runs/{run_id}/set_state", json={"state": state, "force": True})

    def read_run(self, run_id: str) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", f"flow_runs/{run_id}"))
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise

    def read_runs(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = list(ids)
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            found += self._call(
                "POST",
                "flow_runs/filter",
                json={"flow_runs": {"id": {"any_": chunk}}, "limit": 200},
            )
        return found

    def runs_of_flow(self, flow: dict[str, Any]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self._call(
                "POST",
                "flow_runs/filter",
                json={
                    "flows": {"id": {"any_": [flow["id"]]}},
                    "limit": 200,
                    "offset": offset,
                    "sort": "ID_DESC",
                },
            )
            found += page
            offset += len(page)
            if len(page) < 200:
                return found
