"""The async Prefect REST client: the only module that sends HTTP requests.

Reads page through the server's 200-row limit by themselves. Writes are safe to retry:
state changes carry a ``transition_id`` (the server refuses a duplicate; a forced change is
checked against the run before it is sent again), creates carry an idempotency key, and a
delete answered 404 means the run is already gone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import importlib.util
import json as json_module
import logging
import re
import ssl
import sys
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import quote, unquote, urlsplit
from uuid import UUID

import anyio
import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json

from runner import __version__
from runner.errors import (
    APIError,
    InvalidRequest,
    NotFound,
    OrchestrationRejected,
    ServerError,
    SettingsError,
    Unauthorized,
    Unreachable,
    UnsupportedByServer,
)
from runner.filters import FlowRunFilter, FlowRunQuery, FlowRunSort, by_ids
from runner.models import (
    BulkStateResult,
    ConcurrencyLimit,
    Deployment,
    Flow,
    FlowRun,
    LeaseGrant,
    LeaseRefused,
    OrchestrationResult,
    ServerInfo,
    SetStateStatus,
    State,
    StateType,
)
from runner.paging import (
    Key,
    Keyset,
    PageRequest,
    PagingError,
    Phase,
    bounds_probes,
    nulls,
    page_keys,
    slices,
)
from runner.ratelimit import RateLimiter
from runner.redact import redact, register_secret, register_settings
from runner.retry import (
    MalformedAnswer,
    RetryableStatus,
    RetryPolicy,
    is_no_connection,
    retrying,
)
from runner.settings import ConnectionSettings, resolve_settings
from runner.words import plural


def _record_sniffio_missing() -> None:
    """httpcore imports ``sniffio`` inside ``current_async_library()``, which it calls for
    every lock and semaphore it makes (about four a request). Without sniffio installed
    (neither httpx 0.28 nor anyio 4 needs it), each of those imports searched ``sys.path``
    again before falling back to asyncio: 9,326 searches for 2,170 requests, about 0.3 ms of
    client CPU a request (1,000 recreates on PostgreSQL: 5.9 and 6.3 s of CPU before, 5.5 and
    5.2 s after). Recorded as missing, the import fails at once, as it would anyway. A process
    that has sniffio installed keeps it."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


_record_sniffio_missing()


log = logging.getLogger("runner.client")

#: The REST API version runner speaks (Prefect 2.20 and 3.x servers both report 0.8.4).
API_VERSION = "0.8.4"
#: The most runs one page or one bulk call may carry.
MAX_PAGE_SIZE = 200
MAX_BULK_SIZE = 50
#: The most names of one kind read to check a playbook's names against.
MAX_NAMES = 20_000
#: The first Prefect release with ``/flow_runs/bulk_delete`` and ``/flow_runs/bulk_set_state``.
BULK_ROUTES_SINCE = (3, 6, 16)

DUPLICATE_TRANSITION_REASON = "This run has already made this state transition."
#: The most pages a slice read at once holds ahead of the reader (memory: this many pages a
#: slice in flight, whatever the selection's size).
_PAGES_AHEAD = 4
#: The sorts read by keyset (None: the default, oldest expected start first).
_KEYSET_SORTS = (None, FlowRunSort.EXPECTED_START_TIME_ASC, FlowRunSort.EXPECTED_START_TIME_DESC)
_LIMIT_RE = re.compile(r"less than or equal to (\d+)")
_PROTECTED_HEADERS = frozenset(
    {"authorization", "user-agent", "prefect-csrf-token", "prefect-csrf-client"}
)
#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: The methods whose successful answers always carry JSON (a DELETE or PATCH may be a 204).
_JSON_METHODS = frozenset({"GET", "POST"})
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_NOT_THE_API = (
    "; check that PREFECT_API_URL is the Prefect API (it usually ends in /api)"
    " and that no login page or proxy answers in its place"
)
_TOO_DEEP = "an answer nested too deeply to read"

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


@dataclass
class RequestStats:
    """What one client sent: every HTTP request, retries included."""

    requests: int = 0
    retries: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    malformed: int = 0


