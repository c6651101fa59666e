"""What the real server cannot be made to do on demand: 429 with Retry-After, 503 storms,
connections dropped before an answer. A fake transport plays the server here; the same
operations are tested against the real server in test_client.py."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from runner.client import PrefectClient, ProposedState
from runner.errors import ServerError, SettingsError, Unauthorized, Unreachable
from runner.models import SetStateStatus, StateType
from runner.retry import RetryPolicy, backoff_seconds, parse_retry_after
from runner.settings import ConnectionSettings, Secret
from tests.support.fake_server import FakeServer, have_openssl, json_answer

pytestmark = pytest.mark.anyio

KEY = "pnu_supersecretkey0123456789"
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, jitter=0.01)


def settings(**kwargs: object) -> ConnectionSettings:
    return ConnectionSettings(
        api_url="http://prefect.test/api",
        api_key=Secret(KEY),
        **kwargs,  # type: ignore[arg-type]
    )


def scripted(
    answers: list[Callable[[httpx.Request], httpx.Response]],
) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/csrf-token"):
            return httpx.Response(422, json={"detail": "CSRF protection is disabled."})
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1](request)

    return httpx.MockTransport(handler), seen


def ok_run(request: httpx.Request) -> httpx.Response:
    run_id = request.url.path.rsplit("/", 1)[-1]
    return httpx.Response(200, json={"id": run_id, "name": "r", "flow_id": str(uuid.uuid4())})


def status(
    code: int, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, headers=headers or {}, json={"detail": "busy"})


def drop(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError(
        "Server disconnected without sending a response.", request=request
    )


async def test_429_waits_as_long_as_retry_after_says() -> None:
    transport, seen = scripted([status(429, {"Retry-After": "0.3"}), ok_run])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        started = time.monotonic()
        run = await client.read_flow_run(uuid.uuid4())
        waited = time.monotonic() - started
    assert run.name == "r"
    assert len(seen) == 2
    assert waited >= 0.3  # Retry-After, not the 0.01 s backoff
    assert client.stats.retries == 1
    assert client.stats.by_status == {429: 1, 200: 1}


async def test_503_and_dropped_connections_are_retried() -> None:
    transport, seen = scripted([status(503), drop, status(502), ok_run])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        await client.read_flow_run(uuid.uuid4())
    assert len(seen) == 4
    assert client.stats.transport_errors == 1


async def test_retries_are_bounded_and_end_in_server_error() -> None:
    transport, seen = scripted([status(503)])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        with pytest.raises(ServerError) as info:
            await client.read_flow_run(uuid.uuid4())
    assert len(seen) == 4
    assert str(info.value).startswith("GET http://prefect.test/api/flow_runs/")
    assert str(info.value).endswith(": HTTP 503 after 4 attempts: busy")


async def test_a_retried_state_change_keeps_its_transition_id() -> None:
    run_id = uuid.uuid4()

    def accept(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the check before sending again: not done yet
            return httpx.Response(
                200,
                json={
                    "id": str(run_id),
                    "name": "r",
                    "flow_id": str(uuid.uuid4()),
                    "state": {"type": "RUNNING", "name": "Running"},
                },
            )
        body = json.loads(request.content)
        return httpx.Response(201, json={"status": "ACCEPT", "state": body["state"], "details": {}})

    transport, seen = scripted([drop, accept, accept])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        result = await client.set_flow_run_state(
            run_id, ProposedState(StateType.CANCELLING, "Cancelling")
        )
    assert result.status is SetStateStatus.ACCEPT
    posts = [json.loads(r.content) for r in seen if r.method == "POST"]
    assert len(posts) == 2
    assert (
        posts[0]["state"]["state_details"]["transition_id"]
        == posts[1]["state"]["state_details"]["transition_id"]
    )


async def test_unreachable_names_the_url_never_the_key() -> None:
    s = ConnectionSettings(api_url="http://user:hunter2@127.0.0.1:9/api", api_key=Secret(KEY))
    async with PrefectClient(s, retry=FAST) as client:
        with pytest.raises(Unreachable) as info:
            await client.read_flow_run(uuid.uuid4())
    message = str(info.value)
    assert "http://127.0.0.1:9/api/flow_runs/" in message
    assert "is the server at http://127.0.0.1:9/api running?" in message
    for secret in (KEY, "hunter2"):
        assert secret not in message
        assert secret not in repr(info.value)
        assert secret not in repr(client)


async def test_unauthorized_hints_at_the_credentials() -> None:
    transport, _ = scripted([status(401)])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        with pytest.raises(Unauthorized) as info:
            await client.read_flow_run(uuid.uuid4())
    assert "Check PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING" in str(info.value)
    assert KEY not in str(info.value)


async def test_headers_sent() -> None:
    transport, seen = scripted([ok_run])
    s = settings(custom_headers={"X-Team": "ops", "Authorization": "ignored"})
    async with PrefectClient(s, transport=transport) as client:
        await client.read_flow_run(uuid.uuid4())
    headers = seen[0].headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["X-PREFECT-API-VERSION"] == "0.8.4"
    assert headers["X-Team"] == "ops"
    assert headers["User-Agent"].startswith("prefect-runner/")


async def test_auth_string_is_basic_auth() -> None:
    transport, seen = scripted([ok_run])
    s = ConnectionSettings(api_url="http://prefect.test/api", auth_string=Secret("admin:pass"))
    async with PrefectClient(s, transport=transport) as client:
        await client.read_flow_run(uuid.uuid4())
    assert seen[0].headers["Authorization"] == "Basic YWRtaW46cGFzcw=="


async def test_rate_limit_spaces_requests() -> None:
    transport, seen = scripted([ok_run])
    async with PrefectClient(settings(), transport=transport, rate_limit=20) as client:
        started = time.monotonic()
        for _ in range(6):
            await client.read_flow_run(uuid.uuid4())
        elapsed = time.monotonic() - started
    assert len(seen) == 6
    assert elapsed >= 5 / 20  # 6 requests at 20/s: at least 5 intervals


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Sun, 22 Nov 2026 12:00:10 GMT", now=1795348800.0) == 10.0


async def test_httpcore_asks_for_sniffio_without_searching_the_path_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpcore imports sniffio for every lock it makes; runner.client records it missing
    (or it is installed): either way, no request makes the import system search again."""
    from httpcore._synchronization import current_async_library

    searches: list[str] = []
    find_spec = importlib.machinery.PathFinder.find_spec

    def counted(name: str, *args: object, **kwargs: object) -> object:
        searches.append(name)
        return find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", counted)
    assert [current_async_library() for _ in range(100)] == ["asyncio"] * 100
    assert [name for name in searches if name == "sniffio"] == []


