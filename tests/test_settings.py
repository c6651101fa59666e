"""Connection settings: arguments, then environment, then the active profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import SettingsError
from runner.settings import DEFAULT_API_URL, ConnectionSettings, Secret, resolve_settings

PROFILES = """
active = "local"

[profiles.local]
PREFECT_API_URL = "http://127.0.0.1:4200/api"

[profiles.cloud]
PREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a1/workspaces/w1"
PREFECT_API_KEY = "pnu_fromprofile"
PREFECT_API_REQUEST_TIMEOUT = 12
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "profiles.toml").write_text(PROFILES)
    return tmp_path


def test_defaults_without_anything() -> None:
    s = resolve_settings(env={"PREFECT_HOME": "/nonexistent"})
    assert s.api_url == DEFAULT_API_URL
    assert s.api_key is None and s.auth_string is None
    assert s.request_timeout == 60.0
    assert s.sources["PREFECT_API_URL"] == "default"


def test_active_profile_is_read(home: Path) -> None:
    s = resolve_settings(env={"PREFECT_HOME": str(home)})
    assert s.api_url == "http://127.0.0.1:4200/api"
    assert s.sources["PREFECT_API_URL"] == "profile 'local'"


def test_prefect_profile_selects_another_profile(home: Path) -> None:
    s = resolve_settings(env={"PREFECT_HOME": str(home), "PREFECT_PROFILE": "cloud"})
    assert s.is_cloud
    assert s.api_key == Secret("pnu_fromprofile")
    assert s.request_timeout == 12.0


def test_environment_beats_profile_and_arguments_beat_environment(home: Path) -> None:
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILE": "cloud",
        "PREFECT_API_URL": "http://env.example:4200/api/",
        "PREFECT_API_KEY": "pnu_fromenv",
    }
    s = resolve_settings(env=env)
    assert s.api_url == "http://env.example:4200/api"  # trailing slash dropped
    assert s.api_key == Secret("pnu_fromenv")
    assert s.sources["PREFECT_API_KEY"] == "environment"
    assert s.request_timeout == 12.0  # still from the profile
    s = resolve_settings(api_url="http://arg.example/api", api_key="pnu_arg", env=env)
    assert s.api_url == "http://arg.example/api"
    assert s.api_key == Secret("pnu_arg")
    assert s.sources["PREFECT_API_URL"] == "argument"


def test_every_environment_variable() -> None:
    s = resolve_settings(
        env={
            "PREFECT_HOME": "/nonexistent",
            "PREFECT_API_URL": "https://prefect.internal/api",
            "PREFECT_API_AUTH_STRING": "admin:pass",
            "PREFECT_CLIENT_CUSTOM_HEADERS": '{"X-Team": "ops"}',
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true",
            "PREFECT_API_SSL_CERT_FILE": "/etc/ssl/ca.pem",
            "PREFECT_API_REQUEST_TIMEOUT": "5.5",
        }
    )
    assert s.auth_string == Secret("admin:pass")
    assert dict(s.custom_headers) == {"X-Team": "ops"}
    assert s.tls_insecure_skip_verify is True
    assert s.ssl_cert_file == "/etc/ssl/ca.pem"
    assert s.request_timeout == 5.5
    assert not s.is_cloud


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "PREFECT_API_URL",
            "localhost:4200",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api, got 'localhost:4200'",
        ),
        (
            "PREFECT_API_REQUEST_TIMEOUT",
            "soon",
            "PREFECT_API_REQUEST_TIMEOUT: expected a number of seconds, got 'soon'",
        ),
        (
            "PREFECT_API_REQUEST_TIMEOUT",
            "-1",
            "PREFECT_API_REQUEST_TIMEOUT: expected a positive number of seconds, got '-1'",
        ),
        (
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY",
            "maybe",
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY: expected true or false, got 'maybe'",
        ),
        (
            "PREFECT_CLIENT_CUSTOM_HEADERS",
            "{nope",
            "PREFECT_CLIENT_CUSTOM_HEADERS: expected a JSON object, Expecting property name enclosed in double quotes",
        ),
        (
            "PREFECT_CLIENT_CUSTOM_HEADERS",
            '["a"]',
            "PREFECT_CLIENT_CUSTOM_HEADERS: expected a JSON object of string names to string values",
        ),
        (
            "PREFECT_API_URL",
            "http://127.0.0.1:abc/api",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api; the port of 127.0.0.1 is not a number from 1 to 65535",
        ),
        (
            "PREFECT_API_URL",
            "http://127.0.0.1:99999/api",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api; the port of 127.0.0.1 is not a number from 1 to 65535",
        ),
        (
            "PREFECT_API_URL",
            "http://user:urlpass@prefect.internal:0/api",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api; the port of prefect.internal is not a number from 1 to 65535",
        ),
        (
            "PREFECT_API_URL",
            "http://[::1/api",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api; its host is not valid (an IPv6 address is written in brackets: http://[::1]:4200/api)",
        ),
        (
            "PREFECT_API_URL",
            "http://:4200/api",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api; ':4200' names no host",
        ),
        (
            "PREFECT_API_URL",
            "http://user:url pass@prefect.internal/api",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api; this one holds a space or control character",
        ),
        (
            "PREFECT_API_URL",
            "ftp://user:urlpass@prefect.internal:abc/api",
            "PREFECT_API_URL: expected an http(s) URL such as http://127.0.0.1:4200/api, got 'ftp://prefect.internal:abc/api'",
        ),
        (
            "PREFECT_API_KEY",
            "pnu_secret\n",
            "PREFECT_API_KEY: holds a line break (character 11 of 11); an API key is printable ASCII",
        ),
        (
            "PREFECT_API_KEY",
            "pnu_s\x00cret",
            "PREFECT_API_KEY: holds a control character (character 6 of 10); an API key is printable ASCII",
        ),
        (
            "PREFECT_API_KEY",
            "pnu_sécret",
            "PREFECT_API_KEY: holds a non-ASCII character (character 6 of 10); an API key is printable ASCII",
        ),
        (
            "PREFECT_API_AUTH_STRING",
            "admin:pass\r\n",
            "PREFECT_API_AUTH_STRING: holds a carriage return (character 11 of 12); it cannot hold control characters",
        ),
        (
            "PREFECT_API_SSL_CERT_FILE",
            "/nonexistent/ca.pem",
            "PREFECT_API_SSL_CERT_FILE: no such file: /nonexistent/ca.pem",
        ),
        (
            "PREFECT_API_SSL_CERT_FILE",
            __file__,
            f"PREFECT_API_SSL_CERT_FILE: cannot be read as PEM CA certificates: {__file__} (NO_CERTIFICATE_OR_CRL_FOUND)",
        ),
        (
            "PREFECT_CLIENT_CUSTOM_HEADERS",
            '{"X-Team": "ops\\nX-Evil: 1"}',
            "PREFECT_CLIENT_CUSTOM_HEADERS: the value of X-Team holds a line break (character 4 of 13)",
        ),
        (
            "PREFECT_CLIENT_CUSTOM_HEADERS",
            '{"X Team": "ops"}',
            "PREFECT_CLIENT_CUSTOM_HEADERS: 'X Team' is not a header name",
        ),
    ],
)
def test_bad_values_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        resolve_settings(env={"PREFECT_HOME": "/nonexistent", name: value})
    assert str(info.value) == message


