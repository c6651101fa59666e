"""Ctrl-C and SIGTERM exit 130 at every stage, as the exit-code table says: while planning
and at the prompt nothing has been sent, and nothing is; while applying, the requests in
flight finish and the resume command is printed (test_cli_apply.py)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
import tty
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import RUNNER, cli_env, start_cli
from tests.support.fault_proxy import FaultProxy
from tests.support.prefect_server import PrefectServer
from tests.support.seed import Seeder

SIGNALS = [signal.SIGINT, signal.SIGTERM]


# A runner that does not stop is made to show where it is: SIGABRT, and Python's fault
# handler prints every thread's stack on stderr.
DUMP_ON_ABORT = {"PYTHONFAULTHANDLER": "1"}


def communicate_or_dump(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """``process``'s output once it ends, or, when it has not ended within ``timeout``
    seconds, a failure that shows its stacks."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        _, err = process.communicate(timeout=30)
        raise AssertionError(f"runner did not stop within {timeout:g} s:\n{err}") from None


def playbook(tmp: Path, flow: dict[str, Any]) -> Path:
    """A playbook named for the flow: each test's apply has a server lock of its own."""
    path = tmp / "playbook.yaml"
    path.write_text(
        f"version: 1\nname: {flow['name']}\nsteps:\n  - name: act\n"
        f"    select: {{flows: {flow['name']}}}\n    action: delete\n"
    )
    return path


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("plan",), "interrupted"),
        (("apply", "--dry-run"), "stopped before anything was sent"),
        (("apply", "--yes"), "stopped before anything was sent"),
    ],
    ids=["plan", "apply --dry-run", "apply --yes"],
)
def test_a_signal_while_planning_exits_130(
    prefect_server: PrefectServer,
    seeder: Seeder,
    tmp_path: Path,
    signum: signal.Signals,
    args: tuple[str, ...],
    said: str,
) -> None:
    flow = seeder.flow()
    seeder.runs(2, flow, "Completed")
    path = playbook(tmp_path, flow)
    # The server's answer to the read of the runs is held: the plan is being made.
    with FaultProxy(
        prefect_server.api_url,
        seed=1,
        rate=1.0,
        kinds=("slow",),
        slow_seconds=60,
        only="POST /api/flow_runs/filter",
    ) as proxy:
        process = start_cli(
            args[0], str(path), *args[1:], api_url=proxy.api_url, cwd=tmp_path, env=DUMP_ON_ABORT
        )
        deadline = time.monotonic() + 60
        while not proxy.injected["slow"] and process.poll() is None:
            assert time.monotonic() < deadline, "the plan never read the runs"
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = communicate_or_dump(process)
    assert process.returncode == 130, err
    assert (out, err) == ("", f"\nrunner: {signum.name}: {said}\n")
    assert not (tmp_path / ".runner").exists()
    assert len(seeder.runs_of_flow(flow)) == 2


def at_the_prompt(
    api_url: str, path: Path, cwd: Path, *, raw: bool = False, ahead: bytes = b""
) -> tuple[subprocess.Popen[str], int]:
    """``runner apply PATH`` at a terminal (in raw mode if ``raw``), ``ahead`` typed as soon
    as it starts, and waited for until it asks: the process and the terminal's other end."""
    terminal, side = pty.openpty()  # a terminal: runner asks before it applies
    if raw:
        tty.setraw(side)
    process = subprocess.Popen(
        [RUNNER, "apply", str(path)],
        stdin=side,
        stdout=side,
        stderr=subprocess.PIPE,
        env=cli_env(api_url, DUMP_ON_ABORT),
        cwd=cwd,
        text=True,
    )
    os.close(side)
    if ahead:
        os.write(terminal, ahead)
    shown = b""
    deadline = time.monotonic() + 60
    try:
        while b"? [y/N] " not in shown:
            assert time.monotonic() < deadline and process.poll() is None, shown.decode()
            if select.select([terminal], [], [], 0.1)[0]:
                shown += os.read(terminal, 65536)
        assert f"Apply 2 changes to {api_url}? [y/N] ".encode() in shown
    except BaseException:
        end(process, terminal)
        raise
    return process, terminal