def test_the_default_retries_wait_about_45_seconds_from_the_first_try_to_the_last() -> None:
    policy = dataclasses.replace(RetryPolicy(), jitter=0)
    waits = [backoff_seconds(policy, failed) for failed in range(1, policy.max_attempts)]
    assert (policy.max_attempts, policy.initial_backoff) == (11, 0.05)
    assert 45 <= sum(waits) <= 46


def test_backoff_doubles_and_its_jitter_never_adds_more_than_half() -> None:
    policy = RetryPolicy(initial_backoff=0.25, max_backoff=20.0, jitter=0.5)
    for failed, base in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (9, 20.0)]:
        waits = [backoff_seconds(policy, failed) for _ in range(200)]
        assert base <= min(waits) and max(waits) <= base + min(0.5, base / 2)


# -- answers that are not what the API sends: clear errors, not tracebacks ------------------


def answer(
    code: int, content: bytes = b"", content_type: str | None = "application/json"
) -> Callable[[httpx.Request], httpx.Response]:
    headers = {"content-type": content_type} if content_type else {}
    return lambda request: httpx.Response(code, headers=headers, content=content)


LOGIN_PAGE = b"<!DOCTYPE html>\n<html><head><title>\n  Sign in - Acme SSO </title></head></html>"
NOT_THE_API = (
    "; check that PREFECT_API_URL is the Prefect API (it usually ends in /api)"
    " and that no login page or proxy answers in its place"
)


async def test_an_html_login_page_is_a_clear_error_and_not_retried() -> None:
    transport, seen = scripted([answer(200, LOGIN_PAGE, "text/html; charset=utf-8")])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        with pytest.raises(ServerError) as info:
            await client.server_info()
    assert str(info.value) == (
        "GET http://prefect.test/api/admin/version: HTTP 200: expected JSON,"
        " got an HTML page titled 'Sign in - Acme SSO'" + NOT_THE_API
    )
    assert len(seen) == 1


