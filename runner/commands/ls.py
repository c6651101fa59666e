"""``runner ls PLAYBOOK`` / ``runner ls --select YAML``: the runs each step selects, as a
table, JSON Lines or CSV on stdout, written page by page as they are read; nothing sent but
reads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Mapping
from typing import TextIO

from runner.client import PrefectClient
from runner.commands.interrupt import run_interruptible
from runner.errors import EXIT_OK, OutputError
from runner.listing import Capped, Format, Listed, ListingWriter, list_selections
from runner.loader import load_playbook, load_select
from runner.retry import policy_for
from runner.settings import ConnectionSettings


def run(
    path: str | None,
    *,
    select: str | None,
    variables: Mapping[str, str],
    settings: ConnectionSettings,
    fmt: Format,
    limit: int | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """List PLAYBOOK's selections (or the one ``select`` gives). A reader that stops early
    (``runner ls ... | head``) ends the listing quietly: nothing more is read."""
    if path is not None:
        playbook = load_playbook(path, variables=variables)
    else:
        assert select is not None
        playbook = load_select(select, variables=variables)
    writer = ListingWriter(fmt, out, titles=path is not None)

    async def go() -> None:
        # bulk=False: listing needs no bulk routes, so not even their probe is sent.
        retry = policy_for(playbook.defaults.retry)
        async with PrefectClient(settings, bulk=False, retry=retry) as client:
            events: AsyncGenerator[Listed, None] = list_selections(client, playbook, limit=limit)
            async with contextlib.aclosing(events):
                async for event in events:
                    _write(writer, event)
                    if isinstance(event, Capped):
                        err.write(f"runner: stopped at --limit {event.limit}: more runs match\n")

    try:
        run_interruptible(go)
    except BrokenPipeError:
        _quiet(out)
    return EXIT_OK


def _write(writer: ListingWriter, event: Listed) -> None:
    try:
        writer(event)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write the listing: {exc.strerror or exc}") from None


def _quiet(out: TextIO) -> None:
    """The reader went away: what is still buffered for it goes nowhere (Python would
    otherwise complain at exit that it could not be flushed)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
