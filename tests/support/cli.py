"""``runner`` as operators run it: a process of its own, with the environment a test gives it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
#: The ``runner`` console script of the environment the tests run in.
RUNNER = str(Path(sys.executable).parent / "runner")


def cli_env(api_url: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without Prefect's settings (a test names the server it
    means) and without ``CI`` (set when CI runs the tests; a test that means it names it),
    with ``NO_COLOR``, ``PREFECT_API_URL`` when given, then ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "CI"}
    full["NO_COLOR"] = "1"
    if api_url is not None:
        full["PREFECT_API_URL"] = api_url
    full.update(env or {})
    return full


def run_cli(
    *args: str,
    api_url: str | None = None,
    cwd: Path | str = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """``runner ARGS`` to its end: exit code, stdout and stderr as text; no terminal."""
    return subprocess.run(
        [RUNNER, *args],
        capture_output=True,
        text=True,
        env=cli_env(api_url, env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def start_cli(
    *args: str,
    api_url: str | None = None,
    cwd: Path | str = ROOT,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``runner ARGS`` started, not waited for (to be interrupted or killed)."""
    return subprocess.Popen(
        [RUNNER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(api_url, env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