@pytest.mark.parametrize("code", [200, 204])
async def test_an_empty_body_where_json_is_expected(code: int) -> None:
    transport, seen = scripted([answer(code, b"", None)])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        with pytest.raises(ServerError) as info:
            await client.count_flow_runs()
    assert str(info.value) == (
        f"POST http://prefect.test/api/flow_runs/count: HTTP {code}: expected JSON,"
        " got an empty body"
    )
    assert len(seen) == 1


async def test_an_empty_delete_answer_is_fine() -> None:
    transport, _ = scripted([answer(204, b"", None)])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        assert await client.delete_flow_run(uuid.uuid4()) is True


async def test_json_nested_too_deeply_is_a_clear_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    transport, seen = scripted([answer(200, deep), answer(500, deep)])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        with pytest.raises(ServerError) as info:
            await client.count_flow_runs()
        assert str(info.value) == (
            "POST http://prefect.test/api/flow_runs/count: HTTP 200: expected JSON,"
            " got an answer nested too deeply to read"
        )
        with pytest.raises(ServerError) as info:  # the same as an error's detail
            await client.count_flow_runs()
        assert str(info.value) == (
            "POST http://prefect.test/api/flow_runs/count: HTTP 500:"
            " an answer nested too deeply to read"
        )
    assert len(seen) == 2


def test_a_login_page_through_the_cli_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    page = (200, {"content-type": "text/html"}, LOGIN_PAGE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNNER_"))}
    with FakeServer(lambda seen: page) as server:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "runner"), "doctor"],
            capture_output=True,
            text=True,
            env={**env, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(tmp_path)},
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr == ""
    assert result.stdout.endswith(
        f"server:       unreachable or refused: GET {server.api_url}/admin/version: HTTP 200:"
        " expected JSON, got an HTML page titled 'Sign in - Acme SSO'" + NOT_THE_API + "\n"
    )


@pytest.mark.parametrize(
    ("body", "shown"),
    [(b'"12"', '"12"'), (b"3.5", "3.5"), (b"null", "null"), (b"true", "true"), (b"-1", "-1")],
)
async def test_a_count_that_is_not_a_number_of_runs(body: bytes, shown: str) -> None:
    transport, _ = scripted([answer(200, body)])
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        with pytest.raises(ServerError) as info:
            await client.count_flow_runs()
    assert str(info.value) == (
        "POST http://prefect.test/api/flow_runs/count: unexpected answer:"
        f" expected a number of runs, got {shown}"
    )


async def test_error_urls_name_the_api_path_once() -> None:
    run_id = uuid.uuid4()
    for api_url in (
        "http://prefect.test/api",
        "https://api.prefect.cloud/api/accounts/a1/workspaces/w2",
    ):
        transport, _ = scripted([lambda request: httpx.Response(200, json={"id": "nope"})])
        s = ConnectionSettings(api_url=api_url, api_key=Secret(KEY))
        async with PrefectClient(s, transport=transport, retry=FAST) as client:
            with pytest.raises(ServerError) as info:
                await client.read_flow_run(run_id)
        assert str(info.value) == (
            f"GET {api_url}/flow_runs/{run_id}: unexpected answer: ValidationError"
        )


# -- CSRF: one fresh token per request, then a clear refusal --------------------------------


def csrf_server(refuse: Callable[[int], bool]) -> tuple[httpx.MockTransport, list[str]]:
    """A server with CSRF protection; ``refuse(n)`` says whether the n-th POST is a 403."""
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/csrf-token"):
            return httpx.Response(
                200, json={"token": f"t{len(log)}", "expiration": "2999-01-01T00:00:00Z"}
            )
        if refuse(sum(1 for line in log if line.startswith("POST"))):
            return httpx.Response(403, json={"detail": "Invalid CSRF token or client identifier."})
        return httpx.Response(200, json=7)

    return httpx.MockTransport(handler), log


async def test_a_csrf_refusal_is_answered_with_one_fresh_token() -> None:
    transport, log = csrf_server(lambda n: n == 1)
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        assert await client.count_flow_runs() == 7
    assert log == [
        "GET /api/csrf-token",
        "POST /api/flow_runs/count",
        "GET /api/csrf-token",
        "POST /api/flow_runs/count",
    ]


