"""Finding an unfinished apply to resume reads only the plans that can be it: a saved plan of
100,000 runs takes seconds to read, and a state folder keeps every apply's."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runner import apply
from runner.errors import RunnerError
from runner.loader import load_text

PLAYBOOK = "version: 1\nsteps:\n  - name: s\n    select: {flows: etl}\n    action: delete\n"


def saved(state: Path, name: str, digest: str) -> Path:
    """A folder as an apply leaves it: a plan naming ``digest`` and a checkpoint."""
    folder = state / name
    folder.mkdir(parents=True)
    head = f'{{\n  "format": "runner-plan",\n  "playbook": {{\n    "digest": "{digest}",\n'
    (folder / "plan.json").write_text(head + "  ... the rest is not read ...\n")
    (folder / "checkpoint.jsonl").write_text("{}\n")
    return folder / "plan.json"


def test_a_plan_of_another_playbook_is_not_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    playbook = load_text(PLAYBOOK, env={})
    other = saved(tmp_path, "other", "sha256:" + "0" * 64)
    mine = saved(tmp_path, "mine", playbook.digest)
    read: list[Path] = []

    def reading(path: Any) -> Any:
        read.append(Path(path))
        raise RunnerError("not a plan")

    monkeypatch.setattr(apply, "read_plan_checked", reading)
    found = apply._find_unfinished(
        tmp_path,
        playbook,
        server_url="http://x/api",
        now=datetime.now(timezone.utc),
        max_age_seconds=None,
        out=io.StringIO(),
    )
    assert found is None
    assert read == [mine]  # the one naming this playbook's digest is read (and checked)
    assert other not in read


def test_a_plan_whose_head_names_no_digest_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written some other way (or damaged): read and checked, never skipped on a guess."""
    playbook = load_text(PLAYBOOK, env={})
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "plan.json").write_text('{"format": "runner-plan"}\n')
    (folder / "checkpoint.jsonl").write_text("{}\n")
    read: list[Path] = []

    def reading(path: Any) -> Any:
        read.append(Path(path))
        raise RunnerError("not a plan")

    monkeypatch.setattr(apply, "read_plan_checked", reading)
    apply._find_unfinished(
        tmp_path,
        playbook,
        server_url="http://x/api",
        now=datetime.now(timezone.utc),
        max_age_seconds=None,
        out=io.StringIO(),
    )
    assert read == [folder / "plan.json"]
