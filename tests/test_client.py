"""The REST client against a real Prefect server (3.x by default; 2.x with RUNNER_TEST_PREFECT=2)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from runner.client import PrefectClient, ProposedState, ensure_accepted
from runner.errors import InvalidRequest, NotFound, OrchestrationRejected, UnsupportedByServer
from runner.filters import (
    AnyIds,
    DeploymentFilter,
    FlowFilter,
    FlowRunFilter,
    FlowRunQuery,
    FlowRunSort,
    Names,
    NamesAnyNotAny,
    NamesAnyOf,
    StateFilter,
    Tags,
    WorkQueueFilter,
)
from runner.models import SetStateStatus, StateType
from runner.settings import ConnectionSettings
from tests.support.seed import Seeder, unique, utcnow

pytestmark = [pytest.mark.anyio, pytest.mark.prefect2]


def of_flow(flow: dict[str, Any], **flow_runs: Any) -> FlowRunQuery:
    return FlowRunQuery(
        flows=FlowFilter(id=AnyIds(any_=(UUID(flow["id"]),))),
        flow_runs=FlowRunFilter(**flow_runs) if flow_runs else None,
    )


async def collect(client: PrefectClient, query: FlowRunQuery, **kwargs: Any) -> list[Any]:
    return [run async for page in client.iter_flow_runs(query, **kwargs) for run in page]


class LoseAnswers(httpx.AsyncBaseTransport):
    """Forwards to the real server, then drops the answer of chosen requests: the change is
    made on the server but the client sees a broken connection. Only an answer of a change
    made is dropped: one a busy SQLite refused (503) reaches the client, which sends it again."""

    def __init__(self, should_drop: Callable[[httpx.Request], bool]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.should_drop = should_drop
        self.dropped = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.status_code < 300 and self.should_drop(request):
            await response.aread()
            await response.aclose()
            self.dropped += 1
            raise httpx.ReadError("connection lost after the server answered", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def drop_first(path_part: str, times: int = 1) -> Callable[[httpx.Request], bool]:
    count = {"n": 0}

    def should(request: httpx.Request) -> bool:
        if path_part in request.url.path and count["n"] < times:
            count["n"] += 1
            return True
        return False

    return should


async def test_server_info_detects_bulk_routes(client: PrefectClient, is_prefect2: bool) -> None:
    info = await client.server_info()
    assert info.version is not None
    assert info.version.startswith("2." if is_prefect2 else "3.")
    assert info.api_version == "0.8.4"
    assert info.bulk_routes is (not is_prefect2)
    assert await client.health()


async def test_bulk_detection_is_asked_once(client: PrefectClient) -> None:
    await client.supports_bulk()
    sent = client.stats.requests
    await client.supports_bulk()
    await client.server_info()
    assert client.stats.requests == sent


async def test_pagination_reads_every_run_once(client: PrefectClient, seeder: Seeder) -> None:
    flow = seeder.flow()
    seeded = {r["id"] for r in seeder.runs(450, flow, "Scheduled")}
    query = of_flow(flow)
    assert await client.count_flow_runs(query) == 450
    before = client.stats.requests
    runs = await collect(client, query)
    assert {str(r.id) for r in runs} == seeded
    assert len(runs) == 450
    # By keyset: 200 + 200 + 50 (short after a full page: the end, no empty page to
    # confirm it), and the two one-run reads for runs without a time.
    assert client.stats.requests - before == 5
    # A limit larger than the server's page size is paged, never sent as is (a 422).
    assert len(await collect(client, query, limit=399)) == 399
    assert len(await client.read_flow_runs(query, limit=1000)) == 200
    # By offset and id, read concurrently: the same runs in the same order, one count more.
    by_id = await collect(client, query, sort=FlowRunSort.ID_DESC)
    assert sorted(r.id for r in by_id) == sorted(r.id for r in runs)
    before = client.stats.requests
    together = await collect(client, query, sort=FlowRunSort.ID_DESC, concurrency=4)
    assert [r.id for r in together] == [r.id for r in by_id]
    assert client.stats.requests - before == 4  # the first page, the count, two pages at once
    assert [
        r.id
        for r in await collect(client, query, sort=FlowRunSort.ID_DESC, limit=399, concurrency=4)
    ] == [r.id for r in by_id[:399]]


async def test_concurrent_pages_read_what_the_selection_gained_past_the_count(
    client: PrefectClient, seeder: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = seeder.flow()
    seeded = {r["id"] for r in seeder.runs(450, flow, "Scheduled")}
    query = of_flow(flow)
    count = client.count_flow_runs

    async def count_then_grow(q: FlowRunQuery | None = None) -> int:
        counted = await count(q)
        seeder.runs(250, flow, "Scheduled")  # created after the count, before the pages
        return counted

    monkeypatch.setattr(client, "count_flow_runs", count_then_grow)
    runs = await collect(client, query, sort=FlowRunSort.ID_DESC, concurrency=4)
    ids = {str(r.id) for r in runs}
    # Every run there was when the read began, none twice, and new ones past the count (new
    # runs sorted into the first page, read before they existed, are a race of any read).
    assert seeded <= ids and len(ids) == len(runs) > 450


async def test_filters_by_state_tags_deployment_and_queue(
    client: PrefectClient, seeder: Seeder, is_prefect2: bool
) -> None:
    pool = seeder.work_pool()
    flow = seeder.flow()
    dep_a = seeder.deployment(flow, work_pool=pool["name"], work_queue="critical")
    dep_b = seeder.deployment(flow, work_pool=pool["name"])
    late = seeder.late_runs(3, flow, deployment=dep_a, tags=["nightly", "etl"])
    running = seeder.run(flow, "Running", deployment=dep_b, tags=["etl"])
    done = seeder.run(flow, "Completed", tags=["nightly"])

    async def ids(query: FlowRunQuery) -> set[str]:
        return {str(r.id) for r in await collect(client, query)}

    late_ids = {r["id"] for r in late}
    assert (
        await ids(of_flow(flow, state=StateFilter(name=NamesAnyNotAny(any_=("Late",))))) == late_ids
    )
    # Prefect 2.x has no not_any_ on states, no any_ on tags: runner filters those itself.
    not_scheduled = (
        NamesAnyNotAny(any_=("RUNNING", "COMPLETED"))
        if is_prefect2
        else NamesAnyNotAny(not_any_=("SCHEDULED",))
    )
    assert await ids(of_flow(flow, state=StateFilter(type=not_scheduled))) == {
        running["id"],
        done["id"],
    }
    assert await ids(of_flow(flow, tags=Tags(all_=("nightly", "etl")))) == late_ids
    if not is_prefect2:
        assert await ids(of_flow(flow, tags=Tags(any_=("nightly",)))) == late_ids | {done["id"]}
    by_dep = FlowRunQuery(
        flows=FlowFilter(name=Names(any_=(flow["name"],))),
        deployments=DeploymentFilter(name=Names(any_=(dep_b["name"],))),
    )
    assert await ids(by_dep) == {running["id"]}
    by_queue = FlowRunQuery(
        flows=FlowFilter(id=AnyIds(any_=(UUID(flow["id"]),))),
        work_pool_queues=WorkQueueFilter(name=NamesAnyOf(any_=("critical",))),
    )
    assert await ids(by_queue) == late_ids


async def test_sorted_read_with_limit(client: PrefectClient, seeder: Seeder) -> None:
    flow = seeder.flow()
    late = seeder.late_runs(5, flow)  # each 10 minutes earlier than the one before
    newest = await client.read_flow_runs(
        of_flow(flow), sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=3
    )
    assert [str(r.id) for r in newest] == [r["id"] for r in late[:3]]


async def test_read_one_run_and_not_found(client: PrefectClient, seeder: Seeder) -> None:
    flow = seeder.flow()
    run = seeder.run(flow, "Late", tags=["x"])
    got = await client.read_flow_run(UUID(run["id"]))
    assert got.name == run["name"]
    assert got.state_type is StateType.SCHEDULED
    assert got.state_name == "Late"
    assert got.tags == ("x",)
    with pytest.raises(NotFound) as info:
        await client.read_flow_run(uuid.uuid4())
    assert info.value.status_code == 404


async def test_a_page_holding_parameters_nested_past_the_fast_parser_is_read(
    client: PrefectClient, seeder: Seeder
) -> None:
    """pydantic's parser, tried first, stops at a depth of 200; json reads on to ~1,000, and a
    run's parameters are the user's own data: such a page is read all the same, not refused.
    (230 levels: the server itself refuses parameters past about 250, an HTTP 500.)"""
    deep: Any = "bottom"
    for _ in range(230):
        deep = [deep]
    flow = seeder.flow()
    made = [seeder.run(flow, "Late"), seeder.run(flow, "Late", parameters={"deep": deep})]
    runs = await collect(client, of_flow(flow))
    assert sorted(str(r.id) for r in runs) == sorted(r["id"] for r in made)
    assert client.stats.malformed == 0


async def test_invalid_request_carries_the_server_detail(client: PrefectClient) -> None:
    with pytest.raises(InvalidRequest) as info:
        await client.read_flow_runs(offset=-1)
    assert info.value.status_code == 422
    assert str(info.value).endswith(": HTTP 422: offset: " + info.value.detail[0]["msg"])
    assert "greater than or equal to 0" in str(info.value)


async def test_read_deployment_by_name(client: PrefectClient, seeder: Seeder) -> None:
    flow = seeder.flow()
    dep = seeder.deployment(flow, tags=["t"], parameters={"x": 1})
    got = await client.read_deployment_by_name(f"{flow['name']}/{dep['name']}")
    assert str(got.id) == dep["id"]
    assert got.parameters == {"x": 1}
    with pytest.raises(NotFound):
        await client.read_deployment_by_name(f"{flow['name']}/nope")
    with pytest.raises(ValueError, match="expected 'flow/deployment'"):
        await client.read_deployment_by_name("no-slash")


async def test_reschedule_in_place_moves_scheduled_time_not_expected_start(
    client: PrefectClient, seeder: Seeder
) -> None:
    flow = seeder.flow()
    run = seeder.run(flow, "Late")
    before = await client.read_flow_run(UUID(run["id"]))
    new_time = utcnow() + timedelta(hours=6)
    result = await client.set_flow_run_state(
        before.id,
        ProposedState(StateType.SCHEDULED, "Scheduled", "runner test", scheduled_time=new_time),
    )
    state = ensure_accepted(result, flow_run_id=before.id)
    assert state.name == "Scheduled"
    assert state.message == "runner test"
    after = await client.read_flow_run(before.id)
    assert after.state_name == "Scheduled"
    assert after.state is not None and after.state.state_details.scheduled_time is not None
    assert abs((after.state.state_details.scheduled_time - new_time).total_seconds()) < 1
    assert after.next_scheduled_start_time is not None
    assert abs((after.next_scheduled_start_time - new_time).total_seconds()) < 1
    assert after.expected_start_time == before.expected_start_time


async def test_same_transition_twice_is_one_change(client: PrefectClient, seeder: Seeder) -> None:
    run = seeder.run(seeder.flow(), "Running")
    tid = uuid.uuid4()
    proposed = ProposedState(StateType.CANCELLING, "Cancelling")
    first = await client.set_flow_run_state(UUID(run["id"]), proposed, transition_id=tid)
    second = await client.set_flow_run_state(UUID(run["id"]), proposed, transition_id=tid)
    assert first.status is SetStateStatus.ACCEPT
    # The server answers REJECT ("already made this transition"); the client knows it is ours.
    assert second.status is SetStateStatus.ACCEPT
    assert first.state is not None and second.state is not None
    assert first.state.id == second.state.id


async def test_terminal_run_refuses_cancelling(client: PrefectClient, seeder: Seeder) -> None:
    run = seeder.run(seeder.flow(), "Completed")
    result = await client.set_flow_run_state(
        UUID(run["id"]), ProposedState(StateType.CANCELLING, "Cancelling")
    )
    assert result.status is SetStateStatus.ABORT
    with pytest.raises(OrchestrationRejected) as info:
        ensure_accepted(result, flow_run_id=UUID(run["id"]))
    assert info.value.status == "ABORT"
    assert info.value.reason is not None and "terminal" in info.value.reason


async def count_states(seeder: Seeder, run_id: str) -> int:
    return len(seeder._call("GET", "flow_run_states/", params={"flow_run_id": run_id}))


async def test_forced_change_retried_after_lost_answer_is_made_once(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    run = seeder.run(seeder.flow(), "Running")
    transport = LoseAnswers(drop_first("/set_state"))
    async with PrefectClient(settings, transport=transport) as client:
        result = await client.set_flow_run_state(
            UUID(run["id"]), ProposedState(StateType.FAILED, "Failed", "forced"), force=True
        )
    assert transport.dropped == 1
    assert result.status is SetStateStatus.ACCEPT
    assert await count_states(seeder, run["id"]) == 2  # Running, then one Failed


async def test_delete_then_already_gone(client: PrefectClient, seeder: Seeder) -> None:
    run = seeder.run(seeder.flow(), "Completed")
    assert await client.delete_flow_run(UUID(run["id"])) is True
    assert await client.delete_flow_run(UUID(run["id"])) is False
    assert seeder.read_run(run["id"]) is None


async def test_create_from_deployment_is_idempotent(client: PrefectClient, seeder: Seeder) -> None:
    flow = seeder.flow()
    dep = seeder.deployment(flow, work_pool=seeder.work_pool()["name"], work_queue="q")
    when = utcnow() + timedelta(hours=2)
    kwargs: dict[str, Any] = {
        "state": ProposedState(StateType.SCHEDULED, "Scheduled", scheduled_time=when),
        "parameters": {"n": 3},
        "tags": ["recreated"],
        "idempotency_key": unique("key"),
    }
    first = await client.create_flow_run_from_deployment(UUID(dep["id"]), **kwargs)
    second = await client.create_flow_run_from_deployment(UUID(dep["id"]), **kwargs)
    assert first.id == second.id
    assert first.parameters == {"n": 3}
    assert first.tags == ("recreated",)
    assert first.work_queue_name == "q"
    assert first.expected_start_time is not None
    assert abs((first.expected_start_time - when).total_seconds()) < 1


async def test_update_tags(client: PrefectClient, seeder: Seeder) -> None:
    run = seeder.run(seeder.flow(), "Completed", tags=["a"])
    await client.update_flow_run_tags(UUID(run["id"]), ["a", "b"])
    assert sorted((seeder.read_run(run["id"]) or {})["tags"]) == ["a", "b"]


async def test_bulk_routes_refused_without_them(
    settings: ConnectionSettings, seeder: Seeder
) -> None:
    run = seeder.run(seeder.flow(), "Completed")
    async with PrefectClient(settings, bulk=False) as client:
        with pytest.raises(UnsupportedByServer):
            await client.bulk_delete_flow_runs([UUID(run["id"])])
    assert seeder.read_run(run["id"]) is not None


async def test_bulk_delete_retried_after_lost_answer_reports_every_deleted_run(
    settings: ConnectionSettings, seeder: Seeder, is_prefect2: bool
) -> None:
    if is_prefect2:
        pytest.skip("Prefect 2.x has no bulk routes")
    runs = seeder.runs(10, seeder.flow(), "Completed")
    ids = [UUID(r["id"]) for r in runs]
    transport = LoseAnswers(drop_first("bulk_delete"))
    async with PrefectClient(settings, transport=transport, bulk=True) as client:
        gone = await client.bulk_delete_flow_runs(ids)
    assert transport.dropped == 1
    assert gone == set(ids)
    assert seeder.read_runs([r["id"] for r in runs]) == []


async def test_forced_bulk_change_retried_after_lost_answer_is_made_once(
    settings: ConnectionSettings, seeder: Seeder, is_prefect2: bool
) -> None:
    if is_prefect2:
        pytest.skip("Prefect 2.x has no bulk routes")
    runs = seeder.runs(5, seeder.flow(), "Running")
    ids = [UUID(r["id"]) for r in runs]
    transport = LoseAnswers(drop_first("bulk_set_state"))
    async with PrefectClient(settings, transport=transport, bulk=True) as client:
        results = await client.bulk_set_flow_run_state(
            ids, ProposedState(StateType.FAILED, "Failed"), force=True
        )
    assert transport.dropped == 1
    assert {r.status for r in results.values()} == {SetStateStatus.ACCEPT}
    assert set(results) == set(ids)
    for run in runs:
        assert await count_states(seeder, run["id"]) == 2
