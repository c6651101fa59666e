"""The release's shape: licence, version, changelog and the Prefect range agree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

import runner
from tests.support.prefect_server import REQUIREMENTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_licence_is_the_one_pyproject_names() -> None:
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text


def test_one_version_and_the_changelog_knows_it() -> None:
    assert runner.__version__ == PROJECT["version"]
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert headings and headings[0] in ("Unreleased", PROJECT["version"])


def test_the_prefect_extra_covers_exactly_the_tested_versions() -> None:
    (raw,) = PROJECT["optional-dependencies"]["prefect"]
    extra = Requirement(raw)
    tested = {
        pin.split("==")[1] for pins in REQUIREMENTS.values() for pin in pins if "prefect==" in pin
    }
    assert tested and all(extra.specifier.contains(v) for v in tested), (extra, tested)
    lowest = min(tested, key=lambda v: tuple(map(int, v.split("."))))
    highest = max(tested, key=lambda v: tuple(map(int, v.split("."))))
    assert extra.specifier.contains(".".join(lowest.split(".")[:2]))  # e.g. 2.20: all of it
    next_minor = highest.split(".")[0] + "." + str(int(highest.split(".")[1]) + 1)
    assert not extra.specifier.contains(next_minor)  # untested: not promised
    readme = (ROOT / "README.md").read_text()
    assert f"`{raw}`" in readme  # the supported range, stated
