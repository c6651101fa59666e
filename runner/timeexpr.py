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


def parse_duration(text: str) -> timedelta:
    """A duration: ``90s``, ``15m``, ``6h``, ``1d12h``, ``2w`` or ISO 8601 ``PT6H``."""
    if not re.match(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration (examples: {DURATION_EXAMPLES})")
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
            offset = parse_duration(rest)
            if sign == "-":
                offset = -offset
        return TimeExpr(text=text, offset=offset)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time (examples: {TIME_EXAMPLES})") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # a date alone: midnight UTC
    return TimeExpr(text=text, absolute=value)
