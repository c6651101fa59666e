"""Shell completion and the pre-commit hook, exercised for real (bash, pre-commit)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GOOD = (ROOT / "playbooks" / "reschedule-late.yaml").read_text()
BAD = "version: 1\nname: bad\nsteps:\n  - name: x\n    select: {}\n    action: explode\n"


def runner(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_for_each_shell(shell: str) -> None:
    result = runner("completion", shell)
    assert result.returncode == 0
    assert "_RUNNER_COMPLETE" in result.stdout


def test_completion_in_bash_completes_commands_and_options() -> None:
    script = """
        eval "$(runner completion bash)"
        COMP_WORDS=(runner ap); COMP_CWORD=1; _runner_completion runner
        echo "commands: ${COMPREPLY[*]}"
        COMPREPLY=(); COMP_WORDS=(runner apply --strategy ''); COMP_CWORD=3; _runner_completion runner
        echo "strategies: ${COMPREPLY[*]}"
    """
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert "commands: apply\n" in result.stdout
    assert "strategies: auto bulk per-run\n" in result.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="pre-commit needs git")
def test_pre_commit_hook_validates_playbooks(tmp_path: Path) -> None:
    """``pre-commit try-repo`` installs runner from this checkout, as a user's hook would."""
    repo = tmp_path / "ops"
    (repo / "playbooks").mkdir(parents=True)
    (repo / "playbooks" / "good.yaml").write_text(GOOD)
    (repo / "notes.yaml").write_text(BAD)  # outside playbooks/: not the hook's business
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "playbooks"], check=True)
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    command = [str(BIN / "pre-commit"), "try-repo", str(ROOT), "runner-validate", "--all-files"]

    passed = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "runner validate (playbooks)" in passed.stdout
    assert "Passed" in passed.stdout

    (repo / "playbooks" / "bad.yaml").write_text(BAD)
    subprocess.run([*git, "add", "."], check=True)
    failed = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env)
    assert failed.returncode == 1
    assert "Failed" in failed.stdout
    assert "playbooks/bad.yaml:6:13: steps[0].action: unknown action 'explode'" in failed.stdout
    assert "notes.yaml" not in failed.stdout


def runner_lines(text: str, *, fenced_only: bool) -> list[list[str]]:
    """The ``runner ...`` command lines of a workflow's or a document's shell snippets."""
    import shlex

    lines, fenced = [], False
    for raw in text.replace("\\\n", " ").splitlines():  # a continued line joined
        if raw.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced_only and not fenced:
            continue
        line = raw.strip().removeprefix("- run: ").removeprefix("run: ")
        if line.startswith("runner "):
            line = line.split(">>")[0].split(" > ")[0].split(" | ")[0].split(" || ")[0]
            line = line.split("#")[0]
            for shell, value in (
                ('"$playbook"', "playbooks/cleanup-old-runs.yaml"),
                ('"${playbooks[@]}"', "playbooks/cleanup-old-runs.yaml"),
                ('"reports/$name.json"', "reports/x.json"),
                ('"plans/$name.json"', "plans/x.json"),
                ('"$room"', "100000"),
            ):
                line = line.replace(shell, value)
            lines.append(shlex.split(line)[1:])
    return lines


@pytest.mark.parametrize(
    "document",
    ["docs/examples/playbooks.yml", "docs/ci.md", "README.md", "docs/listing.md", "docs/undo.md"],
)
def test_documented_command_lines_parse(document: str) -> None:
    """Every ``runner`` line in the CI example and the docs' snippets parses: real commands,
    real options, valid values."""
    import click

    from runner.cli import cli

    lines = runner_lines((ROOT / document).read_text(), fenced_only=document.endswith(".md"))
    assert lines, f"no runner command lines found in {document}"
    for args in lines:
        command = cli.get_command(click.Context(cli), args[0])
        assert command is not None, f"{document}: no command {args[0]!r}"
        try:
            command.make_context(args[0], args[1:])
        except click.UsageError as exc:
            pytest.fail(f"{document}: runner {' '.join(args)}: {exc}")


def test_a_bug_is_a_traceback_and_a_request_to_report_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exception that is not a RunnerError is runner's fault, never the input's: its
    traceback is shown, with a line asking for a report, and the exit code is 1."""
    import runner.cli

    def broken(*args: object, **kwargs: object) -> int:
        raise KeyError("a bug")

    monkeypatch.setattr("runner.commands.show.run", broken)
    monkeypatch.setattr(sys, "argv", ["runner", "show", "plan.json"])
    with pytest.raises(SystemExit) as info:
        runner.cli.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert "KeyError: 'a bug'" in err
    assert err.endswith(
        "runner: this is a bug in runner 0.1.0, not a problem of your input: please report it"
        " with the traceback above\n"
    )
