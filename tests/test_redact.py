"""Secrets never reach the screen: every form, through the real CLI with debug logging on.

A scripted server (tests/support/fake_server.py) echoes back what a careless server or proxy does:
the Authorization header in an error's detail and in a response header (which httpcore logs
at debug level), and a login URL with tokens in its query string. The real Prefect server
cannot be made to do that; tests/test_secrets.py covers the paths it can.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.redact import (
    RedactingFilter,
    forget_secrets,
    redact,
    register_secret,
    register_url,
)
from tests.support.cli import run_cli
from tests.support.fake_server import Answer, FakeServer, Seen, json_answer

BIN = Path(sys.executable).parent
KEY = "pnu_Echo7kQ2xV9mR4tL8wZ3nB6"
AUTH = "operator:echo-Pw5jH8cN2q"
URL_PASSWORD = "urlpw-Echo3Fv7"
QUERY_SECRETS = {
    "token": "qtok-Hs82kd9",
    "api_key": "qkey-Lm37Xz1",
    "key": "qk2-Pq94Rt6",
    "access_token": "qat-Wv51Bn4",
}
LOGIN_URL = "https://sso.example/login?next=%2Fapi&" + "&".join(
    f"{name}={value}" for name, value in QUERY_SECRETS.items()
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(autouse=True)
def _no_registered_secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


# -- the function ---------------------------------------------------------------------------


def test_url_credentials_are_dropped() -> None:
    line = 'HTTP Request: GET http://user:p@ss-w0rd@127.0.0.1:4200/api/x "HTTP/1.1 200 OK"'
    assert redact(line) == 'HTTP Request: GET http://127.0.0.1:4200/api/x "HTTP/1.1 200 OK"'
    assert redact("see https://u:pw@host") == "see https://host"


def test_authorization_values_are_masked() -> None:
    assert redact("you sent Authorization: Bearer pnu_abc123XYZ to /api") == (
        "you sent Authorization: Bearer *** to /api"
    )
    assert redact(f"header Basic {b64('a:b-123')}") == "header Basic ***"
    assert redact("[(b'authorization', b'Bearer abcdefghXYZ'), (b'x', b'y')]") == (
        "[(b'authorization', b'Bearer ***'), (b'x', b'y')]"
    )
    assert redact("{'Authorization': 'rawtoken123'}") == "{'Authorization': '***'}"
    assert redact('{"x-api-key": "k-1234567"}') == '{"x-api-key": "***"}'


def test_prose_is_left_alone() -> None:
    for text in (
        "HTTP 401: the server refused the credentials. Check PREFECT_API_KEY (Prefect Cloud)"
        " or PREFECT_API_AUTH_STRING (a self-hosted server with basic auth).",
        "missing authorization, please log in; Authorization: required; Bearer token expired",
        "is the server at http://127.0.0.1:9/api running?",
        "GET http://127.0.0.1:4200/api/csrf-token?client=8d0c9d8e-8a7e-4e41-a3f5-5b7ab3fa0b1c",
    ):
        assert redact(text) == text


def test_sensitive_query_parameters_keep_their_name_not_their_value() -> None:
    assert redact(LOGIN_URL) == (
        "https://sso.example/login?next=%2Fapi&token=***&api_key=***&key=***&access_token=***"
    )
    assert redact("x?X-Amz-Signature=abc&sort=ID_DESC&client_secret=s3") == (
        "x?X-Amz-Signature=***&sort=ID_DESC&client_secret=***"
    )


def test_registered_secrets_go_in_every_form() -> None:
    register_secret(KEY)
    register_secret(AUTH)
    register_url(f"http://me:{URL_PASSWORD}@host/api?token=abcd1234")
    text = (
        f"{KEY} {AUTH} {b64(AUTH)} {AUTH.split(':')[1]} {URL_PASSWORD} {b64('me:' + URL_PASSWORD)}"
        " abcd1234"
    )
    assert redact(text) == " ".join(["***"] * 7)


def test_the_log_filter_cleans_arguments_and_tracebacks() -> None:
    register_secret(KEY)
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        "HTTP Request: %s %s",
        ("GET", f"http://u:pw@h/x?key={KEY}"),
        None,
    )
    try:
        raise ValueError(f"failed with Bearer {KEY}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "HTTP Request: GET http://h/x?key=***" in text
    assert "ValueError: failed with Bearer ***" in text
    assert KEY not in text and "pw" not in text


# -- through the CLI ------------------------------------------------------------------------


def echo(seen: Seen) -> Answer:
    """Refuse everything, repeating the credentials and a login link full of tokens."""
    if seen.path.startswith("/api/csrf-token"):
        return json_answer(404, {"detail": "Not Found"})
    auth = seen.headers.get("authorization", "")
    return json_answer(
        500,
        {"detail": f"upstream refused Authorization: {auth}; sign in again at {LOGIN_URL}"},
        **{"x-echo-authorization": auth, "x-echo-location": LOGIN_URL},
    )


def runner(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    debug = {"RUNNER_LOG": "debug", "PREFECT_HOME": str(cwd / "home"), **env}
    return run_cli(*args, cwd=cwd, env=debug, timeout=120)


CASES = {
    "api-key": ({"PREFECT_API_KEY": KEY}, "", [KEY], "Bearer ***"),
    "auth-string": (
        {"PREFECT_API_AUTH_STRING": AUTH},
        "",
        [AUTH, b64(AUTH), AUTH.split(":", 1)[1]],
        "Basic ***",
    ),
    "url-credentials": (
        {},
        f"operator:{URL_PASSWORD}@",
        [URL_PASSWORD, b64(f"operator:{URL_PASSWORD}")],
        "Basic ***",
    ),
    "query-tokens": ({}, "", list(QUERY_SECRETS.values()), ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_secret_form_reaches_the_output_with_debug_logging(case: str, tmp_path: Path) -> None:
    env, userinfo, secrets, auth_shown = CASES[case]
    playbook = tmp_path / "p.yaml"
    playbook.write_text(
        "version: 1\nname: echo\ndefaults: {retry: {max_attempts: 1}}\nsteps:\n"
        "  - name: clean\n    select: {flows: f, state: {type: COMPLETED}}\n    action: delete\n"
    )
    (tmp_path / "home").mkdir()
    with FakeServer(echo) as server:
        url = server.api_url.replace("://", f"://{userinfo}")
        results = {
            "doctor": runner(["doctor"], tmp_path, PREFECT_API_URL=url, **env),
            "plan": runner(["plan", str(playbook)], tmp_path, PREFECT_API_URL=url, **env),
        }
    error = (
        f"GET http://127.0.0.1:{server.port}/api/admin/version: HTTP 500: upstream refused"
        f" Authorization: {auth_shown}; sign in again at https://sso.example/login?next=%2Fapi"
        "&token=***&api_key=***&key=***&access_token=***\n"
    )
    assert f"server:       unreachable or refused: {error}" in results["doctor"].stdout
    assert results["plan"].stderr.endswith(f"runner: {error}")
    for name, result in results.items():
        shown = result.stdout + result.stderr
        assert result.returncode == 1, (name, shown)
        # httpx's and httpcore's own lines were printed (cleaned), echoed header included.
        assert f"INFO httpx: HTTP Request: GET http://127.0.0.1:{server.port}/api/" in shown
        assert f"(b'x-echo-authorization', b'{auth_shown}')" in shown, name
        for secret in secrets:
            assert secret not in shown, f"{case}: {secret[:6]}... appears in the output of {name}"
