"""The checkpoint journal: torn writes, foreign and tampered checkpoints, locking."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import CheckpointError
from runner.journal import Journal, read_journal


def write(path: Path, plan_id: str = "p1", checksum: str = "c1", n: int = 3) -> None:
    with Journal(path, plan_id=plan_id, plan_checksum=checksum) as journal:
        for i in range(n):
            journal.record(f"0:{i}", "done", detail="Cancelled")


def test_records_read_back(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    write(path)
    state = read_journal(path, plan_id="p1", plan_checksum="c1")
    assert [state.status(f"0:{i}") for i in range(3)] == ["done"] * 3
    assert state.status("0:3") is None
    assert state.torn_lines == 0


def test_a_line_cut_off_mid_write_is_skipped_and_the_journal_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    write(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 9])  # the last record loses its end and newline

    state = read_journal(path, plan_id="p1")
    assert state.torn_lines == 1
    assert [state.status(f"0:{i}") for i in range(3)] == ["done", "done", None]

    with Journal(path, plan_id="p1", plan_checksum="c1") as journal:
        journal.record("0:2", "done", detail="Cancelled")
    state = read_journal(path, plan_id="p1")
    assert [state.status(f"0:{i}") for i in range(3)] == ["done"] * 3
    assert state.torn_lines == 1  # still there, on a line of its own, still skipped


def test_garbage_in_the_middle_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    write(path, n=2)
    with path.open("ab") as handle:
        handle.write(b'{"key": "0:9", "sta\x00\xff\n[1, 2]\n{"key": "0:5", "status": "failed"}\n')
    state = read_journal(path, plan_id="p1")
    assert state.torn_lines == 2
    assert state.status("0:5") == "failed"
    assert state.status("0:9") is None


def test_a_checkpoint_of_another_plan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    write(path, plan_id="p1")
    with pytest.raises(CheckpointError) as info:
        read_journal(path, plan_id="p2")
    assert str(info.value) == f"{path}: this checkpoint belongs to plan p1, not p2"
    with pytest.raises(CheckpointError), Journal(path, plan_id="p2", plan_checksum="c1"):
        pass
    assert read_journal(path, plan_id="p1").status("0:0") == "done"  # untouched


def test_a_checkpoint_for_a_replaced_plan_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    write(path, checksum="c1")
    with pytest.raises(CheckpointError) as info, Journal(path, plan_id="p1", plan_checksum="c2"):
        pass
    assert str(info.value) == (
        f"{path}: this checkpoint was started for another version of plan p1"
        " (the plan file changed since): refusing to mix them"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a runner checkpoint (no header line)"),
        (b'{"format": "runner-checkp', "not a runner checkpoint (no header line)"),
        (b'{"format": "something-else", "version": 1}\n', "not a runner checkpoint"),
        (
            b'{"format": "runner-checkpoint", "version": 2, "plan_id": "p1"}\n',
            "checkpoint format version 2; this runner reads version 1",
        ),
    ],
)
def test_broken_or_newer_checkpoints_are_refused(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "checkpoint.jsonl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_journal(path, plan_id="p1")
    assert str(info.value) == f"{path}: {message}"


def test_one_apply_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    with (
        Journal(path, plan_id="p1", plan_checksum="c1"),
        pytest.raises(CheckpointError, match="another apply of plan p1 is running"),
        Journal(path, plan_id="p1", plan_checksum="c1"),
    ):
        pass
    with Journal(path, plan_id="p1", plan_checksum="c1"):  # free again once closed
        pass


def test_truncated_tampered_and_newer_plans_are_refused(tmp_path: Path) -> None:
    import json
    from datetime import datetime, timezone

    from runner.errors import PlanFileError
    from runner.loader import load_text
    from runner.plan import Observation, StepObservation
    from runner.planfile import dumps, read_plan
    from runner.planner import make_plan

    playbook = load_text(
        "version: 1\nname: p\nsteps:\n  - name: s\n    select: {}\n    action: delete\n",
        name="p.yaml",
        env={},
    )
    observation = Observation(
        now=datetime(2026, 11, 22, tzinfo=timezone.utc),
        server_url="http://x/api",
        server_version=None,
        steps=(StepObservation(runs=()),),
    )
    text = dumps(make_plan(playbook, observation, plan_id="abc"))
    path = tmp_path / "plan.json"

    path.write_text(text[: len(text) // 2])
    with pytest.raises(PlanFileError, match=r"plan.json: not JSON \(line \d+: "):
        read_plan(path)

    document = json.loads(text)
    document["steps"][0]["name"] = "something else"
    path.write_text(json.dumps(document))
    with pytest.raises(PlanFileError) as info:
        read_plan(path)
    assert str(info.value) == f"{path}: checksum mismatch: the plan was changed after it was made"

    document = json.loads(text)
    document["version"] = 2
    path.write_text(json.dumps(document))
    with pytest.raises(PlanFileError) as info:
        read_plan(path)
    assert str(info.value) == f"{path}: plan format version 2; this runner reads version 1"

    path.write_text(text)
    assert read_plan(path).id == "abc"
