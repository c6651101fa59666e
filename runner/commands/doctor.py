"""``runner doctor``: which server runner would talk to, and what that server can do."""

from __future__ import annotations

from typing import TextIO

from runner.client import PrefectClient
from runner.commands.interrupt import run_interruptible
from runner.errors import APIError, SettingsError
from runner.redact import redact
from runner.settings import ConnectionSettings


def run(settings: ConnectionSettings, *, out: TextIO) -> int:
    """Print the resolved settings (never a secret) and the server's answers."""
    print(
        f"API URL:      {redact(settings.display_url)}"
        f"  ({settings.sources.get('PREFECT_API_URL', '')})",
        file=out,
    )
    auth = "API key" if settings.api_key else "auth string" if settings.auth_string else "none"
    print(f"credentials:  {auth}", file=out)
    print(f"timeout:      {settings.request_timeout:g}s", file=out)

    async def probe() -> int:
        async with PrefectClient(settings) as client:
            try:
                info = await client.server_info()
            except SettingsError as exc:  # the URL lacks the API's path
                print(f"server:       wrong API URL: {exc}", file=out)
                return 1
            except APIError as exc:
                print(f"server:       unreachable or refused: {exc}", file=out)
                return 1
        print(
            f"server:       Prefect {info.version or 'unknown'} (API {info.api_version})", file=out
        )
        print(f"bulk routes:  {'yes' if info.bulk_routes else 'no (per-run calls)'}", file=out)
        return 0

    return run_interruptible(probe)
