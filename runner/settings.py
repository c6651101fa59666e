"""Connection settings, resolved the way Prefect users already configure them.

Each setting comes from the first of: an explicit argument, the environment, the active
profile in ``$PREFECT_HOME/profiles.toml`` (``PREFECT_PROFILE`` or the file's ``active``
key), then a default. Secrets are held in :class:`Secret`, whose ``repr`` and ``str`` never
show the value.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from runner.errors import SettingsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

DEFAULT_API_URL = "http://127.0.0.1:4200/api"
DEFAULT_TIMEOUT = 60.0

ENV_NAMES = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_CLIENT_CUSTOM_HEADERS",
    "PREFECT_API_TLS_INSECURE_SKIP_VERIFY",
    "PREFECT_API_SSL_CERT_FILE",
    "PREFECT_API_REQUEST_TIMEOUT",
)


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the one place that puts it in a header."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the Prefect API is and how to talk to it."""

    api_url: str = DEFAULT_API_URL
    api_key: Secret | None = None
    auth_string: Secret | None = None
    custom_headers: Mapping[str, str] = field(default_factory=dict)
    tls_insecure_skip_verify: bool = False
    ssl_cert_file: str | None = None
    request_timeout: float = DEFAULT_TIMEOUT
    #: Which source each setting came from ("argument", "environment", "profile 'x'", "default").
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        return (
            f"ConnectionSettings(api_url={self.display_url!r}, api_key={self.api_key!r},"
            f" auth_string={self.auth_string!r}, custom_headers={sorted(self.custom_headers)!r},"
            f" tls_insecure_skip_verify={self.tls_insecure_skip_verify!r},"
            f" ssl_cert_file={self.ssl_cert_file!r}, request_timeout={self.request_timeout!r})"
        )

    __str__ = __repr__

    @property
    def display_url(self) -> str:
        """The API URL with any credentials embedded in it removed: safe to print."""
        return redact_url(self.api_url)

    @property
    def is_cloud(self) -> bool:
        """True for Prefect Cloud workspace URLs (``…/accounts/<id>/workspaces/<id>``)."""
        path = urlsplit(self.api_url).path
        return "/accounts/" in path and "/workspaces/" in path