def end(process: subprocess.Popen[str], terminal: int) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
    os.close(terminal)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)
def test_a_signal_at_the_prompt_exits_130(
    api_url: str, seeder: Seeder, tmp_path: Path, signum: signal.Signals
) -> None:
    """The signal is sent the moment the question shows. A prompt that read the terminal
    with a blocking read missed it when it came between the question and the read (1 in
    40 on a loaded machine, and in CI): the prompt now waits in the event loop."""
    flow = seeder.flow()
    seeder.runs(2, flow, "Completed")
    process, terminal = at_the_prompt(api_url, playbook(tmp_path, flow), tmp_path)
    try:
        process.send_signal(signum)
        _, err = communicate_or_dump(process, timeout=30)
    finally:
        end(process, terminal)
    assert process.returncode == 130, err
    assert err == f"\nrunner: {signum.name}: stopped before anything was sent\n"
    assert not (tmp_path / ".runner").exists()
    assert len(seeder.runs_of_flow(flow)) == 2


@pytest.mark.parametrize(
    ("raw", "typed"),
    [(False, b"y\x04"), (True, b"y")],
    ids=["y then Ctrl-D", "y in raw mode"],
)
def test_a_signal_after_part_of_an_answer_exits_130(
    api_url: str, seeder: Seeder, tmp_path: Path, raw: bool, typed: bytes
) -> None:
    """Part of a line is there (Ctrl-D hands over a line without its end; a raw terminal
    hands over each key): the prompt waits for the rest in the event loop, and a signal
    stops it. A blocking read of the line heard no signal, and held the lease's renewals up."""
    flow = seeder.flow()
    seeder.runs(2, flow, "Completed")
    process, terminal = at_the_prompt(api_url, playbook(tmp_path, flow), tmp_path, raw=raw)
    try:
        os.write(terminal, typed)
        process.send_signal(signal.SIGINT)
        _, err = communicate_or_dump(process, timeout=30)
    finally:
        end(process, terminal)
    assert process.returncode == 130, err
    assert err == "\nrunner: SIGINT: stopped before anything was sent\n"
    assert len(seeder.runs_of_flow(flow)) == 2


@pytest.mark.parametrize(
    ("raw", "ahead", "typed", "applied"),
    [
        (False, b"", b" Yes \n", True),
        (True, b"", b"y\r", True),  # Enter in raw mode is a carriage return
        (False, b"", b"yy\n", False),
        (False, b"", b"\n", False),
        (False, b"", b"y\x04\x04", False),  # the end of input before Enter
        (False, b"y\n", b"n\n", False),  # a y typed before the question answers nothing
        (False, b"", b"y" + b" " * 1100 + b"no\n", False),  # longer than an answer is read
        (False, b"", "y\u00a0\n".encode(), False),  # a no-break space is not a space here
        (True, b"", b"y\x1f\r", False),  # nor a control character str.strip() takes
        (False, b"", b"\ty \n", True),
    ],
    ids=[
        "yes",
        "y in raw mode",
        "yy",
        "enter",
        "y then the end",
        "typed ahead",
        "y and a long no",
        "y and a no-break space",
        "y and a control character",
        "y between a tab and a space",
    ],
)
def test_only_y_or_yes_and_enter_at_the_prompt_applies(
    api_url: str,
    seeder: Seeder,
    tmp_path: Path,
    raw: bool,
    ahead: bytes,
    typed: bytes,
    applied: bool,
) -> None:
    flow = seeder.flow()
    seeder.runs(2, flow, "Completed")
    path = playbook(tmp_path, flow)
    process, terminal = at_the_prompt(api_url, path, tmp_path, raw=raw, ahead=ahead)
    try:
        os.write(terminal, typed)
        _, err = communicate_or_dump(process, timeout=120)
    finally:
        end(process, terminal)
    assert process.returncode == (0 if applied else 1), err
    assert len(seeder.runs_of_flow(flow)) == (0 if applied else 2)
    if not applied:
        assert (err, (tmp_path / ".runner").exists()) == ("", False)
