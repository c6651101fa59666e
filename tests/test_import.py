"""The core never needs the prefect package, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys


def test_import_runner_does_not_import_prefect() -> None:
    code = (
        "import sys, runner, runner.client, runner.cli;"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve() -> None:
    import runner

    for name in runner.__all__:
        assert getattr(runner, name) is not None


def test_the_planner_and_the_renderer_are_pure_down_to_their_imports() -> None:
    """Planning and rendering read no server: importing them loads no HTTP client, no async
    runtime and none of runner's I/O modules."""
    code = (
        "import sys, runner.planner, runner.render, runner.planfile;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpcore', 'anyio')"
        " or m in ('runner.client', 'runner.observe', 'runner.executor', 'runner.journal')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