def redact_url(url: str) -> str:
    """Drop ``user:password@`` from a URL so it can be shown."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]  # host and port as written
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _parse_timeout(name: str, raw: str | float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: expected a positive number of seconds, got {raw!r}")
    return value


def _parse_headers(name: str, raw: str | Mapping[str, Any]) -> dict[str, str]:
    if isinstance(raw, Mapping):
        data: Any = dict(raw)
    else:
        try:
            data = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{name}: expected a JSON object, {exc.msg}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise SettingsError(f"{name}: expected a JSON object of string names to string values")
    for header, value in data.items():
        if not _HEADER_NAME.fullmatch(header):
            raise SettingsError(f"{name}: {header!r} is not a header name")
        problem = _bad_character(value, ascii_only=True)
        if problem is not None:  # a header's value may be a token: not shown
            raise SettingsError(f"{name}: the value of {header} holds {problem}")
    return data


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token


def _parse_url(name: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    expected = f"expected an http(s) URL such as {DEFAULT_API_URL}"
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        # Not shown: the URL may hold credentials, and the broken part could be among them.
        raise SettingsError(f"{name}: {expected}; this one holds a space or control character")
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": a bracket left open
        raise SettingsError(
            f"{name}: {expected}; its host is not valid (an IPv6 address is written in"
            " brackets: http://[::1]:4200/api)"
        ) from None
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise SettingsError(f"{name}: {expected}, got {redact_url(url)!r}")
    host = parts.netloc.rpartition("@")[2]  # host and port: the credentials stay out
    if not parts.hostname:
        raise SettingsError(f"{name}: {expected}; {host!r} names no host")
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if port == 0:
        raise SettingsError(
            f"{name}: {expected}; the port of {parts.hostname} is not a number from 1 to 65535"
        )
    try:
        import httpx

        httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise SettingsError(f"{name}: {expected}; {host!r} is not a valid host") from None
    return url


def _parse_secret(name: str, raw: str, *, header: bool) -> Secret:
    """An API key goes into a header as it is: printable ASCII only. An auth string is sent
    base64-encoded (as UTF-8, as Prefect does): anything but control characters."""
    problem = _bad_character(raw, ascii_only=header)
    if problem is not None:
        rule = "an API key is printable ASCII" if header else "it cannot hold control characters"
        raise SettingsError(f"{name}: holds {problem}; {rule}")
    return Secret(raw)


def _bad_character(text: str, *, ascii_only: bool) -> str | None:
    """What is wrong in ``text`` and where, without showing it (it may be a secret)."""
    names = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab"}
    for position, char in enumerate(text, 1):
        if not char.isprintable():
            what = names.get(char, "a control character")
        elif ascii_only and not char.isascii():
            what = "a non-ASCII character"
        else:
            continue
        return f"{what} (character {position} of {len(text)})"
    return None


def _parse_cert_file(name: str, raw: str) -> str:
    """The CA bundle must exist and hold certificates: found now, not after 48 s of retries."""
    path = Path(raw)  # as httpx will open it
    if path.is_dir():
        return raw
    try:
        import ssl

        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise SettingsError(f"{name}: no such file: {raw}") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise SettingsError(
            f"{name}: cannot be read as PEM CA certificates: {raw} ({reason})"
        ) from None
    return raw


def prefect_home(env: Mapping[str, str]) -> Path:
    """``$PREFECT_HOME``, or ``~/.prefect`` as Prefect itself defaults."""
    raw = env.get("PREFECT_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".prefect"


def load_profile(env: Mapping[str, str]) -> tuple[str | None, dict[str, Any]]:
    """The active profile's name and settings, or ``(None, {})`` when there is none."""
    path = (
        Path(env["PREFECT_PROFILES_PATH"])
        if env.get("PREFECT_PROFILES_PATH")
        else (prefect_home(env) / "profiles.toml")
    )
    if not path.is_file():
        return None, {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the Prefect profiles file: {exc}") from None
    name = env.get("PREFECT_PROFILE") or data.get("active")
    profiles = data.get("profiles", {})
    if not name:
        return None, {}
    if name not in profiles:
        if env.get("PREFECT_PROFILE"):
            raise SettingsError(
                f"PREFECT_PROFILE: no profile named {name!r} in {path}"
                f" (profiles: {', '.join(sorted(profiles)) or 'none'})"
            )
        return None, {}
    settings = profiles[name]
    if not isinstance(settings, dict):
        raise SettingsError(f"{path}: profile {name!r} is not a table")
    return str(name), settings


def resolve_settings(
    *,
    api_url: str | None = None,
    api_key: str | None = None,
    auth_string: str | None = None,
    custom_headers: Mapping[str, str] | None = None,
    tls_insecure_skip_verify: bool | None = None,
    ssl_cert_file: str | None = None,
    request_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ConnectionSettings:
    """Resolve connection settings: arguments, then environment, then the active profile.

    ``env`` defaults to ``os.environ``; tests pass their own mapping.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    profile_name, profile = load_profile(environ)
    explicit: dict[str, Any] = {
        "PREFECT_API_URL": api_url,
        "PREFECT_API_KEY": api_key,
        "PREFECT_API_AUTH_STRING": auth_string,
        "PREFECT_CLIENT_CUSTOM_HEADERS": custom_headers,
        "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": tls_insecure_skip_verify,
        "PREFECT_API_SSL_CERT_FILE": ssl_cert_file,
        "PREFECT_API_REQUEST_TIMEOUT": request_timeout,
    }
    sources: dict[str, str] = {}

    def pick(name: str) -> Any:
        if explicit[name] is not None:
            sources[name] = "argument"
            return explicit[name]
        if environ.get(name) not in (None, ""):
            sources[name] = "environment"
            return environ[name]
        if profile.get(name) not in (None, ""):
            sources[name] = f"profile {profile_name!r}"
            return profile[name]
        sources[name] = "default"
        return None

    url = pick("PREFECT_API_URL")
    key = pick("PREFECT_API_KEY")
    auth = pick("PREFECT_API_AUTH_STRING")
    headers = pick("PREFECT_CLIENT_CUSTOM_HEADERS")
    skip_verify = pick("PREFECT_API_TLS_INSECURE_SKIP_VERIFY")
    cert = pick("PREFECT_API_SSL_CERT_FILE")
    timeout = pick("PREFECT_API_REQUEST_TIMEOUT")
    skip_verify_value = (
        skip_verify
        if isinstance(skip_verify, bool)
        else _parse_bool("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", str(skip_verify))
        if skip_verify is not None
        else False
    )
    return ConnectionSettings(
        api_url=_parse_url("PREFECT_API_URL", str(url)) if url is not None else DEFAULT_API_URL,
        api_key=_parse_secret("PREFECT_API_KEY", str(key), header=True)
        if key is not None
        else None,
        auth_string=(
            _parse_secret("PREFECT_API_AUTH_STRING", str(auth), header=False)
            if auth is not None
            else None
        ),
        custom_headers=(
            _parse_headers("PREFECT_CLIENT_CUSTOM_HEADERS", headers) if headers is not None else {}
        ),
        tls_insecure_skip_verify=skip_verify_value,
        ssl_cert_file=(
            _parse_cert_file("PREFECT_API_SSL_CERT_FILE", str(cert))
            if cert is not None and not skip_verify_value
            else (str(cert) if cert is not None else None)
        ),
        request_timeout=(
            _parse_timeout("PREFECT_API_REQUEST_TIMEOUT", timeout)
            if timeout is not None
            else DEFAULT_TIMEOUT
        ),
        sources=sources,
    )
