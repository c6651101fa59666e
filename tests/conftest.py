"""Fixtures: one real Prefect server per test session, seeding helpers, a client."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from runner.client import PrefectClient
from runner.settings import ConnectionSettings
from tests.support import shards
from tests.support.prefect_server import PrefectServer, start_server
from tests.support.seed import Seeder

_started: list[PrefectServer] = []


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    server = start_server()
    _started.append(server)
    yield server
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)


@pytest.fixture(scope="session")
def server_version(prefect_server: PrefectServer) -> str:
    import httpx

    return str(httpx.get(f"{prefect_server.api_url}/admin/version").json())


@pytest.fixture(scope="session")
def is_prefect2(server_version: str) -> bool:
    return server_version.startswith("2.")


@pytest.fixture(scope="session")
def server_minor(server_version: str) -> tuple[int, int]:
    """The server's (major, minor) version: (3, 9) for 3.9.1."""
    major, minor = server_version.split(".")[:2]
    return int(major), int(minor)


@pytest.fixture
def api_url(prefect_server: PrefectServer) -> str:
    return prefect_server.api_url


@pytest.fixture
def seeder(api_url: str) -> Iterator[Seeder]:
    seeder = Seeder(api_url)
    yield seeder
    seeder.close()


@pytest.fixture
def settings(api_url: str) -> ConnectionSettings:
    return ConnectionSettings(api_url=api_url, request_timeout=30)


@pytest.fixture
async def client(settings: ConnectionSettings) -> AsyncIterator[PrefectClient]:
    async with PrefectClient(settings) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    nightly = os.environ.get("RUNNER_NIGHTLY") == "1"
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
        if item.get_closest_marker("nightly") and not nightly:
            item.add_marker(pytest.mark.skip(reason="nightly: run by bash scripts/nightly"))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(shards.Plugin(), "runner-shards")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for server in _started:
        if server.startup_seconds is not None:
            terminalreporter.write_line(
                f"prefect server ({server.venv.name}) healthy after {server.startup_seconds:.1f}s"
            )


def _hypothesis_profiles() -> None:
    import os

    from hypothesis import settings

    settings.register_profile("default", max_examples=300, deadline=None)
    settings.register_profile("full", max_examples=10_000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


_hypothesis_profiles()


@pytest.fixture(autouse=True)
def _spill_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RUNNER_TEST_SPILL=1``: every spool in the test's own process goes to disk from its
    first item, two items a chunk (the large-plan path, run by the whole suite)."""
    if os.environ.get("RUNNER_TEST_SPILL") == "1":
        from runner import spool

        monkeypatch.setattr(spool, "SPILL_AT", 0)
        monkeypatch.setattr(spool, "CHUNK", 2)
        monkeypatch.setattr(spool, "SORT_RUN", 3)
