"""A real Prefect server for the tests: installed into its own venv, started on a free port.

The Prefect version comes from ``RUNNER_TEST_PREFECT`` (default ``3.9.1``, the newest 3.x that
installs from the package registry reachable here; ``2`` means the newest 2.x). Venvs and a
migrated template database live under ``RUNNER_TEST_CACHE`` (default ``~/.cache/runner-tests``)
so only the first run pays for the install and the migrations.

Also runnable: ``python -m tests.support.prefect_server [--keep]`` starts a server and prints its URL;
``python -m tests.support.prefect_server --prepare VERSION...`` installs those versions and
migrates their template databases, one after the other, and starts nothing (``scripts/test``
does it in the background while the checks before each leg run).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_VERSION = "3.9.1"
HEALTH_TIMEOUT = 180.0

# What pip is asked for, by version. 3.9.1 installs plainly since 2026-11-29; 3.8.8 needs
# fastapi capped or the server dies at import ('min_items'). See ../shared/PREFECT_API.md.
REQUIREMENTS = {
    "3.9.1": ["prefect==3.9.1"],
    "3.8.8": ["prefect==3.8.8", "fastapi<0.150"],
    # The oldest 3.x with the bulk routes. Its workers import importlib_metadata, which its
    # requirements no longer pull in: without it `prefect server start` dies at import.
    "3.6.16": ["prefect==3.6.16", "fastapi<0.130", "importlib_metadata"],
    "2": ["prefect==2.20.26"],
    "2.20.26": ["prefect==2.20.26"],
}


def runner_requirements() -> list[str]:
    """runner's own runtime dependencies, from pyproject.toml.

    They go into the Prefect venv too, so that ``runner.prefect_flow`` (the ``runner[prefect]``
    extra) runs there from this checkout (``PYTHONPATH``) without installing runner into it.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(project["dependencies"])


def requirements_for(version: str) -> list[str]:
    if version in REQUIREMENTS:
        prefect = REQUIREMENTS[version]
    elif version.startswith("3."):
        prefect = [f"prefect=={version}", "fastapi<0.150"]
    else:
        prefect = [f"prefect=={version}"]
    return [*prefect, *runner_requirements()]


def cache_dir() -> Path:
    return Path(os.environ.get("RUNNER_TEST_CACHE", Path.home() / ".cache" / "runner-tests"))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_venv(version: str) -> Path:
    """The venv holding this Prefect version, installed on first use."""
    reqs = requirements_for(version)
    key = hashlib.sha256(" ".join(reqs).encode()).hexdigest()[:10]
    venv = cache_dir() / f"prefect-{version}-{key}"
    marker = venv / ".installed"
    if marker.exists():
        return venv
    with _locked(cache_dir() / f".{venv.name}.lock"):
        if marker.exists():
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        result = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *reqs],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            errors = [ln for ln in result.stderr.splitlines() if "Location" not in ln]
            raise RuntimeError(f"pip install {' '.join(reqs)} failed:\n" + "\n".join(errors[-30:]))
        marker.write_text(f"{' '.join(reqs)}\ninstalled in {time.monotonic() - started:.1f}s\n")
    return venv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        # Events become readable when the server's persister flushes them: every 5 s by
        # default, which a test reading events back would wait for (3.x reads this name too).
        PREFECT_API_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL="0.5",
    )
    env.update(extra or {})
    return env


class PrefectServer:
    """One ``prefect server start`` process with its own PREFECT_HOME and SQLite database."""

    def __init__(self, venv: Path, home: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.venv = venv
        self.home = home
        self.port = free_port()
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"
        self.startup_seconds: float | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float = HEALTH_TIMEOUT) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.venv / "bin" / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=server_env(self.home, self.extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def template_home(version: str, venv: Path) -> Path:
    """A PREFECT_HOME whose SQLite database is already migrated (made once per version)."""
    home = venv / "template-home"
    marker = home / ".migrated"
    if marker.exists():
        return home
    with _locked(cache_dir() / f".{venv.name}.template.lock"):
        if marker.exists():
            return home
        if home.exists():
            shutil.rmtree(home)
        server = PrefectServer(venv, home).start()
        server.stop()
        marker.write_text(f"migrated in {server.startup_seconds:.1f}s\n")
    return home


def start_server(
    version: str | None = None, *, extra_env: dict[str, str] | None = None
) -> PrefectServer:
    """Install if needed, copy the migrated database into a new PREFECT_HOME, start."""
    version = version or os.environ.get("RUNNER_TEST_PREFECT", DEFAULT_VERSION)
    venv = ensure_venv(version)
    template = template_home(version, venv)
    home = Path(tempfile.mkdtemp(prefix="runner-prefect-home-"))
    server = PrefectServer(venv, home, extra_env=extra_env)
    try:
        for name in ("prefect.db",):
            if (template / name).exists():
                shutil.copy2(template / name, home / name)
        return server.start()
    except BaseException:  # a failed start, or Ctrl-C / SIGTERM during it: nothing left behind
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
        raise


def prepare(version: str) -> Path:
    """Install ``version`` and migrate its template database, if not done before."""
    venv = ensure_venv(version)
    template_home(version, venv)
    return venv


def main() -> None:
    if sys.argv[1:2] == ["--prepare"]:
        for version in sys.argv[2:]:
            started = time.monotonic()
            venv = prepare(version)
            print(f"{venv.name}: ready after {time.monotonic() - started:.1f}s", flush=True)
        return
    server = start_server()
    print(f"PREFECT_API_URL={server.api_url}  (started in {server.startup_seconds:.1f}s)")
    if "--keep" in sys.argv:
        print("Ctrl-C stops it.")
        with contextlib.suppress(KeyboardInterrupt):
            server.process.wait() if server.process else None
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)


if __name__ == "__main__":
    main()