async def test_a_csrf_refusal_on_every_request_is_reported_not_chased() -> None:
    transport, log = csrf_server(lambda n: True)
    async with PrefectClient(settings(), transport=transport, retry=FAST) as client:
        with pytest.raises(Unauthorized) as info:
            await client.count_flow_runs()
    assert str(info.value) == (
        "POST http://prefect.test/api/flow_runs/count: HTTP 403: the server refused the CSRF"
        " token, also after fetching a new one (Invalid CSRF token or client identifier.);"
        " check that no proxy between runner and the server drops the Prefect-Csrf-Token and"
        " Prefect-Csrf-Client headers"
    )
    assert len(log) == 4  # two tokens, two POSTs


# -- TLS: a certificate that fails verification is reported at once, not retried ------------


@pytest.mark.skipif(not have_openssl(), reason="needs the openssl command")
async def test_a_certificate_that_fails_verification_is_not_retried() -> None:
    with FakeServer(lambda seen: json_answer(200, "3.9.1"), tls=True) as server:
        s = ConnectionSettings(api_url=server.api_url, api_key=Secret(KEY))
        async with PrefectClient(s, retry=RetryPolicy(max_attempts=10)) as client:
            started = time.monotonic()
            with pytest.raises(Unreachable) as info:
                await client.server_info()
            elapsed = time.monotonic() - started
        # OpenSSL's own words vary by version ("self signed" before 3.0).
        assert str(info.value).replace("self signed", "self-signed") == (
            f"GET {server.api_url}/admin/version: TLS certificate verification failed"
            " (self-signed certificate); if a private CA signed the server's certificate, set"
            " PREFECT_API_SSL_CERT_FILE to that CA's certificate (a PEM file), or set"
            " PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true to skip verification (for testing only)"
        )
        assert client.stats.requests == 1 and client.stats.retries == 0
        assert elapsed < 5
        # A POST meets it first when it fetches its CSRF token: the same, at once.
        async with PrefectClient(s, retry=RetryPolicy(max_attempts=10)) as client:
            with pytest.raises(Unreachable) as info:
                await client.count_flow_runs()
        assert str(info.value).startswith(
            f"POST {server.api_url}/flow_runs/count: TLS certificate verification failed ("
        )
        assert client.stats.retries == 0
        assert server.requests == []
        # With the certificate named, the same server is reached.
        trusted = ConnectionSettings(api_url=server.api_url, ssl_cert_file=str(server.cert_file))
        async with PrefectClient(trusted, bulk=False) as client:
            assert (await client.server_info()).version == "3.9.1"


def test_a_certificate_file_that_cannot_be_read_is_a_settings_error(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(SettingsError) as info:
        PrefectClient(settings(ssl_cert_file=str(missing)))
    assert str(info.value) == (
        f"PREFECT_API_SSL_CERT_FILE: cannot read {missing}: No such file or directory"
    )
    garbled = tmp_path / "garbled.pem"
    garbled.write_text("not a certificate\n")
    with pytest.raises(SettingsError) as info:
        PrefectClient(settings(ssl_cert_file=str(garbled)))
    assert str(info.value) == (
        f"PREFECT_API_SSL_CERT_FILE: {garbled} holds no certificate in PEM format"
    )


# -- header values httpx cannot send ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (KEY + "\n", "a line break"),
        ("pnu_\r\nX-Injected: 1", "a line break"),
        ("pnu_clé0123456789", "a non-ASCII character"),
        ("pnu_\x00abc0123456", "a control character"),
    ],
)
def test_an_api_key_that_cannot_be_sent_is_a_settings_error(key: str, problem: str) -> None:
    with pytest.raises(SettingsError) as info:
        PrefectClient(ConnectionSettings(api_url="http://prefect.test/api", api_key=Secret(key)))
    assert str(info.value) == (
        f"PREFECT_API_KEY contains {problem}, which an HTTP header cannot carry;"
        " set the key again without it (its value is not shown)"
    )


def test_a_custom_header_that_cannot_be_sent_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as info:
        PrefectClient(settings(custom_headers={"X-Team": "öps"}))
    assert str(info.value) == (
        "PREFECT_CLIENT_CUSTOM_HEADERS: the value of 'X-Team' contains a non-ASCII character,"
        " which an HTTP header cannot carry (the value is not shown)"
    )
    with pytest.raises(SettingsError) as info:
        PrefectClient(settings(custom_headers={"X Team": "ops"}))
    assert str(info.value) == (
        "PREFECT_CLIENT_CUSTOM_HEADERS: 'X Team' is not a valid HTTP header name"
    )
