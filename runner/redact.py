"""The one place that takes secrets out of text before it is shown, logged or stored.

:func:`redact` removes every form a secret takes on its way through runner and its HTTP
library:

- the configured secrets themselves (API key, auth string, the password half of it, URL
  passwords and sensitive custom header values) and their base64 ``Basic`` form, registered
  with :func:`register_secret` / :func:`register_settings` when a client is made;
- credentials in URLs (``http://user:pass@host`` becomes ``http://host``, as
  :attr:`ConnectionSettings.display_url` shows it);
- ``Authorization`` header values (``Bearer …``, ``Basic …``, and whatever follows an
  ``Authorization:`` header name, as a server or a proxy may echo it back);
- sensitive query parameters (``?token=``, ``api_key=``, ``key=``, ``access_token=``,
  ``signature=``, …): the name stays, the value becomes ``***``.

:class:`RedactingFilter` applies it to log records (the message with its arguments merged,
the formatted traceback and stack), for the handler the CLI installs: so httpx's and
httpcore's own log lines are cleaned as well as runner's.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from runner.settings import ConnectionSettings

#: What a secret is replaced with.
MASK = "***"
#: Registered secrets shorter than this are not replaced where they occur as plain text (a
#: two-letter "password" would blank out every word that contains it); the patterns below
#: still remove them from URLs and headers.
MIN_SECRET_LENGTH = 4

# user:pass@ right after a scheme: up to the last "@" before the path, query or fragment.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s\"'<>\\]*@")

# An Authorization header's name followed by its value (as in "Authorization: Bearer x",
# {'authorization': 'Basic x'}, (b'authorization', b'Bearer x') or authorization=x).
_AUTH_HEADER = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization|\bx-api-key)"
    r"(?P<sep>[\"']?\s*[:=]\s*b?[\"']?|[\"']\s*,\s*b?[\"'])"
    r"(?:(?P<scheme>bearer|basic|token|digest)\s+)?"
    r"(?P<value>[^\s\"',;)}\]]+)",
    re.IGNORECASE,
)

# "Bearer <token>" or "Basic <base64>" wherever they appear.
_AUTH_SCHEME = re.compile(
    r"\b(?P<scheme>bearer|basic)(?P<sep>\s+)(?P<value>[A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE
)
# A credential is not a plain word: "basic auth" and "Bearer token" are prose.
_PLAIN_WORD = re.compile(r"[A-Za-z][a-z]*")

# name=value in a query string whose name says it carries a secret.
_SENSITIVE_QUERY = re.compile(
    r"(?P<lead>[?&;])"
    r"(?P<name>[A-Za-z0-9_.\-\[\]]*?"
    r"(?:token|key|secret|passw|pwd|auth|sig|credential|session)"
    r"[A-Za-z0-9_.\-\[\]]*)"
    r"=(?P<value>[^&#\s\"'<>]*)",
    re.IGNORECASE,
)
# Custom headers whose values are treated as secrets.
_SENSITIVE_HEADER_NAME = re.compile(
    r"auth|token|key|secret|passw|cookie|session|credential|signature", re.IGNORECASE
)


class _Registry:
    """The secrets registered so far, as one compiled pattern (swapped whole, so readers
    in other threads always see a complete one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        new = {v for v in values if len(v) >= MIN_SECRET_LENGTH}
        with self._lock:
            if new <= self._secrets:
                return
            self._secrets = self._secrets | new
            ordered = sorted(self._secrets, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def clear(self) -> None:
        with self._lock:
            self._secrets = frozenset()
            self._pattern = None

    @property
    def pattern(self) -> re.Pattern[str] | None:
        return self._pattern


_registry = _Registry()


def secret_forms(value: str) -> list[str]:
    """The forms a secret takes on the wire: itself, base64 (a ``Basic`` header), and for a
    ``user:password`` pair the password alone, as given and percent-encoded."""
    forms = [value]
    with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: cannot be sent anyway
        forms.append(base64.b64encode(value.encode()).decode())
    _user, sep, password = value.partition(":")
    if sep and password:
        forms += [password, quote(password, safe="")]
    return forms


def register_secret(value: str | None) -> None:
    """Remember a secret, so :func:`redact` removes it (in all its forms) wherever it occurs."""
    if value:
        _registry.add(secret_forms(value))


def register_url(url: str) -> None:
    """Remember the credentials and sensitive query values a URL carries."""
    try:
        parts = urlsplit(url)
        password = parts.password
        username = parts.username
    except ValueError:
        return
    if password:
        register_secret(f"{unquote(username or '')}:{unquote(password)}")
        register_secret(f"{username or ''}:{password}")
    for match in _SENSITIVE_QUERY.finditer("?" + parts.query):
        register_secret(unquote(match["value"]))
        register_secret(match["value"])


def register_headers(headers: Mapping[str, str]) -> None:
    """Remember the values of headers whose names say they carry a secret."""
    for name, value in headers.items():
        if _SENSITIVE_HEADER_NAME.search(name):
            register_secret(value)


def register_settings(settings: ConnectionSettings) -> None:
    """Remember every secret a set of connection settings holds."""
    if settings.api_key is not None:
        register_secret(settings.api_key.reveal())
    if settings.auth_string is not None:
        register_secret(settings.auth_string.reveal())
    register_url(settings.api_url)
    register_headers(settings.custom_headers)


def forget_secrets() -> None:
    """Forget every registered secret (for tests)."""
    _registry.clear()


def _auth_header(match: re.Match[str]) -> str:
    if not match["scheme"] and _PLAIN_WORD.fullmatch(match["value"]):
        return match[0]  # "Authorization: required" is prose
    scheme = f"{match['scheme']} " if match["scheme"] else ""
    return f"{match['name']}{match['sep']}{scheme}{MASK}"


def _auth_scheme(match: re.Match[str]) -> str:
    if _PLAIN_WORD.fullmatch(match["value"]) or match["value"] == MASK:
        return match[0]
    return f"{match['scheme']}{match['sep']}{MASK}"


def redact_secrets(text: str) -> str:
    """``text`` with every registered secret form masked, and nothing else changed (for user
    data written to a file of runner's: logs and parameters keep their words). Returns
    ``text`` itself when it holds none."""
    pattern = _registry.pattern
    if not text or pattern is None or not pattern.search(text):
        return text
    return pattern.sub(MASK, text)


def redact(text: str) -> str:
    """``text`` with every secret form removed (see the module's documentation)."""
    if not text:
        return text
    pattern = _registry.pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _URL_USERINFO.sub(r"\g<scheme>", text)
    text = _AUTH_HEADER.sub(_auth_header, text)
    text = _AUTH_SCHEME.sub(_auth_scheme, text)
    return _SENSITIVE_QUERY.sub(rf"\g<lead>\g<name>={MASK}", text)


class RedactingFilter(logging.Filter):
    """Redacts a log record in place: its message with the arguments merged, its traceback
    and its stack. Installed on a handler, it covers every logger that handler prints for."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: show what there is, cleaned
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
