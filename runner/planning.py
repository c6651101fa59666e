"""Plan a playbook against a server: observe (I/O), then the pure planner."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime, timezone
from uuid import UUID

from runner.client import PrefectClient
from runner.observe import observe
from runner.plan import Plan
from runner.planner import make_plan
from runner.playbook import Playbook


def new_plan_id() -> str:
    return uuid.uuid4().hex[:12]


async def plan_playbook(
    playbook: Playbook,
    client: PrefectClient,
    *,
    now: datetime | None = None,
    exclude: Collection[UUID] = (),
) -> Plan:
    """Read what the playbook selects and return the plan. Sends no write to the server."""
    moment = now or datetime.now(timezone.utc)
    observation = await observe(client, playbook, now=moment)
    return make_plan(playbook, observation, plan_id=new_plan_id(), exclude=exclude)
