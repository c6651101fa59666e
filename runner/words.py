"""How a count is written in runner's output: "1 run", "2 runs", "1 change"."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one (``many`` when
    the plural is not the noun with an "s")."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"
