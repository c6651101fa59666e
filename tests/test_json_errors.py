"""Under ``--format json`` every error is a JSON document on stdout, with the exit code it has
without it; stderr says what it says without it (docs: README's Exit codes and errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.prefect_server import free_port
from tests.support.seed import Seeder, unique

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "playbook_errors" / "bad_date.yaml"
BAD_PROBLEM = {
    "file": str(BAD),
    "line": 5,
    "column": 21,
    "path": "steps[0].select.end.before",
    "message": "'2026-02-30' is not a time (examples: now, -30d, now-6h, 2026-01-31T00:00:00Z)",
}
BAD_LINE = f"{BAD}:5:21: steps[0].select.end.before: {BAD_PROBLEM['message']}"


def error_of(stdout: str) -> dict[str, Any]:
    """The one JSON line on stdout, an error document."""
    (line,) = stdout.splitlines()
    document = json.loads(line)
    assert list(document) == ["error"]
    error: dict[str, Any] = document["error"]
    return error


@pytest.mark.parametrize(
    "args",
    [
        ("plan", str(BAD)),
        ("apply", str(BAD), "--dry-run"),
        ("ls", str(BAD)),
    ],
)
def test_a_playbook_error_names_every_problem(args: tuple[str, ...], tmp_path: Path) -> None:
    """Read before the server is asked anything: no server here."""
    url = f"http://127.0.0.1:{free_port()}/api"
    result = run_cli(*args, "--format", "json", api_url=url, cwd=tmp_path)
    assert result.returncode == 1
    assert error_of(result.stdout) == {
        "kind": "playbook",
        "message": BAD_LINE,
        "exit_code": 1,
        "problems": [BAD_PROBLEM],
    }
    assert result.stderr == BAD_LINE + "\n"  # as without --format json


def test_validate_reports_problems_and_usage_errors_in_json(tmp_path: Path) -> None:
    result = run_cli("validate", "--format", "json", str(BAD), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "")
    assert json.loads(result.stdout) == {
        "valid": False,
        "files": [{"file": str(BAD), "valid": False, "problems": [BAD_PROBLEM]}],
    }
    result = run_cli("validate", str(BAD), "--var", "novalue", "--format=json", cwd=tmp_path)
    assert result.returncode == 2
    assert error_of(result.stdout) == {
        "kind": "usage",
        "message": "Invalid value for --var: expected name=value, got 'novalue'",
        "exit_code": 2,
    }
    assert result.stderr.endswith(
        "\nError: Invalid value for --var: expected name=value, got 'novalue'\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ls", "--format", "json"), "give a PLAYBOOK or --select YAML (one of them)"),
        (("status", "--format", "json"), "Missing argument 'CHECKPOINT'."),
        (
            ("apply", "x.yaml", "--format", "json", "--max-bytes", "5000"),
            "--max-bytes goes with --format markdown",
        ),
        (("plan", "x.yaml", "--format", "json", "--nope"), "No such option '--nope'."),
    ],
)
def test_a_usage_error_is_json_too(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert error_of(result.stdout) == {"kind": "usage", "message": message, "exit_code": 2}
    assert result.stderr.endswith(f"\nError: {message}\n")
    text = run_cli(*[a for a in args if a not in ("--format", "json")], cwd=tmp_path)
    assert (text.returncode, text.stdout) == (2, "")  # without --format json: nothing on stdout


def test_no_server_is_an_unreachable_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    playbook = str(ROOT / "playbooks" / "reschedule-late.yaml")
    message = (
        f"GET {url}/admin/version: no connection after 3 attempts (ConnectError: All connection"
        f" attempts failed); is the server at {url} running?"
    )
    for args in (("plan", playbook), ("ls", playbook)):  # apply --dry-run: plan's path
        result = run_cli(*args, "--format", "json", api_url=url, cwd=tmp_path)
        assert result.returncode == 1, args
        assert error_of(result.stdout) == {
            "kind": "unreachable",
            "message": message,
            "exit_code": 1,
        }
        assert result.stderr == f"runner: {message}\n", args


def test_a_checkpoint_that_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text("{not json")
    result = run_cli("status", str(tmp_path), "--format", "json", cwd=tmp_path)
    assert result.returncode == 1
    error = error_of(result.stdout)
    assert error["kind"] == "plan_file" and error["exit_code"] == 1
    assert result.stderr == f"runner: {error['message']}\n"
    assert error["message"].startswith(f"{tmp_path / 'plan.json'}: ")


@pytest.mark.server
def test_a_name_the_server_lacks_is_a_playbook_error(api_url: str, tmp_path: Path) -> None:
    playbook = tmp_path / "p.yaml"
    deployment = f"{unique('f')}/{unique('d')}"
    playbook.write_text(
        f"version: 1\nname: p\nsteps:\n  - name: s\n    select: {{deployments: {deployment}}}\n"
        "    action: cancel\n"
    )
    for args in (("plan", str(playbook)), ("apply", str(playbook), "--dry-run")):
        result = run_cli(*args, "--format", "json", api_url=api_url, cwd=tmp_path)
        assert result.returncode == 1, args
        problem = {
            "file": str(playbook),
            "line": 5,
            "column": 27,
            "path": "steps[0].select.deployments",
            "message": f"no deployment {deployment!r} on {api_url}",
        }
        line = f"{playbook}:5:27: steps[0].select.deployments: {problem['message']}"
        assert error_of(result.stdout) == {
            "kind": "playbook",
            "message": line,
            "exit_code": 1,
            "problems": [problem],
        }
        assert result.stderr == line + "\n"


@pytest.mark.server
def test_a_refused_plan_is_the_plan_document_with_its_refusal(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """A guard's refusal is not an error of runner's: the plan, as JSON, says it."""
    flow = seeder.flow()
    playbook = tmp_path / "p.yaml"
    playbook.write_text(
        f"version: 1\nname: p\nsteps:\n  - name: s\n    select: {{flows: {flow['name']}}}\n"
        "    action: cancel\n    guards: {expect: non_empty}\n"
    )
    for args in (("plan", str(playbook)), ("apply", str(playbook), "--dry-run")):
        result = run_cli(*args, "--format", "json", api_url=api_url, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (1, ""), args
        document = json.loads(result.stdout)
        assert document["violations"] == [
            "step 1 ('s') selected no runs, and its guards expect some (expect: non_empty)"
        ]
