"""The demo (``bash scripts/demo``) run for real: what it says is true, and stopping it with
SIGTERM, at any point, leaves no Prefect server running and no temporary folder behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.server


class Demo:
    """``python -m tests.support.demo`` (what ``scripts/demo`` execs), its temporary folders
    made in ``tmp`` (``TMPDIR``), its output read as it comes."""

    def __init__(self, tmp: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(TMPDIR=str(tmp), NO_COLOR="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.demo", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"the demo never said {text!r}:\n{self.output}")
            time.sleep(0.1)

    def port(self) -> int:
        match = re.search(r"Prefect server up at http://127\.0\.0\.1:(\d+)/api", self.output)
        assert match is not None, self.output
        return int(match.group(1))

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=120)
        self._reader.join(10)
        return code


def server_processes(port: int) -> list[int]:
    """Live processes of ``prefect server start ... --port PORT``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"server" in args and b"--port" in args and str(port).encode() in args and state != "Z":
            found.append(int(entry.name))
    return found


def left_behind(tmp: Path) -> list[str]:
    return sorted(
        p.name for p in tmp.iterdir() if p.name.startswith(("runner-demo-", "runner-prefect-home-"))
    )


def test_demo_keep_stopped_by_sigterm_stops_its_server_and_removes_its_folders(
    tmp_path: Path,
) -> None:
    demo = Demo(tmp_path, "--keep")
    demo.wait_for("Ctrl-C stops it.")
    port = demo.port()
    assert server_processes(port), "no server process found: the check below would be empty"
    assert len(left_behind(tmp_path)) == 2  # the server's home and the demo's state dir
    assert (
        "Seeded 12 late runs of healthcheck/healthcheck-storage-test, one running and one"
        " scheduled run of it, and 5 runs of etl/nightly, one each Late, Running, Scheduled,"
        " Completed and Failed.\n"
    ) in demo.output
    assert "(9 late runs deleted; the 5 etl/nightly runs untouched)" in demo.output

    code = demo.stop(signal.SIGTERM)

    assert code == 0, demo.output  # --keep runs until it is stopped: that is its end
    assert demo.output.endswith("Server stopped.\n"), demo.output
    assert server_processes(port) == []
    assert left_behind(tmp_path) == []


def test_demo_stopped_by_sigterm_midway_cleans_up_too(tmp_path: Path) -> None:
    demo = Demo(tmp_path)
    demo.wait_for("Prefect server up at")
    port = demo.port()
    assert server_processes(port)

    code = demo.stop(signal.SIGTERM)

    assert code == 130, demo.output
    assert "\nInterrupted (SIGTERM).\nServer stopped.\n" in demo.output
    assert server_processes(port) == []
    assert left_behind(tmp_path) == []