@dataclass
class _Reading:
    """What one read has handed on: each run once, at most ``remaining`` runs."""

    remaining: int | None
    # Ids as ints: half the memory of UUID objects (this grows with the runs read).
    seen: set[int] = field(default_factory=set)

    def fresh(self, page: list[FlowRun]) -> list[FlowRun]:
        """The runs of ``page`` not handed on before, within the limit: now handed on."""
        fresh: list[FlowRun] = []
        for run in page:  # a run named twice in one page is handed on once, too
            if self.remaining is not None and len(fresh) >= self.remaining:
                break
            if run.id.int not in self.seen:
                self.seen.add(run.id.int)
                fresh.append(run)
        if self.remaining is not None:
            self.remaining -= len(fresh)
        return fresh

    def left_after(self, ids: Iterable[int]) -> int | None:
        """How many runs may still be handed on once runs ``ids`` are."""
        if self.remaining is None:
            return None
        return self.remaining - len({i for i in ids if i not in self.seen})

    def done(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


class _Interrupts:
    """Where a ``KeyboardInterrupt`` (runner raises one on SIGTERM) raised in one of a read's
    request tasks goes: to the task that reads their answers, at once (raised in the request's
    task it would escape the event loop, or wait for the other requests to be answered)."""

    def __init__(self) -> None:
        self.caught: asyncio.Future[KeyboardInterrupt] = asyncio.get_running_loop().create_future()

    async def guard(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, its ``KeyboardInterrupt`` kept for :meth:`answer` (the task then ends
        cancelled). Called here, not before: a task cancelled before it starts leaves no
        coroutine never awaited."""
        try:
            return await call()
        except KeyboardInterrupt as exc:
            if not self.caught.done():
                self.caught.set_result(exc)
            raise asyncio.CancelledError from None

    async def answer(self, task: asyncio.Task[T]) -> T:
        """``task``'s answer, or the interrupt caught in any guarded task, raised here."""
        either: list[asyncio.Future[Any]] = [task, self.caught]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if self.caught.done():
            raise self.caught.result()
        return task.result()


def _quiet(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished task's error: a page read ahead and then not wanted (the reader
    stopped or failed first) must not log "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class NotSentAgain:
    """A create not sent again because its caller said so before a resend, and no run made
    with its idempotency key found. ``maybe_made``: an attempt may still be carried out (no
    answer, or an answer a proxy may give while the server goes on: 5xx), so the run is not
    found *so far*; else every attempt was refused unread (429) or never connected, and
    nothing was made."""

    maybe_made: bool


def _not_carried_out(failure: BaseException) -> bool:
    """Whether a failed attempt surely made nothing: it never connected, or was answered
    429 (a rate limit refuses before the request is read)."""
    if is_no_connection(failure):
        return True
    return isinstance(failure, RetryableStatus) and failure.response.status_code == 429


@dataclass(frozen=True)
class ProposedState:
    """A state runner asks the server to set on a run."""

    type: StateType
    name: str | None = None
    message: str | None = None
    scheduled_time: datetime | None = None

    def body(self, transition_id: UUID) -> dict[str, Any]:
        details: dict[str, Any] = {"transition_id": str(transition_id)}
        if self.scheduled_time is not None:
            details["scheduled_time"] = self.scheduled_time.isoformat()
        state: dict[str, Any] = {"type": self.type.value, "state_details": details}
        if self.name is not None:
            state["name"] = self.name
        if self.message is not None:
            state["message"] = self.message
        return state


def _version_tuple(version: str | None) -> tuple[int, int, int] | None:
    """``3.9.1`` -> (3, 9, 1); None for anything else (``3.9.1.dev4`` reads as 3.9.1)."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version or "")
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def _auth_headers(settings: ConnectionSettings) -> dict[str, str]:
    # The API key wins over the auth string, as in Prefect's own client.
    if settings.api_key is not None:
        return {"Authorization": f"Bearer {settings.api_key.reveal()}"}
    if settings.auth_string is not None:
        token = base64.b64encode(settings.auth_string.reveal().encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


#: Where ``_send_once`` keeps a 2xx answer's JSON after checking it, so it is parsed once.
_PARSED = "runner.parsed_json"


@functools.cache
def _list_of(model: type[M]) -> TypeAdapter[list[M]]:
    """The validator of a list of ``model`` (made once: a page of runs asked for it anew)."""
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def _body(response: httpx.Response) -> Any:
    """The answer's JSON: the copy ``_send_once`` already parsed, else parsed now."""
    if _PARSED in response.extensions:
        return response.extensions[_PARSED]
    return response.json()


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower()


def _describe_page(response: httpx.Response) -> str:
    """What a non-JSON answer is, in a few words: "an HTML page titled 'Sign in'"."""
    media = _media_type(response)
    if media == "text/html" or response.text.lstrip()[:15].lower().startswith(
        ("<!doctype html", "<html")
    ):
        match = _TITLE.search(response.text[:10_000])
        title = " ".join(match.group(1).split())[:80] if match else ""
        return f"an HTML page titled {title!r}" if title else "an HTML page"
    return f"a {media} answer" if media else "an answer that is not JSON"


def _detail(response: httpx.Response) -> Any:
    try:
        body = _body(response)
    except RecursionError:
        return _TOO_DEEP
    except ValueError:
        if response.text and _describe_page(response).startswith("an HTML page"):
            return _describe_page(response)
        return redact(response.text[:500])
    if isinstance(body, dict):
        for key in ("detail", "exception_detail", "exception_message"):
            if key in body:
                return body[key]
    return body


def _describe_detail(detail: Any) -> str:
    """The server's reason, as one line of text, with every secret form removed."""
    try:
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict) and "msg" in item:
                    loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                    parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
                else:
                    parts.append(str(item))
            return redact("; ".join(parts))
        return redact(str(detail))
    except RecursionError:
        return _TOO_DEEP


def _unsendable(value: str) -> str | None:
    """Why ``value`` cannot be an HTTP header value, or None when it can."""
    if "\n" in value or "\r" in value:
        return "a line break"
    if not value.isascii():
        return "a non-ASCII character"
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        return "a control character"
    return None


def _check_sendable(settings: ConnectionSettings) -> None:
    """A clear :class:`SettingsError` for a header value httpx could not send (it would fail
    deep inside the HTTP library, or on every request as if the server were down)."""
    if settings.api_key is not None:
        problem = _unsendable(settings.api_key.reveal())
        if problem:
            raise SettingsError(
                f"PREFECT_API_KEY contains {problem}, which an HTTP header cannot carry;"
                " set the key again without it (its value is not shown)"
            )
    for name, value in settings.custom_headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise SettingsError(
                f"PREFECT_CLIENT_CUSTOM_HEADERS: {name!r} is not a valid HTTP header name"
            )
        problem = _unsendable(value)
        if problem:
            raise SettingsError(
                f"PREFECT_CLIENT_CUSTOM_HEADERS: the value of {name!r} contains {problem},"
                " which an HTTP header cannot carry (the value is not shown)"
            )


def _tls_verify(settings: ConnectionSettings) -> bool | ssl.SSLContext:
    if settings.tls_insecure_skip_verify:
        return False
    if not settings.ssl_cert_file:
        return True
    path = settings.ssl_cert_file
    try:
        if Path(path).is_dir():
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except ssl.SSLError:  # before OSError, its base class
        raise SettingsError(
            f"PREFECT_API_SSL_CERT_FILE: {path} holds no certificate in PEM format"
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"PREFECT_API_SSL_CERT_FILE: cannot read {path}: {exc.strerror or exc}"
        ) from None


def _certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connection error, if that is its cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        nested = [a for a in current.args if isinstance(a, BaseException)]
        current = current.__cause__ or current.__context__ or (nested[0] if nested else None)
    return None


def _mentions_csrf(response: httpx.Response) -> bool:
    return "csrf" in response.text.lower()


@dataclass
class _Learned:
    """What a client learns about its server, shared by its :meth:`~PrefectClient.tuned`
    views: whether it ever answered, the server's version and routes, its page size, the CSRF
    token, whether the API URL lacks the API's path."""

    answered: bool = False
    info: ServerInfo | None = None
    page_size: int = MAX_PAGE_SIZE
    csrf_enabled: bool | None = None
    csrf_token: str | None = None
    csrf_expires: float = 0.0
    api_path_checked: bool = False
    api_path_missing: str | None = None


def _learned(name: str) -> Any:
    def get(self: PrefectClient) -> Any:
        return getattr(self._learned, name)

    def put(self: PrefectClient, value: Any) -> None:
        setattr(self._learned, name, value)

    return property(get, put)


class PrefectClient:
    """An async client for the parts of the Prefect REST API that runner uses.

    Use it as an async context manager::

        async with PrefectClient(resolve_settings()) as client:
            async for page in client.iter_flow_runs(query):
                ...

    ``bulk`` forces (True) or forbids (False) the bulk routes; by default their presence is
    detected once per client. ``rate_limit`` caps requests per second across all tasks.
    ``page_size`` reads fewer runs a page than the server's limit (200).
    """

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        *,
        retry: RetryPolicy | None = None,
        rate_limit: float | None = None,
        bulk: bool | None = None,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
        on_backoff: Callable[[int | None], None] | None = None,
        page_size: int | None = None,
    ) -> None:
        self.settings = settings or resolve_settings()
        _check_sendable(self.settings)
        # From here on, redact() removes these secrets from every log line and error text.
        register_settings(self.settings)
        #: Called with the status (None: a dropped connection) each time the server says
        #: "not now"; the executor slows down on it.
        self.on_backoff = on_backoff
        self.retry_policy = retry or RetryPolicy()
        self.stats = RequestStats()
        self._limiter = RateLimiter(rate_limit) if rate_limit else None
        self._bulk_override = bulk
        #: What was learned about the server: shared with every view of this client.
        self._learned = _Learned()
        if page_size is not None:
            if page_size < 1:
                raise ValueError(f"page_size must be at least 1, got {page_size}")
            self._page_size = min(page_size, MAX_PAGE_SIZE)
        self._csrf_client = str(uuid.uuid4())
        headers = {
            k: v
            for k, v in self.settings.custom_headers.items()
            if k.lower() not in _PROTECTED_HEADERS
        }
        headers.update(
            {
                "User-Agent": f"prefect-runner/{__version__}",
                "X-PREFECT-API-VERSION": API_VERSION,
                **_auth_headers(self.settings),
            }
        )
        # Credentials in the URL are sent as basic auth (taking precedence, as httpx did when
        # they were left in the URL), and kept out of the URL httpx logs every request under.
        url = urlsplit(self.settings.api_url)
        if url.username is not None or url.password is not None:
            userinfo = f"{unquote(url.username or '')}:{unquote(url.password or '')}"
            token = base64.b64encode(userinfo.encode()).decode()
            register_secret(token)
            headers["Authorization"] = f"Basic {token}"
        self._http = httpx.AsyncClient(
            base_url=self.settings.display_url.rstrip("/") + "/",
            headers=headers,
            timeout=self.settings.request_timeout,
            verify=_tls_verify(self.settings),
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"PrefectClient(api_url={self.settings.display_url!r})"

    async def __aenter__(self) -> PrefectClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    _answered: bool = _learned("answered")
    _info: ServerInfo | None = _learned("info")
    _page_size: int = _learned("page_size")
    _csrf_enabled: bool | None = _learned("csrf_enabled")
    _csrf_token: str | None = _learned("csrf_token")
    _csrf_expires: float = _learned("csrf_expires")

    def tuned(
        self,
        *,
        retry: RetryPolicy | None = None,
        rate_limit: float | None = None,
        on_backoff: Callable[[int | None], None] | None = None,
    ) -> PrefectClient:
        """The same connection (and request counts) with its own retry policy, request-rate
        cap and push-back callback: how a caller gives one step its settings without
        changing the client others use."""
        view = copy.copy(self)
        view.retry_policy = retry or self.retry_policy
        view._limiter = RateLimiter(rate_limit) if rate_limit else None
        view.on_backoff = on_backoff
        return view

    def with_retry(self, retry: RetryPolicy) -> PrefectClient:
        """The same client with another retry policy (see :meth:`tuned`)."""
        view = copy.copy(self)
        view.retry_policy = retry
        return view

    # -- sending ---------------------------------------------------------------------------

    def _url_for(self, path: str) -> str:
        """The URL to show for ``path``: relative to the API URL (``flow_runs/filter``), or
        from the server's root (a request's own path, ``/api/flow_runs/filter``)."""
        base = self.settings.display_url.rstrip("/")
        if path.startswith("/"):
            prefix = urlsplit(base).path.rstrip("/")
            if prefix and (path == prefix or path.startswith(prefix + "/")):
                path = path[len(prefix) :]
        return redact(f"{base}/{path.lstrip('/')}")

    def _where(self, response: httpx.Response) -> dict[str, Any]:
        """The method, URL and status of the request ``response`` answers, for an error."""
        try:
            request = response.request
        except RuntimeError:  # an answer made up in place of a lost one: no request
            return {"status_code": response.status_code}
        return {
            "method": request.method,
            "url": self._url_for(request.url.path),
            "status_code": response.status_code,
        }

    def _json_answer(self, method: str, path: str, response: httpx.Response) -> Any:
        """The JSON of a successful answer that must carry JSON, or a clear error.

        A body cut off mid-JSON is :class:`MalformedAnswer` (sent again); an empty body, an
        HTML page (a login page, a proxy's) or JSON nested too deeply to parse is a
        :class:`ServerError` at once: sending again gets the same.
        """
        status = response.status_code
        where: dict[str, Any] = {
            "method": method,
            "url": self._url_for(path),
            "status_code": status,
        }
        if not response.content:
            raise ServerError(f"HTTP {status}: expected JSON, got an empty body", **where)
        media = _media_type(response)
        if media and "json" not in media:
            raise ServerError(
                f"HTTP {status}: expected JSON, got {_describe_page(response)}{_NOT_THE_API}",
                **where,
            )
        try:
            # pydantic's parser reads a page of runs in under half json's time; whatever it
            # refuses (a broken body, nesting past its depth of 200, a lone surrogate) is read
            # by json, whose answer and errors are the ones runner has always given.
            return from_json(response.content)
        except ValueError:
            pass
        try:
            return json_module.loads(response.content)
        except RecursionError:
            self.stats.malformed += 1
            raise ServerError(f"HTTP {status}: expected JSON, got {_TOO_DEEP}", **where) from None
        except ValueError:
            self.stats.malformed += 1
            raise MalformedAnswer(response) from None

    async def _csrf_headers(self) -> dict[str, str]:
        if self._csrf_enabled is False:
            return {}
        if self._csrf_token is None or time.time() > self._csrf_expires - 30:
            response = await self._http.get("csrf-token", params={"client": self._csrf_client})
            self.stats.requests += 1
            self._answered = True
            if response.status_code in self.retry_policy.statuses:
                raise RetryableStatus(response)  # inside the caller's retry loop
            if response.status_code == 422 and "disabled" in response.text.lower():
                self._csrf_enabled = False
                return {}
            if response.status_code in (404, 405):
                # Servers before CSRF support, and Prefect Cloud, have no such route.
                self._csrf_enabled = False
                return {}
            if response.status_code != 200:
                self._raise_for_status("GET", "csrf-token", response)
            data = self._json_answer("GET", "csrf-token", response)
            try:
                token, expiration = str(data["token"]), data.get("expiration")
            except (ValueError, KeyError, TypeError, AttributeError):
                self.stats.malformed += 1
                raise MalformedAnswer(response) from None  # inside the caller's retry loop
            self._csrf_enabled = True
            self._csrf_token = token
            try:
                self._csrf_expires = (
                    datetime.fromisoformat(str(expiration).replace("Z", "+00:00")).timestamp()
                    if expiration
                    else time.time() + 3600
                )
            except ValueError:
                self._csrf_expires = time.time() + 3600
        return {"Prefect-Csrf-Token": self._csrf_token, "Prefect-Csrf-Client": self._csrf_client}

    async def _send_once(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        *,
        csrf_refreshed: bool = False,
        no_content: bool = False,
    ) -> httpx.Response:
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            headers = await self._csrf_headers() if method != "GET" else {}
            self.stats.requests += 1
            response = await self._http.request(
                method, path, json=json, params=params, headers=headers
            )
            self._answered = True
        except httpx.TransportError as exc:
            self.stats.transport_errors += 1
            failure = _certificate_failure(exc)
            if failure is not None:
                raise self._certificate_error(method, path, failure) from None
            if self.on_backoff is not None:
                self.on_backoff(None)
            raise
        self.stats.by_status[response.status_code] = (
            self.stats.by_status.get(response.status_code, 0) + 1
        )
        log.debug("%s %s -> %s", method, path, response.status_code)
        if response.status_code == 403 and not csrf_refreshed and _mentions_csrf(response):
            # The token expired or the server restarted: fetch a new one and send again, once;
            # a second refusal is reported (_raise_for_status), not chased.
            self._csrf_token = None
            self._csrf_enabled = None
            return await self._send_once(
                method, path, json=json, params=params, csrf_refreshed=True, no_content=no_content
            )
        if response.status_code in self.retry_policy.statuses:
            if self.on_backoff is not None:
                self.on_backoff(response.status_code)
            raise RetryableStatus(response)
        if 200 <= response.status_code < 300 and (
            (method in _JSON_METHODS and not (no_content and response.status_code == 204))
            or (response.content and "json" in _media_type(response))
        ):
            response.extensions[_PARSED] = self._json_answer(method, path, response)
        return response

    def _certificate_error(
        self, method: str, path: str, failure: ssl.SSLCertVerificationError
    ) -> Unreachable:
        """Not retried: a certificate that failed verification fails the same way again."""
        reason = failure.verify_message or failure.reason or str(failure)
        cert_file = self.settings.ssl_cert_file
        if cert_file and not self.settings.tls_insecure_skip_verify:
            hint = (
                f"the certificates in PREFECT_API_SSL_CERT_FILE ({cert_file}) do not verify"
                " the server's; point it at the CA certificate that signed it, or set"
                " PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true to skip verification"
                " (for testing only)"
            )
        else:
            hint = (
                "if a private CA signed the server's certificate, set PREFECT_API_SSL_CERT_FILE"
                " to that CA's certificate (a PEM file), or set"
                " PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true to skip verification"
                " (for testing only)"
            )
        return Unreachable(
            f"TLS certificate verification failed ({reason}); {hint}",
            method=method,
            url=self._url_for(path),
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: Iterable[int] = (200, 201, 204),
        before_retry: Any = None,
        no_content: bool = False,
        failures: list[BaseException] | None = None,
    ) -> httpx.Response:
        """Send with retries; map failures to the exception tree. ``no_content``: a POST
        this route answers 204, without a body.

        ``before_retry`` is an async callable run before every attempt but the first; when it
        returns a response-like value, that value is returned instead of sending again (used to
        recognise a change the server carried out although its answer was lost).
        ``failures``: each failed attempt's exception is appended to it.
        """
        ok_statuses = set(ok)
        attempts = 0
        try:
            async for attempt in retrying(self.retry_policy, answered=lambda: self._answered):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if attempts > 1:
                        self.stats.retries += 1
                        if before_retry is not None:
                            done = await before_retry()
                            if done is not None:
                                return done  # type: ignore[no-any-return]
                    try:
                        response = await self._send_once(
                            method, path, json=json, params=params, no_content=no_content
                        )
                    except Exception as exc:
                        if failures is not None:
                            failures.append(exc)
                        raise
        except RetryableStatus as exc:
            status = exc.response.status_code
            raise ServerError(
                f"HTTP {status} after {plural(attempts, 'attempt')}:"
                f" {_describe_detail(_detail(exc.response))}",
                method=method,
                url=self._url_for(path),
                status_code=status,
            ) from None
        except MalformedAnswer as exc:
            raise ServerError(
                f"{exc} after {plural(attempts, 'attempt')}",
                method=method,
                url=self._url_for(path),
                status_code=exc.response.status_code,
            ) from None
        except httpx.TransportError as exc:
            if is_no_connection(exc) and not self._answered:
                reason = f": {exc}" if str(exc) else ""
                what = f"no connection after {plural(attempts, 'attempt')}"
                what += f" ({type(exc).__name__}{reason})"
            else:
                what = f"no answer after {plural(attempts, 'attempt')} ({type(exc).__name__})"
            raise Unreachable(
                f"{what}; is the server at {self.settings.display_url} running?",
                method=method,
                url=self._url_for(path),
            ) from None
        except ServerError as exc:
            if exc.status_code is not None and 200 <= exc.status_code < 300:  # not JSON
                missing = await self._api_path_missing()
                if missing is not None:
                    raise missing from None
            raise
        if response.status_code not in ok_statuses:
            if response.status_code in (404, 405):
                missing = await self._api_path_missing()
                if missing is not None:
                    raise missing
            self._raise_for_status(method, path, response)
        return response

    async def _api_path_missing(self) -> SettingsError | None:
        """The error that says so when the API URL is a server's address without the API's
        path (``http://host:4200`` for ``http://host:4200/api``): asked after a 404, a 405 or
        an answer that is not JSON, once per client, by whether ``<url>/api/health`` answers.
        A URL whose path ends in ``/api`` is not asked about; nor is anything else answering
        there (a Prefect Cloud workspace URL answers 404)."""
        if self._learned.api_path_checked:
            missing = self._learned.api_path_missing
            return SettingsError(missing) if missing is not None else None
        self._learned.api_path_checked = True
        base = self.settings.display_url.rstrip("/")
        if urlsplit(base).path.endswith("/api"):
            return None
        try:
            self.stats.requests += 1
            response = await self._http.get("api/health")
            healthy = response.status_code == 200 and response.json() is True
        except (httpx.HTTPError, ValueError):
            return None
        if not healthy:
            return None
        source = self.settings.sources.get("PREFECT_API_URL", "")
        fixed = f"{base}/api"
        if source == "argument":
            advice = f"use --api-url {fixed}"
        elif source == "environment":
            advice = f"set PREFECT_API_URL={fixed}"
        elif source.startswith("profile"):
            advice = f"set PREFECT_API_URL={fixed} in {source}"
        else:
            advice = f"use {fixed}"
        self._learned.api_path_missing = redact(
            f"{base} is the address of a Prefect server, not of its API, which answers at"
            f" {fixed}: {advice}"
        )
        return SettingsError(self._learned.api_path_missing)

    def _raise_for_status(self, method: str, path: str, response: httpx.Response) -> None:
        status = response.status_code
        where: dict[str, Any] = {
            "method": method,
            "url": self._url_for(path),
            "status_code": status,
        }
        detail = _detail(response)
        if status == 403 and _mentions_csrf(response):
            raise Unauthorized(
                f"HTTP 403: the server refused the CSRF token, also after fetching a new one"
                f" ({_describe_detail(detail)}); check that no proxy between runner and the"
                " server drops the Prefect-Csrf-Token and Prefect-Csrf-Client headers",
                **where,
            )
        if status in (401, 403):
            raise Unauthorized(
                f"HTTP {status}: the server refused the credentials."
                " Check PREFECT_API_KEY (Prefect Cloud) or PREFECT_API_AUTH_STRING"
                " (a self-hosted server with basic auth).",
                **where,
            )
        if status == 404:
            raise NotFound(f"HTTP 404: {_describe_detail(detail)}", **where)
        if status in (400, 409, 422):
            raise InvalidRequest(
                f"HTTP {status}: {_describe_detail(detail)}", detail=detail, **where
            )
        if status == 405:
            raise UnsupportedByServer("HTTP 405: the server has no such route", **where)
        raise ServerError(f"HTTP {status}: {_describe_detail(detail)}", **where)

    def _parse(self, model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate(_body(response))
        except (ValueError, ValidationError, RecursionError) as exc:
            raise ServerError(
                f"unexpected answer: {type(exc).__name__}", **self._where(response)
            ) from None

    def _parse_list(self, model: type[M], response: httpx.Response) -> list[M]:
        try:
            return _list_of(model).validate_python(_body(response))
        except (ValueError, ValidationError, RecursionError) as exc:
            raise ServerError(
                f"unexpected answer: {type(exc).__name__}", **self._where(response)
            ) from None

    # -- about the server ------------------------------------------------------------------

    async def server_info(self) -> ServerInfo:
        """Server version, API version and whether the bulk routes exist (asked once)."""
        if self._info is None:
            version: str | None = None
            api_version: str | None = None
            try:
                version = str(_body(await self._request("GET", "admin/version")))
            except (NotFound, UnsupportedByServer, Unauthorized):
                version = None  # Prefect Cloud has no admin routes
            try:
                api_version = str(_body(await self._request("GET", "version")))
            except (NotFound, UnsupportedByServer):
                api_version = None
            bulk = (
                self._bulk_override
                if self._bulk_override is not None
                else await self._probe_bulk_routes(version)
            )
            self._info = ServerInfo(version=version, api_version=api_version, bulk_routes=bulk)
        return self._info

    async def _probe_bulk_routes(self, version: str | None) -> bool:
        """Whether ``/flow_runs/bulk_delete`` and ``bulk_set_state`` exist, found out without
        sending anything to them: by the server's version (Prefect >= 3.6.16), else (Prefect
        Cloud has no version route) by the routes its OpenAPI document lists."""
        parsed = _version_tuple(version)
        if parsed is not None:
            return parsed >= BULK_ROUTES_SINCE
        try:
            document = _body(await self._request("GET", "openapi.json"))
        except (NotFound, UnsupportedByServer, Unauthorized, ValueError):
            return False
        paths = document.get("paths", {}) if isinstance(document, dict) else {}
        wanted = ("/flow_runs/bulk_delete", "/flow_runs/bulk_set_state")
        return all(any(str(p).endswith(w) for p in paths) for w in wanted)

    async def supports_bulk(self) -> bool:
        return (await self.server_info()).bulk_routes

    async def health(self) -> bool:
        """True when ``/health`` answers 200."""
        try:
            response = await self._request("GET", "health")
        except APIError:
            return False
        return response.status_code == 200

    # -- reading ---------------------------------------------------------------------------

    async def count_flow_runs(self, query: FlowRunQuery | None = None) -> int:
        body = (query or FlowRunQuery()).body()
        response = await self._request("POST", "flow_runs/count", json=body)
        count = _body(response)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            shown = json_module.dumps(count)
            raise ServerError(
                "unexpected answer: expected a number of runs, got"
                f" {shown if len(shown) <= 60 else shown[:57] + '...'}",
                method="POST",
                url=self._url_for("flow_runs/count"),
                status_code=response.status_code,
            )
        return count

    async def _filter_page(self, request: PageRequest) -> tuple[httpx.Response, int]:
        """The answer to one ``flow_runs/filter`` request, and the page size it asked for
        (``limit`` capped at the server's page limit, which is learned if the server says
        it is smaller)."""
        body = request.query.body()
        limit = min(request.limit, self._page_size)
        body.update(sort=request.sort.value, limit=limit, offset=request.offset)
        try:
            return await self._request("POST", "flow_runs/filter", json=body), limit
        except InvalidRequest as exc:
            match = _LIMIT_RE.search(str(exc.detail))
            if match is None or int(match.group(1)) >= limit:
                raise
            # The server runs with a smaller page limit than Prefect's default: learn it.
            self._page_size = max(1, int(match.group(1)))
            return await self._filter_page(request)

    async def read_flow_runs(
        self,
        query: FlowRunQuery | None = None,
        *,
        sort: FlowRunSort = FlowRunSort.ID_DESC,
        limit: int = MAX_PAGE_SIZE,
        offset: int = 0,
        documents: dict[UUID, dict[str, Any]] | None = None,
    ) -> list[FlowRun]:
        """One page of runs (``limit`` is capped at the server's page limit). ``documents``,
        if given, takes each run's JSON as the server answered it, by id."""
        request = PageRequest(query or FlowRunQuery(), sort, limit, offset)
        response, _ = await self._filter_page(request)
        runs = self._parse_list(FlowRun, response)
        if documents is not None:
            documents.update(zip((run.id for run in runs), _body(response), strict=True))
        return runs

    async def iter_flow_runs(
        self,
        query: FlowRunQuery | None = None,
        *,
        sort: FlowRunSort | None = None,
        limit: int | None = None,
        concurrency: int = 1,
    ) -> AsyncIterator[list[FlowRun]]:
        """Every matching run, page by page, each run once; at most ``limit`` runs.

        By default, and for ``EXPECTED_START_TIME_ASC`` or ``_DESC``, pages are read by
        keyset (:mod:`runner.paging`): by expected start time, oldest first (newest first
        for ``_DESC``), runs without one last; each page costs the server the same wherever
        it starts, and a run present for the whole read comes out exactly once even while
        other runs are added and deleted. Each next page is asked for as soon as the answer
        before it names its last run, before that page is parsed and handed on: the server
        works on it meanwhile. With ``concurrency`` above 1 (oldest first only), the time
        span is cut in slices read that many at once (:meth:`_sliced_pages`).

        Any other ``sort`` is read by offset (the server has no range filter on ids, names
        or the other times): exact while nothing is written, and ``ID_DESC``, the only such
        sort without ties, is the one to read everything by. With ``concurrency`` above 1,
        once the first page comes back full the rest are read that many at a time (their
        offsets from a count); pages still come out in order. If the selection grew while it
        was read, what lies past the count is then read page by page to its end.
        """
        reading = _Reading(limit)
        if sort in _KEYSET_SORTS:
            cursor = Keyset(
                query or FlowRunQuery(),
                descending=sort is FlowRunSort.EXPECTED_START_TIME_DESC,
                size=self._page_size,
            )
            if concurrency > 1 and not cursor.descending:
                pages = self._sliced_pages(cursor, reading, concurrency)
            else:
                pages = self._keyset_pages(cursor, reading)
            # Closed with this read (its tasks ended then), not whenever it is collected.
            async with contextlib.aclosing(pages):
                async for page in pages:
                    yield page
            if cursor.phase is not Phase.OFFSET or reading.done():
                return
            # More runs without an expected start than a request can leave out by id: the
            # rest by offset, by id (those already read are not handed on again).
            sort = FlowRunSort.ID_DESC
        by = sort or FlowRunSort.ID_DESC
        async for page in self._offset_pages(query, by, reading, concurrency):
            yield page

    async def _keyset_pages(
        self, cursor: Keyset, reading: _Reading
    ) -> AsyncGenerator[list[FlowRun], None]:
        """The pages ``cursor`` asks for, in order, each next one sent before this one is
        parsed and handed on (one request in flight)."""
        # The requests not yet answered (an answered one is dropped: a page is never held
        # longer than it is read).
        unanswered: set[asyncio.Task[tuple[httpx.Response, int]]] = set()

        interrupts = _Interrupts()

        def send(request: PageRequest) -> asyncio.Task[tuple[httpx.Response, int]]:
            call = functools.partial(self._filter_page, request)
            task = asyncio.ensure_future(interrupts.guard(call))
            unanswered.add(task)
            task.add_done_callback(unanswered.discard)
            task.add_done_callback(_quiet)
            return task

        keys_of = self._keys_of

        try:
            probes = [(request.sort, send(request)) for request in cursor.probes()]
            first = cursor.request(reading.remaining)
            pending = send(first) if first is not None else None
            for sort, probe in probes:
                cursor.probed(sort, keys_of((await interrupts.answer(probe))[0]))
            while pending is not None:
                response, sent = await interrupts.answer(pending)
                pending = None
                keys = keys_of(response)
                try:
                    keep = cursor.advance(keys, sent)
                except PagingError as exc:
                    raise ServerError(
                        f"unexpected answer: {exc} (the server did not filter or sort the"
                        " page as asked)",
                        **self._where(response),
                    ) from None
                after = reading.left_after(key.id.int for key in keys[:keep])
                following = cursor.request(after)
                if following is not None:
                    pending = send(following)
                runs = self._parse_list(FlowRun, response)[:keep]
                fresh = reading.fresh(runs)
                if fresh:
                    yield fresh
                if reading.done():
                    return
        finally:
            left = list(unanswered)
            for task in left:
                task.cancel()
            # Ended when the read is (not a turn of the loop later): none outlives aclose().
            await asyncio.gather(*left, return_exceptions=True)

    def _keys_of(self, response: httpx.Response) -> list[Key]:
        """A page's ids and times, read from its JSON; a page that has none is an error."""
        keys = page_keys(_body(response))
        if keys is None:
            self._parse_list(FlowRun, response)  # says what is wrong with the page
            raise ServerError(
                "unexpected answer: a run without an id or expected start time",
                **self._where(response),
            )
        return keys

    async def _sliced_pages(
        self, whole: Keyset, reading: _Reading, window: int
    ) -> AsyncGenerator[list[FlowRun], None]:
        """The pages of ``whole`` (ascending) with up to ``window`` pages in flight: its
        time span cut in slices (:func:`runner.paging.slices`, from a count and the earliest
        and latest times), each read by keyset on its own, ``window`` slices at once, each
        at most ``_PAGES_AHEAD`` pages ahead of the reader; pages handed on in order (slice
        after slice, then the runs without a time). ``whole`` ends in ``Phase.OFFSET`` when those
        are too many to read so."""
        query, size = whole.query, whole.size
        null_probes, edge_probes = whole.probes(), bounds_probes(query)
        *answers, count = await self._together(
            *(functools.partial(self._filter_page, r) for r in [*null_probes, *edge_probes]),
            functools.partial(self.count_flow_runs, query),
        )
        keys = [self._keys_of(response) for response, _ in answers]
        for request, found in zip(null_probes, keys, strict=False):
            whole.probed(request.sort, found)
        first_keys, last_keys = keys[len(null_probes) :]
        cursors: list[Keyset] = []
        if first_keys and last_keys and first_keys[0].time and last_keys[0].time:
            cursors += slices(
                query, size, first=first_keys[0].time, last=last_keys[0].time, count=count
            )
        if whole.nulls_sort is not None:
            cursors.append(nulls(query, size, whole.nulls_sort))
        whole.phase = Phase.DONE
        queues: list[asyncio.Queue[tuple[httpx.Response, int] | BaseException | None]] = []
        producers: list[asyncio.Task[None]] = []

        async def produce(cursor: Keyset, queue: asyncio.Queue[Any]) -> None:
            try:
                while (request := cursor.request()) is not None:
                    response, sent = await self._filter_page(request)
                    try:
                        keep = cursor.advance(self._keys_of(response), sent)
                    except PagingError as exc:
                        raise ServerError(
                            f"unexpected answer: {exc} (the server did not filter or sort the"
                            " page as asked)",
                            **self._where(response),
                        ) from None
                    await queue.put((response, keep))
                await queue.put(None)
            except KeyboardInterrupt as exc:  # SIGTERM: to the reader at once, wherever it is
                for waiting in queues:
                    with contextlib.suppress(asyncio.QueueFull):
                        waiting.put_nowait(exc)
            except Exception as exc:  # handed to the reader, raised there as itself
                await queue.put(exc)

        def start(index: int) -> None:
            # A page the server filled for a slice before shows its cap for this one too.
            cursors[index].filled = max(cursor.filled for cursor in cursors)
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_PAGES_AHEAD)
            queues.append(queue)
            producers.append(asyncio.ensure_future(produce(cursors[index], queue)))

        try:
            for index in range(min(window, len(cursors))):
                start(index)
            for index, cursor in enumerate(cursors):
                while (item := await queues[index].get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    response, keep = item
                    fresh = reading.fresh(self._parse_list(FlowRun, response)[:keep])
                    del item, response
                    if fresh:
                        yield fresh
                    if reading.done():
                        return
                if cursor.phase is Phase.OFFSET:
                    whole.phase = Phase.OFFSET
                if len(queues) < len(cursors):
                    start(len(queues))
        finally:
            for task in producers:
                task.cancel()
            await asyncio.gather(*producers, return_exceptions=True)

    async def _together(self, *calls: Callable[[], Awaitable[Any]]) -> list[Any]:
        """What ``calls`` return, run at once, in their order (the first error raised as
        itself)."""
        results: list[Any] = [None] * len(calls)
        errors: list[BaseException] = []

        async def one(index: int) -> None:
            try:
                results[index] = await calls[index]()
            except KeyboardInterrupt as exc:  # SIGTERM: the others stop, raised below
                errors.insert(0, exc)
                group.cancel_scope.cancel()
            except Exception as exc:  # raised below, as itself rather than in a group
                errors.append(exc)

        async with anyio.create_task_group() as group:
            for index in range(len(calls)):
                group.start_soon(one, index)
        if errors:
            raise errors[0]
        return results

    async def _offset_pages(
        self,
        query: FlowRunQuery | None,
        sort: FlowRunSort,
        reading: _Reading,
        concurrency: int,
    ) -> AsyncIterator[list[FlowRun]]:
        """Pages by offset (``iter_flow_runs``)."""
        offset = 0
        windows = concurrency > 1
        while not reading.done():
            remaining = reading.remaining
            if windows and offset > 0:
                windows = False
                size = self._page_size
                total = await self.count_flow_runs(query)
                if remaining is not None:
                    total = min(total, offset + remaining)
                offsets = list(range(offset, total, size))
                for start in range(0, len(offsets), concurrency):
                    pages = await self._read_pages(
                        query, sort, size, offsets[start : start + concurrency]
                    )
                    for page in pages:
                        offset += len(page)
                        fresh = reading.fresh(page)
                        if fresh:
                            yield fresh
                        if len(page) < size or reading.done():
                            return
                continue
            want = self._page_size if remaining is None else min(self._page_size, remaining)
            page = await self.read_flow_runs(query, sort=sort, limit=want, offset=offset)
            offset += len(page)
            fresh = reading.fresh(page)
            if fresh:
                yield fresh
            # A short page ends the selection, unless the server just said its pages are
            # smaller than asked for (read_flow_runs learned its limit): then read on.
            if len(page) < min(want, self._page_size):
                return

    async def _read_pages(
        self, query: FlowRunQuery | None, sort: FlowRunSort, size: int, offsets: list[int]
    ) -> list[list[FlowRun]]:
        """Pages at ``offsets``, read at once, in the order of ``offsets``."""
        pages: list[list[FlowRun]] = [[] for _ in offsets]
        errors: list[Exception] = []

        async def one(index: int, offset: int) -> None:
            try:
                pages[index] = await self.read_flow_runs(
                    query, sort=sort, limit=size, offset=offset
                )
            except Exception as exc:  # raised below, as itself rather than in a group
                errors.append(exc)

        async with anyio.create_task_group() as group:
            for index, offset in enumerate(offsets):
                group.start_soon(one, index, offset)
        if errors:
            raise errors[0]
        return pages

    @property
    def page_size(self) -> int:
        """The most runs one page may carry (the server's limit, once learned)."""
        return self._page_size

    async def read_flow_run_states(self, flow_run_id: UUID) -> list[State]:
        """Every state the run has had, oldest first."""
        response = await self._request(
            "GET", "flow_run_states/", params={"flow_run_id": str(flow_run_id)}
        )
        states = self._parse_list(State, response)
        oldest = datetime.min.replace(tzinfo=timezone.utc)
        return sorted(states, key=lambda s: s.timestamp or oldest)

    async def read_flow_run_state_documents(self, flow_run_id: UUID) -> list[dict[str, Any]]:
        """Every state the run has had, oldest first, as the server answered them (each
        checked to be a state)."""
        response = await self._request(
            "GET", "flow_run_states/", params={"flow_run_id": str(flow_run_id)}
        )
        states = self._parse_list(State, response)
        oldest = datetime.min.replace(tzinfo=timezone.utc)
        pairs = sorted(
            zip(states, _body(response), strict=True), key=lambda p: p[0].timestamp or oldest
        )
        return [document for _, document in pairs]

    async def read_logs(self, flow_run_ids: Sequence[UUID]) -> list[dict[str, Any]]:
        """Every log line of these runs, oldest first, as the server answered them.

        Read a page at a time by time (each page from the last one's time on, the lines
        already read left out), not by offset: a line written meanwhile never shifts the
        pages. Pages by offset only within one time shared by more lines than a page."""
        if not flow_run_ids:
            return []
        ids = [str(i) for i in flow_run_ids]
        size = min(MAX_PAGE_SIZE, self._page_size)
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        after: str | None = None
        skip = 0
        while True:
            logs: dict[str, Any] = {"flow_run_id": {"any_": ids}}
            if after is not None:
                logs["timestamp"] = {"after_": after}
            body = {"logs": logs, "sort": "TIMESTAMP_ASC", "limit": size, "offset": skip}
            page = await self._json_list("POST", "logs/filter", body)
            for line in page:
                key = str(line.get("id"))
                if key not in seen:
                    seen.add(key)
                    found.append(line)
            if len(page) < size:
                return found
            last = page[-1].get("timestamp")
            if not isinstance(last, str):
                raise ServerError(
                    "unexpected answer: a log line without a timestamp",
                    method="POST",
                    url=self._url_for("logs/filter"),
                )
            if last == after:  # a whole page at one time: on by offset within it
                skip += size
            else:
                after, skip = last, 0

    async def read_flow_run(
        self, flow_run_id: UUID, *, documents: dict[UUID, dict[str, Any]] | None = None
    ) -> FlowRun:
        """One run; ``documents``, if given, takes its JSON as the server answered it."""
        response = await self._request("GET", f"flow_runs/{flow_run_id}")
        run = self._parse(FlowRun, response)
        if documents is not None:
            documents[run.id] = _body(response)
        return run

    async def read_flow(self, flow_id: UUID) -> Flow:
        return self._parse(Flow, await self._request("GET", f"flows/{flow_id}"))

    async def read_flows(self, ids: Sequence[UUID]) -> list[Flow]:
        if not ids:
            return []
        flows: list[Flow] = []
        for start in range(0, len(ids), MAX_PAGE_SIZE):
            chunk = [str(i) for i in ids[start : start + MAX_PAGE_SIZE]]
            body = {"flows": {"id": {"any_": chunk}}, "limit": MAX_PAGE_SIZE}
            flows += self._parse_list(Flow, await self._request("POST", "flows/filter", json=body))
        return flows

    async def read_deployment(self, deployment_id: UUID) -> Deployment:
        return self._parse(Deployment, await self._request("GET", f"deployments/{deployment_id}"))

    async def read_deployment_by_name(self, name: str) -> Deployment:
        """A deployment by its ``flow/deployment`` name (each part escaped into the path:
        ``#``, ``?``, ``%`` and spaces are legal in Prefect names)."""
        flow_name, sep, deployment_name = name.partition("/")
        if not sep or not flow_name or not deployment_name:
            raise ValueError(f"expected 'flow/deployment', got {name!r}")
        path = f"deployments/name/{quote(flow_name, safe='')}/{quote(deployment_name, safe='')}"
        deployment = self._parse(Deployment, await self._request("GET", path))
        if deployment.name != deployment_name:
            # Never trust the server to have read the name as meant.
            raise NotFound(
                f"asked for deployment {name!r}, the server answered with {deployment.name!r}",
                method="GET",
                url=self._url_for(path),
                status_code=200,
            )
        return deployment

    async def read_deployments(self, ids: Sequence[UUID]) -> list[Deployment]:
        deployments: list[Deployment] = []
        for start in range(0, len(ids), MAX_PAGE_SIZE):
            body = {
                "deployments": {
                    "id": {"any_": [str(i) for i in ids[start : start + MAX_PAGE_SIZE]]}
                },
                "limit": MAX_PAGE_SIZE,
            }
            response = await self._request("POST", "deployments/filter", json=body)
            deployments += self._parse_list(Deployment, response)
        return deployments

    async def read_names(self, kind: str, among: Sequence[str] = ()) -> list[str]:
        """Every name of ``kind`` on the server (``among`` given: those of them it has):
        ``flows``, ``work_pools``, ``work_queues``, or ``deployments`` (as
        ``flow/deployment``, never with ``among``). For checking a playbook's names and
        suggesting the closest; stops after ``MAX_NAMES``. Each answer is checked."""
        if kind not in ("flows", "work_pools", "work_queues", "deployments"):
            raise ValueError(f"no names of {kind!r}")
        if among and kind == "deployments":
            raise ValueError("deployments are found by name one by one")
        names: list[str] = []
        flow_ids: list[tuple[str, str]] = []
        offset = 0
        while offset < MAX_NAMES:
            body: dict[str, Any] = {"limit": MAX_PAGE_SIZE, "offset": offset}
            if among:
                body[kind] = {"name": {"any_": list(among)}}
            page = await self._json_list("POST", f"{kind}/filter", body)
            for item in page:
                if kind == "deployments":
                    flow_ids.append((str(item.get("flow_id")), str(item.get("name"))))
                else:
                    names.append(str(item.get("name")))
            if len(page) < MAX_PAGE_SIZE:
                break
            offset += MAX_PAGE_SIZE
        if kind == "deployments":
            ids = sorted({UUID(f) for f, _ in flow_ids if _is_uuid(f)})
            flows = {str(f.id): f.name for f in await self.read_flows(ids)}
            names = [f"{flows.get(f, f)}/{d}" for f, d in flow_ids]
        return [n for n in names if n in among] if among else names

    # -- deployments, work pools and work queues (steps with a target) ----------------------

    async def read_objects(self, route: str, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every deployment, work pool or work queue the filter ``body`` matches (``route``:
        ``deployments/filter``, ``work_pools/filter`` or ``work_queues/filter``), paged to
        the end, each once; stops after ``MAX_NAMES``."""
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while offset < MAX_NAMES:
            page = await self._json_list(
                "POST", route, {**body, "limit": MAX_PAGE_SIZE, "offset": offset}
            )
            for item in page:
                found.setdefault(str(item.get("id")), item)
            if len(page) < MAX_PAGE_SIZE:
                break
            offset += MAX_PAGE_SIZE
        return list(found.values())

    def _object_path(self, kind: str, object_id: UUID, name: str) -> str:
        if kind == "deployment":
            return f"deployments/{object_id}"
        if kind == "work_pool":
            return f"work_pools/{quote(name, safe='')}"
        return f"work_queues/{object_id}"

    async def read_object(self, kind: str, object_id: UUID, name: str) -> dict[str, Any] | None:
        """A deployment or work queue by id, a work pool by name (its routes take no id);
        None when the server has none, or a pool of that name with another id."""
        path = self._object_path(kind, object_id, name)
        response = await self._request("GET", path, ok=(200, 404))
        if response.status_code == 404:
            return None
        data = self._json_answer("GET", path, response)
        if not isinstance(data, dict):
            raise ServerError(
                f"unexpected answer: expected an object, got {type(data).__name__}",
                **self._where(response),
            )
        if str(data.get("id")) != str(object_id):
            return None  # a pool made anew under the name: not the one the plan saw
        return data

    async def read_scheduled_runs(self, deployment_id: UUID) -> list[dict[str, Any]]:
        """A deployment's runs in a Scheduled-type state, as the server returns them (those
        a write of its ``paused`` flag may delete: :func:`runner.targets.deleted_with_write`
        picks them), paged to the end; stops after ``MAX_NAMES``."""
        body = {
            "deployments": {"id": {"any_": [str(deployment_id)]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "ID_DESC",
        }
        found = await self.read_objects("flow_runs/filter", body)
        return [r for r in found if str(r.get("deployment_id")) == str(deployment_id)]

    async def existing_run_ids(self, ids: Sequence[UUID]) -> set[UUID]:
        """Which of the runs ``ids`` the server still has."""
        if not ids:
            return set()
        body = {"flow_runs": {"id": {"any_": [str(i) for i in ids]}}}
        found = await self.read_objects("flow_runs/filter", body)
        wanted = set(ids)
        return {UUID(str(r["id"])) for r in found if UUID(str(r.get("id"))) in wanted}

    async def set_paused(
        self,
        kind: str,
        object_id: UUID,
        name: str,
        paused: bool,
        *,
        before_retry: Callable[[], Awaitable[bool]] | None = None,
    ) -> bool:
        """Pause or resume a deployment (its ``paused`` flag; its schedules' ``active`` flags
        are not touched), a work pool or a work queue (``is_paused``). Idempotent.

        ``before_retry`` runs before each resend of the PATCH (after a failed attempt and its
        backoff): the caller reads the object again and answers True to send nothing more
        (it drifted meanwhile, or the flag already took). Returns whether the PATCH was
        answered by the server (False: ``before_retry`` stopped it)."""
        field_name = "paused" if kind == "deployment" else "is_paused"
        stopped = False

        async def check_again() -> httpx.Response | None:
            nonlocal stopped
            if before_retry is not None and await before_retry():
                stopped = True
                return httpx.Response(204)
            return None

        await self._request(
            "PATCH",
            self._object_path(kind, object_id, name),
            json={field_name: paused},
            before_retry=check_again,
        )
        return not stopped

    async def read_observed_states(self, query: str | None = None) -> list[tuple[str, str]] | None:
        """The ``(type, name)`` of the states the server's retained history holds (those
        whose name or type starts with ``query``, case-insensitive; the 200 seen last):
        Prefect 3.9's ``GET /observed-states``. None where the server has no such route."""
        path = "observed-states"
        params: dict[str, Any] = {"limit": 200}
        if query is not None:
            params["query"] = query[:100]  # the server's longest query
        try:
            response = await self._request("GET", path, params=params)
            data = self._json_answer("GET", path, response)
        except NotFound:
            return None
        if not isinstance(data, list):
            raise ServerError(
                f"unexpected answer: expected a list, got {type(data).__name__}",
                **self._where(response),
            )
        return [
            (str(item.get("state_type")), str(item.get("state_name")))
            for item in data
            if isinstance(item, dict)
        ]

    async def read_parent_runs(self, task_run_ids: Sequence[UUID]) -> dict[UUID, UUID]:
        """The flow run of each task run (a subflow run's parent task run -> its parent
        flow run)."""
        parents: dict[UUID, UUID] = {}
        for start in range(0, len(task_run_ids), MAX_PAGE_SIZE):
            chunk = [str(i) for i in task_run_ids[start : start + MAX_PAGE_SIZE]]
            body = {"task_runs": {"id": {"any_": chunk}}, "limit": MAX_PAGE_SIZE}
            for item in await self._json_list("POST", "task_runs/filter", body):
                task, flow_run = str(item.get("id")), str(item.get("flow_run_id"))
                if _is_uuid(task) and _is_uuid(flow_run) and task in chunk:
                    parents[UUID(task)] = UUID(flow_run)
        return parents

    async def _json_list(
        self, method: str, path: str, body: dict[str, Any]
    ) -> list[dict[str, Any]]:
        response = await self._request(method, path, json=body)
        data = self._json_answer(method, path, response)
        if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
            raise ServerError(
                f"unexpected answer: expected a list, got {type(data).__name__}",
                **self._where(response),
            )
        return data

    # -- writing ---------------------------------------------------------------------------

    async def set_flow_run_state(
        self,
        flow_run_id: UUID,
        state: ProposedState,
        *,
        force: bool = False,
        transition_id: UUID | None = None,
    ) -> OrchestrationResult:
        """Propose a state. Returns the server's verdict; see :meth:`ensure_accepted`.

        The same ``transition_id`` is sent on every retry, and a retry first checks whether
        the run already carries it, so a lost answer never makes the change twice.
        """
        tid = transition_id or uuid.uuid4()
        body = {"state": state.body(tid), "force": force}

        async def already_done() -> httpx.Response | None:
            run = await self.read_flow_run(flow_run_id)
            if run.state is not None and run.state.state_details.transition_id == tid:
                return httpx.Response(
                    200,
                    json={
                        "status": "ACCEPT",
                        "state": run.state.model_dump(mode="json"),
                        "details": {"type": "accept_details"},
                    },
                )
            return None

        response = await self._request(
            "POST", f"flow_runs/{flow_run_id}/set_state", json=body, before_retry=already_done
        )
        return _recognise_duplicate(self._parse(OrchestrationResult, response), tid)

    async def bulk_set_flow_run_state(
        self,
        ids: Sequence[UUID],
        state: ProposedState,
        *,
        force: bool = False,
        only_if: FlowRunFilter | None = None,
        transition_id: UUID | None = None,
    ) -> dict[UUID, OrchestrationResult]:
        """Propose one state for up to 50 runs in one request (``/flow_runs/bulk_set_state``).

        ``only_if`` narrows the id filter (for example to the state the plan saw), so runs
        that drifted are left alone by the server itself; they are absent from the answer.
        """
        self._check_batch(ids)
        if not await self.supports_bulk():
            raise UnsupportedByServer(
                "the server has no bulk routes (Prefect < 3.6.16)",
                method="POST",
                url=self._url_for("flow_runs/bulk_set_state"),
            )
        tid = transition_id or uuid.uuid4()
        flt = _narrow(by_ids(ids), only_if)
        body = {
            "flow_runs": flt.model_dump(mode="json", exclude_none=True),
            "state": state.body(tid),
            "force": force,
            "limit": len(ids),
        }
        done: dict[UUID, OrchestrationResult] = {}

        async def resend_remaining() -> httpx.Response | None:
            # A forced change skips the server's duplicate-transition check: before sending
            # again, take out the runs that already carry this transition.
            for run in await self._read_by_ids(ids):
                if run.state is not None and run.state.state_details.transition_id == tid:
                    done[run.id] = OrchestrationResult(
                        status=SetStateStatus.ACCEPT, state=run.state
                    )
            remaining = [i for i in ids if i not in done]
            if not remaining:
                return httpx.Response(200, json={"results": []})
            body["flow_runs"] = _narrow(by_ids(remaining), only_if).model_dump(
                mode="json", exclude_none=True
            )
            body["limit"] = len(remaining)
            return None

        response = await self._request(
            "POST", "flow_runs/bulk_set_state", json=body, before_retry=resend_remaining
        )
        try:
            results = TypeAdapter(list[BulkStateResult]).validate_python(_body(response)["results"])
        except (ValueError, KeyError, TypeError, ValidationError):
            raise ServerError(
                "unexpected answer from bulk_set_state",
                method="POST",
                url=self._url_for("flow_runs/bulk_set_state"),
            ) from None
        for item in results:
            if item.flow_run_id not in done:
                done[item.flow_run_id] = _recognise_duplicate(item.as_result(), tid)
        return done

    async def delete_flow_run(self, flow_run_id: UUID) -> bool:
        """Delete one run: True if this call deleted it, False if it was already gone."""
        response = await self._request("DELETE", f"flow_runs/{flow_run_id}", ok=(200, 204, 404))
        return response.status_code != 404

    async def bulk_delete_flow_runs(
        self,
        ids: Sequence[UUID],
        *,
        only_if: FlowRunFilter | None = None,
        check_again: Callable[[list[UUID]], Awaitable[list[UUID]]] | None = None,
    ) -> set[UUID]:
        """Delete up to 50 runs in one request; returns the ids that no longer exist.

        Runs excluded by ``only_if`` (they drifted) are left alone and are not returned. When
        an answer was lost and the request sent again, the server's second answer omits what
        the first deleted; those ids are recognised by reading what is left.

        ``check_again``: before each resend (a retry waits up to minutes), given the ids still
        in the request, the ones still to be deleted (the caller reads them back): the
        request is narrowed to those, and not sent when none is left.
        """
        self._check_batch(ids)
        if not await self.supports_bulk():
            raise UnsupportedByServer(
                "the server has no bulk routes (Prefect < 3.6.16)",
                method="POST",
                url=self._url_for("flow_runs/bulk_delete"),
            )
        flt = _narrow(by_ids(ids), only_if)
        body = {"flow_runs": flt.model_dump(mode="json", exclude_none=True), "limit": len(ids)}
        retried = False
        sending = list(ids)

        async def mark_retry() -> httpx.Response | None:
            nonlocal retried, sending
            retried = True
            if check_again is None:
                return None
            sending = await check_again(sending)
            if not sending:
                return httpx.Response(200, json={"deleted": []})
            body["flow_runs"] = _narrow(by_ids(sending), only_if).model_dump(
                mode="json", exclude_none=True
            )
            body["limit"] = len(sending)
            return None

        response = await self._request(
            "POST", "flow_runs/bulk_delete", json=body, before_retry=mark_retry
        )
        try:
            deleted = {UUID(str(i)) for i in _body(response)["deleted"]}
        except (ValueError, KeyError, TypeError):
            raise ServerError(
                "unexpected answer from bulk_delete",
                method="POST",
                url=self._url_for("flow_runs/bulk_delete"),
            ) from None
        if retried and len(deleted) < len(sending):
            present = {
                run.id for run in await self._read_by_ids([i for i in sending if i not in deleted])
            }
            deleted |= {i for i in sending if i not in present}
        return deleted

    @overload
    async def create_flow_run_from_deployment(
        self,
        deployment_id: UUID,
        *,
        state: ProposedState | None = ...,
        parameters: Mapping[str, Any] | None = ...,
        tags: Iterable[str] | None = ...,
        idempotency_key: str | None = ...,
        name: str | None = ...,
        job_variables: Mapping[str, Any] | None = ...,
        work_queue_name: str | None = ...,
        before_retry: None = ...,
    ) -> FlowRun: ...

    @overload
    async def create_flow_run_from_deployment(
        self,
        deployment_id: UUID,
        *,
        state: ProposedState | None = ...,
        parameters: Mapping[str, Any] | None = ...,
        tags: Iterable[str] | None = ...,
        idempotency_key: str | None = ...,
        name: str | None = ...,
        job_variables: Mapping[str, Any] | None = ...,
        work_queue_name: str | None = ...,
        before_retry: Callable[[], Awaitable[bool]],
    ) -> FlowRun | NotSentAgain: ...

    async def create_flow_run_from_deployment(
        self,
        deployment_id: UUID,
        *,
        state: ProposedState | None = None,
        parameters: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        name: str | None = None,
        job_variables: Mapping[str, Any] | None = None,
        work_queue_name: str | None = None,
        before_retry: Callable[[], Awaitable[bool]] | None = None,
    ) -> FlowRun | NotSentAgain:
        """Create a run of a deployment. The same ``idempotency_key`` returns the same run.

        What is not given comes from the deployment (the server merges ``parameters`` into
        the deployment's, and adds the deployment's tags to ``tags``). A ``work_queue_name``
        is a queue of the deployment's work pool (made if missing); the server refuses one
        for a deployment without a work pool.

        ``before_retry`` runs before each resend (after a failed attempt and its wait, up to
        minutes): the caller reads again what the create depends on and answers True to send
        nothing more. The failed attempt may still have made the run (its answer lost): the
        run the key made is then looked up and returned, else :class:`NotSentAgain`."""
        body: dict[str, Any] = {}
        if state is not None:
            body["state"] = state.body(uuid.uuid4())
        if parameters is not None:
            body["parameters"] = dict(parameters)
        if tags is not None:
            body["tags"] = list(tags)
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if name is not None:
            body["name"] = name
        if job_variables is not None:
            body["job_variables"] = dict(job_variables)
        if work_queue_name is not None:
            body["work_queue_name"] = work_queue_name
        stopped = False

        async def check_again() -> httpx.Response | None:
            nonlocal stopped
            if before_retry is not None and await before_retry():
                stopped = True
                return httpx.Response(204)
            return None

        failures: list[BaseException] = []
        response = await self._request(
            "POST",
            f"deployments/{deployment_id}/create_flow_run",
            json=body,
            before_retry=check_again,
            failures=failures,
        )
        if stopped:
            made = None
            if idempotency_key is not None:
                made = await self.read_run_made_with_key(deployment_id, idempotency_key)
            if made is not None:
                return made
            return NotSentAgain(maybe_made=not all(_not_carried_out(f) for f in failures))
        return self._parse(FlowRun, response)

    async def read_run_made_with_key(
        self, deployment_id: UUID, idempotency_key: str
    ) -> FlowRun | None:
        """The run of deployment ``deployment_id`` made with ``idempotency_key``, if any
        (checked here on each run the server returns, not trusted to its filter)."""
        body = {
            "deployments": {"id": {"any_": [str(deployment_id)]}},
            "flow_runs": {"idempotency_key": {"any_": [idempotency_key]}},
        }
        for item in await self.read_objects("flow_runs/filter", body):
            if item.get("idempotency_key") == idempotency_key and str(
                item.get("deployment_id")
            ) == str(deployment_id):
                try:
                    return FlowRun.model_validate(item)
                except (ValueError, ValidationError, RecursionError) as exc:
                    raise ServerError(
                        f"unexpected answer: {type(exc).__name__}",
                        method="POST",
                        url=self._url_for("flow_runs/filter"),
                    ) from None
        return None

    async def create_markdown_artifact(
        self,
        key: str,
        markdown: str,
        *,
        description: str | None = None,
        flow_run_id: UUID | None = None,
    ) -> UUID:
        """Store a markdown artifact under ``key`` (a new version of it); return its id.

        Sent once: when the answer is lost, the retry first reads the key's latest version
        and takes an identical document as the one already stored.
        """
        body: dict[str, Any] = {"key": key, "type": "markdown", "data": markdown}
        if description is not None:
            body["description"] = description
        if flow_run_id is not None:
            body["flow_run_id"] = str(flow_run_id)

        async def already_stored() -> httpx.Response | None:
            latest = await self._send_once("GET", f"artifacts/{key}/latest")
            if latest.status_code == 200 and _body(latest).get("data") == markdown:
                return latest
            return None

        response = await self._request("POST", "artifacts/", json=body, before_retry=already_stored)
        try:
            return UUID(str(_body(response)["id"]))
        except (KeyError, ValueError, TypeError):
            raise ServerError(
                "unexpected answer: no artifact id",
                method="POST",
                url=self._url_for("artifacts/"),
                status_code=response.status_code,
            ) from None

    async def emit_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Record ``events`` in Prefect's event feed (``POST /events``, a list; 204).

        Sent again when the answer is lost: each event carries its own id, and the server
        keeps one event per id (Prefect 3.9.1). :class:`UnsupportedByServer` when the server
        takes no events (Prefect 2.x answers 404 unless ``PREFECT_EXPERIMENTAL_EVENTS`` is on).
        """
        try:
            await self._request("POST", "events", json=list(events), ok=(200, 204), no_content=True)
        except (NotFound, UnsupportedByServer) as exc:
            raise UnsupportedByServer(exc.message, method="POST", url=exc.url) from None

    async def resume_flow_run(self, flow_run_id: UUID) -> OrchestrationResult:
        """Resume a paused run (``POST /flow_runs/{id}/resume``)."""
        response = await self._request("POST", f"flow_runs/{flow_run_id}/resume", json={})
        data = _body(response)
        if "status" not in data:  # some servers answer with the new state alone
            data = {"status": "ACCEPT", "state": data.get("state"), "details": {}}
        return OrchestrationResult.model_validate(data)

    async def update_flow_run_tags(self, flow_run_id: UUID, tags: Iterable[str]) -> None:
        """Replace a run's tags (idempotent: sending it twice leaves the same tags)."""
        await self._request("PATCH", f"flow_runs/{flow_run_id}", json={"tags": list(tags)})

    # -- the server lock (runner.lease): a global concurrency limit held under a lease --------

    async def read_concurrency_limit(self, name: str) -> ConcurrencyLimit | None:
        """The global concurrency limit called ``name``, or None when there is none."""
        path = f"v2/concurrency_limits/{quote(name, safe='')}"
        response = await self._request("GET", path, ok=(200, 404))
        if response.status_code == 404:
            return None
        return self._parse(ConcurrencyLimit, response)

    async def create_concurrency_limit(self, name: str, *, limit: int) -> bool:
        """Create a global concurrency limit: True, or False when one of that name exists
        (the server answers 409; a retry whose first attempt created it gets that too)."""
        response = await self._request(
            "POST",
            "v2/concurrency_limits/",
            json={"name": name, "limit": limit},
            ok=(200, 201, 409),
        )
        return response.status_code != 409

    async def take_concurrency_lease(
        self, name: str, *, lease_seconds: float, holder: UUID | None = None
    ) -> LeaseGrant | LeaseRefused:
        """One slot of the limit ``name`` under a lease that lasts ``lease_seconds`` unless
        renewed (``POST /v2/concurrency_limits/increment-with-lease``; the server takes 60 to
        86,400). ``holder`` is the flow run applying, shown by the server with the lease.

        Refused (423 Locked) when every slot is taken. A grant lists the limits it counts
        against: none when no limit is called ``name``. :class:`UnsupportedByServer` when the
        server has no leases (Prefect 2.x answers 405)."""
        body: dict[str, Any] = {
            "names": [name],
            "slots": 1,
            "mode": "concurrency",
            "lease_duration": lease_seconds,
        }
        if holder is not None:
            body["holder"] = {"type": "flow_run", "id": str(holder)}
        # An attempt whose answer was lost (no answer, or a garbled one) may have taken the slot.
        lost_before = self.stats.transport_errors + self.stats.malformed
        path = "v2/concurrency_limits/increment-with-lease"
        try:
            response = await self._request("POST", path, json=body, ok=(200, 423))
        except NotFound:
            raise UnsupportedByServer(
                "HTTP 404: the server has no concurrency leases",
                method="POST",
                url=self._url_for(path),
            ) from None
        if response.status_code == 423:
            try:
                retry_after: float | None = float(response.headers.get("retry-after", ""))
            except ValueError:
                retry_after = None
            lost = self.stats.transport_errors + self.stats.malformed > lost_before
            return LeaseRefused(retry_after=retry_after, after_lost_answer=lost)
        return self._parse(LeaseGrant, response)

    async def renew_concurrency_lease(self, lease_id: UUID, *, lease_seconds: float) -> bool:
        """Extend a lease to ``lease_seconds`` from now: False when the server no longer has
        it (410 Gone: it expired, or was released)."""
        response = await self._request(
            "POST",
            f"v2/concurrency_limits/leases/{lease_id}/renew",
            json={"lease_duration": lease_seconds},
            ok=(200, 204, 404, 410),
            no_content=True,
        )
        return response.status_code in (200, 204)

    async def release_concurrency_lease(self, lease_id: UUID) -> None:
        """Give a lease's slots back and end it (``decrement-with-lease``; a lease the server
        no longer has is answered 204 all the same, so sending it twice is harmless)."""
        await self._request(
            "POST",
            "v2/concurrency_limits/decrement-with-lease",
            json={"lease_id": str(lease_id)},
            ok=(200, 204),
            no_content=True,
        )

    async def _read_by_ids(self, ids: Sequence[UUID]) -> list[FlowRun]:
        runs: list[FlowRun] = []
        for start in range(0, len(ids), self._page_size):
            chunk = ids[start : start + self._page_size]
            runs += await self.read_flow_runs(
                FlowRunQuery(flow_runs=by_ids(chunk)), limit=len(chunk)
            )
        return runs

    @staticmethod
    def _check_batch(ids: Sequence[UUID]) -> None:
        if not ids:
            raise ValueError("a bulk call needs at least one run id")
        if len(ids) > MAX_BULK_SIZE:
            raise ValueError(f"a bulk call takes at most {MAX_BULK_SIZE} runs, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise ValueError("a bulk call was given the same run id twice")


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


def ensure_accepted(result: OrchestrationResult, *, flow_run_id: UUID) -> State:
    """The new state, or :class:`OrchestrationRejected` with the server's reason."""
    if result.accepted and result.state is not None:
        return result.state
    raise OrchestrationRejected(
        f"run {flow_run_id}: {result.status.value}"
        + (f" ({result.reason})" if result.reason else ""),
        status=result.status.value,
        reason=result.reason,
    )


def _recognise_duplicate(result: OrchestrationResult, tid: UUID) -> OrchestrationResult:
    """A REJECT because the run already made *this* transition is our own earlier success."""
    if (
        result.status is SetStateStatus.REJECT
        and result.state is not None
        and result.state.state_details.transition_id == tid
    ):
        return OrchestrationResult(status=SetStateStatus.ACCEPT, state=result.state)
    return result


def _narrow(ids_filter: FlowRunFilter, extra: FlowRunFilter | None) -> FlowRunFilter:
    """The id filter, narrowed by ``extra``'s other fields (its ``id`` may not widen it)."""
    if extra is None:
        return ids_filter
    return extra.model_copy(update={"id": ids_filter.id})
