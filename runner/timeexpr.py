"""Durations (``90s``, ``1d12h``, ``PT6H``) and times (``now-6h``, ``-30d``, ISO 8601).

The patterns here are the ones the JSON Schema publishes; a test keeps them equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

DURATION_PATTERN = (
    r"^(?:(?=\d)(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?"
    r"|P(?=\d|T\d)(?:\d+W)?(?:\d+D)?(?:T(?=\d)(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?)$"
)
_SHORT = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_ISO = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_UNITS = r"(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?"
_RELATIVE = rf"(?:now(?:[+-](?=\d){_UNITS})?|[+-](?=\d){_UNITS})"
_ABSOLUTE = r"(?:\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2}))?)"
TIME_PATTERN = rf"^(?:{_RELATIVE}|{_ABSOLUTE})$"
_RELATIVE_RE = re.compile(r"^(?:now)?(?:([+-])(.+))?$")

DURATION_EXAMPLES = "90s, 6h, 1d12h, PT6H"
TIME_EXAMPLES = "now, -30d, now-6h, 2026-01-31T00:00:00Z"

#: The longest duration (and the farthest a relative time reaches from now): about 1,000
#: years, so that times computed from one stay within what a datetime can hold.
MAX_DURATION = timedelta(days=365_000)
_MAX_DURATION_TEXT = f"{MAX_DURATION.days}d, about 1,000 years"


def parse_duration(text: str) -> timedelta:
    """A duration: ``90s``, ``15m``, ``6h``, ``1d12h``, ``2w`` or ISO 8601 ``PT6H``."""
    if not re.match(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration (examples: {DURATION_EXAMPLES})")
    try:
        value = _duration_of(text)
    except (OverflowError, ValueError):  # past timedelta's range, or too many digits for int()
        value = None
    if value is None or value > MAX_DURATION:
        raise ValueError(f"{_short(text)!r} is too long (at most {_MAX_DURATION_TEXT})")
    return value


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _duration_of(text: str) -> timedelta:
    short = _SHORT.match(text)
    if short and text[0] != "P":
        w, d, h, m, s = (int(g or 0) for g in short.groups())
        return timedelta(weeks=w, days=d, hours=h, minutes=m, seconds=s)
    iso = _ISO.match(text)
    assert iso is not None  # guaranteed by DURATION_PATTERN
    w, d, h, m = (int(g or 0) for g in iso.groups()[:4])
    return timedelta(weeks=w, days=d, hours=h, minutes=m, seconds=float(iso.group(5) or 0))


def format_duration(value: timedelta) -> str:
    """The shortest ``1d12h`` form of a duration (negative ones get a ``-``)."""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + "".join(parts)


@dataclass(frozen=True)
class TimeExpr:
    """A point in time as written in a playbook: absolute, or relative to the plan's ``now``."""

    text: str
    absolute: datetime | None = None
    offset: timedelta | None = None

    def resolve(self, now: datetime) -> datetime:
        if self.absolute is not None:
            return self.absolute
        return now + (self.offset or timedelta(0))

    def __str__(self) -> str:
        return self.text


def parse_time(text: str) -> TimeExpr:
    """``now``, ``now-6h``, ``now+1d``, ``-30d``, ``2026-01-31`` (UTC midnight) or an ISO 8601
    date-time with a timezone (``2026-01-31T00:00:00Z``)."""
    if not re.match(TIME_PATTERN, text):
        raise ValueError(f"{text!r} is not a time (examples: {TIME_EXAMPLES})")
    if text[0] in "n+-":
        match = _RELATIVE_RE.match(text)
        assert match is not None
        sign, rest = match.groups()
        offset = timedelta(0)
        if rest:
            try:
                offset = parse_duration(rest)
            except ValueError:
                raise ValueError(
                    f"{_short(text)!r} is too far from now (at most {_MAX_DURATION_TEXT})"
                ) from None
            if sign == "-":
                offset = -offset
        return TimeExpr(text=text, offset=offset)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time (examples: {TIME_EXAMPLES})") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # a date alone: midnight UTC
    try:
        value.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the year 1 in UTC
        raise ValueError(f"{text!r} is out of range (years 1 to 9999, in UTC)") from None
    return TimeExpr(text=text, absolute=value)
