"""``runner validate`` as a user runs it: exit codes, text and JSON output, no server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.cli import run_cli

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yaml"))


def runner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A server nothing answers on: validate must never need one.
    return run_cli(*args, api_url="http://127.0.0.1:9/api", env=env)


def test_examples_are_valid() -> None:
    result = runner("validate", *EXAMPLES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{path}: ok" for path in EXAMPLES]
    assert result.stderr == ""


def test_invalid_files_exit_1_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsteps:\n  - name: x\n    select: {sort: NOPE}\n    action: delet\n")
    result = runner("validate", str(bad), "playbooks/cancel-active.yaml")
    assert result.returncode == 1
    assert result.stdout == "playbooks/cancel-active.yaml: ok\n"
    assert result.stderr.splitlines() == [
        f"{bad}:4:20: steps[0].select.sort: unknown sort 'NOPE' (expected one of: ID_DESC,"
        " START_TIME_ASC, START_TIME_DESC, EXPECTED_START_TIME_ASC, EXPECTED_START_TIME_DESC,"
        " NAME_ASC, NAME_DESC, NEXT_SCHEDULED_START_TIME_ASC, END_TIME_DESC)",
        f"{bad}:5:13: steps[0].action: unknown action 'delet' (expected one of: cancel, delete,"
        " reschedule, resume, retry, set_state, tag); did you mean 'delete'?",
        "1 of 2 playbooks invalid, 2 problems",
    ]


def test_json_format(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsteps: []\n")
    result = runner("validate", "--format", "json", str(bad), "playbooks/cancel-active.yaml")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report == {
        "valid": False,
        "files": [
            {
                "file": str(bad),
                "valid": False,
                "problems": [
                    {
                        "file": str(bad),
                        "line": 2,
                        "column": 8,
                        "path": "steps",
                        "message": "a playbook needs at least one step",
                    }
                ],
            },
            {"file": "playbooks/cancel-active.yaml", "valid": True, "problems": []},
        ],
    }


def test_var_overrides_on_the_command_line() -> None:
    ok = runner("validate", "playbooks/reschedule-late.yaml", "--var", "keep=5")
    assert ok.returncode == 0
    bad = runner("validate", "playbooks/reschedule-late.yaml", "--var", "keep=lots")
    assert bad.returncode == 1
    assert "steps[0].select.limit: expected a whole number, got 'lots' (a string)" in bad.stderr
    env = runner("validate", "playbooks/reschedule-late.yaml", env={"RUNNER_VAR_keep": "zero"})
    assert env.returncode == 1
    malformed = runner("validate", "playbooks/reschedule-late.yaml", "--var", "keep")
    assert malformed.returncode == 2
    assert "expected name=value, got 'keep'" in malformed.stderr


def test_schema_command_prints_the_published_schema() -> None:
    result = runner("schema")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "schemas" / "playbook.schema.json").read_text()
    path = runner("schema", "--path")
    assert Path(path.stdout.strip()).read_text() == result.stdout
