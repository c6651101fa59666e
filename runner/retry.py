"""When and how long to wait before sending a request again."""

from __future__ import annotations

import dataclasses
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import tenacity

from runner.playbook import Retry

#: The playbook's default ``retry`` (docs/playbooks.md): the policy's defaults are its own.
_DEFAULT = Retry()

#: Answers that mean "not now": the request was not carried out and may be sent again.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """A bounded exponential backoff with jitter that honours ``Retry-After``.

    ``max_attempts`` counts the first try. The wait before try *n* is
    ``base = min(max_backoff, initial_backoff * 2**(n-2))`` plus ``uniform(0, min(jitter,
    base / 2))`` unless the server said how long to wait (capped at ``max_retry_after``). The
    jitter never adds more than half the wait: a short first backoff stays short (a busy SQLite
    server's 503 clears in a fraction of a second).

    A server that has not answered yet and takes no connection (refused, no such host) gets
    ``first_contact_attempts``, each wait at most ``first_contact_backoff``: a server that is
    not running is said in a second, not after the backoff meant for a busy one. A server that
    answered before and then drops gets the whole policy.
    """

    max_attempts: int = _DEFAULT.max_attempts
    initial_backoff: float = _DEFAULT.backoff.total_seconds()
    max_backoff: float = _DEFAULT.max_backoff.total_seconds()
    jitter: float = 0.5
    max_retry_after: float = 120.0
    statuses: frozenset[int] = RETRY_STATUSES
    first_contact_attempts: int = 3
    first_contact_backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.first_contact_attempts < 1:
            raise ValueError("max_attempts and first_contact_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.jitter < 0:
            raise ValueError("backoff and jitter must not be negative")


def policy_for(retry: Retry, base: RetryPolicy | None = None) -> RetryPolicy:
    """``base`` with a playbook's ``retry`` settings (max_attempts, backoff, max_backoff)."""
    return dataclasses.replace(
        base or RetryPolicy(),
        max_attempts=retry.max_attempts,
        initial_backoff=retry.backoff.total_seconds(),
        max_backoff=retry.max_backoff.total_seconds(),
    )


class RetryableStatus(Exception):
    """Raised inside the retry loop for an answer in :attr:`RetryPolicy.statuses`."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = parse_retry_after(response.headers.get("retry-after"))


class MalformedAnswer(Exception):
    """A success status whose body is not the JSON it announces: a garbled or cut-off answer.

    Retried like a dropped connection (every change tolerates being sent again)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code} with a body that is not valid JSON")
        self.response = response
        self.retry_after: float | None = None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    return max(0.0, (when - current).total_seconds())


def is_retryable(exc: BaseException) -> bool:
    """Connection-level failures and "not now" answers are retried; nothing else."""
    return isinstance(exc, (RetryableStatus, MalformedAnswer, httpx.TransportError))


def backoff_seconds(policy: RetryPolicy, failed_attempts: int) -> float:
    """The wait after ``failed_attempts`` failures, when the server named none."""
    exponent = max(0, failed_attempts - 1)
    base = min(policy.max_backoff, policy.initial_backoff * (2.0 ** min(exponent, 32)))
    return base + random.uniform(0, min(policy.jitter, base / 2))


def is_no_connection(exc: BaseException | None) -> bool:
    """No connection could be made: refused, no such host, timed out while connecting."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def retrying(
    policy: RetryPolicy, *, answered: Callable[[], bool] | None = None
) -> tenacity.AsyncRetrying:
    """A tenacity loop for one logical request under ``policy``. ``answered`` says whether
    the server has answered before (the first-contact rule applies until it has)."""

    def first_contact(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        return answered is not None and not answered() and is_no_connection(exc)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableStatus) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_retry_after)
        seconds = backoff_seconds(policy, state.attempt_number)
        return min(seconds, policy.first_contact_backoff) if first_contact(state) else seconds

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        return first_contact(state) and state.attempt_number >= policy.first_contact_attempts

    return tenacity.AsyncRetrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(is_retryable),
        reraise=True,
    )