def test_unknown_profile_is_an_error(home: Path) -> None:
    with pytest.raises(SettingsError) as info:
        resolve_settings(env={"PREFECT_HOME": str(home), "PREFECT_PROFILE": "nope"})
    assert str(info.value) == (
        f"PREFECT_PROFILE: no profile named 'nope' in {home / 'profiles.toml'} (profiles: cloud, local)"
    )


def test_secrets_never_show() -> None:
    s = resolve_settings(
        env={
            "PREFECT_HOME": "/nonexistent",
            "PREFECT_API_URL": "https://user:urlpass@prefect.internal/api",
            "PREFECT_API_KEY": "pnu_topsecret",
            "PREFECT_API_AUTH_STRING": "admin:authpass",
        }
    )
    shown = f"{s!r} {s} {s.api_key} {s.auth_string!r} {s.display_url}"
    for secret in ("pnu_topsecret", "authpass", "urlpass"):
        assert secret not in shown
    assert s.display_url == "https://prefect.internal/api"


def test_cloud_urls() -> None:
    s = ConnectionSettings(api_url="https://api.prefect.cloud/api/accounts/abc/workspaces/def")
    assert s.is_cloud


def test_a_non_ascii_auth_string_is_sent_as_prefect_sends_it() -> None:
    """Base64 of its UTF-8 bytes, as Prefect's own client does: not an error."""
    s = resolve_settings(
        env={"PREFECT_HOME": "/nonexistent", "PREFECT_API_AUTH_STRING": "admin:pässword"}
    )
    assert s.auth_string == Secret("admin:pässword")


def test_the_cert_file_is_not_checked_when_verification_is_off() -> None:
    s = resolve_settings(
        env={
            "PREFECT_HOME": "/nonexistent",
            "PREFECT_API_SSL_CERT_FILE": "/nonexistent/ca.pem",
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true",
        }
    )
    assert s.tls_insecure_skip_verify is True


def test_bad_settings_fail_the_cli_before_anything_is_sent() -> None:
    """A newline in the key used to be retried for 48 s, then called "is the server running?"."""
    import os
    import subprocess
    import sys
    import time

    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "runner.cli", "doctor"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PREFECT_HOME": "/nonexistent",
            "PREFECT_API_URL": "http://127.0.0.1:9/api",
            "PREFECT_API_KEY": "pnu_topsecret\n",
        },
    )
    assert time.monotonic() - started < 20
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "runner: PREFECT_API_KEY: holds a line break (character 14 of 14); an API key is"
        " printable ASCII\n"
    )
