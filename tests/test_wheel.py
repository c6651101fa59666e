"""The release as users install it (README's Installing): a wheel built with ``python -m
build``, and the ``prefect-runner @ git+...`` form, each in a clean virtual environment, run
from outside the repository against the real server: validate, then apply the demo's
playbook."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runner.schema_gen import EDITOR_FILE
from tests.support.seed import Seeder, unique

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.server
#: What the package needs at run time beside its modules.
DATA = {"runner/py.typed", "runner/schema/playbook.schema.json", "runner/problem-matcher.json"}


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """No Prefect settings, no CI, no virtual environment of the tests."""
    drop = ("PREFECT_", "VIRTUAL_ENV", "PYTHONPATH", "CI")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return {**env, "NO_COLOR": "1", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build --wheel`` in a copy of the source tree (the build writes beside its
    sources), as README says."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip)
    run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", source, cwd=tmp)
    (found,) = (tmp / "dist").glob("prefect_runner-*-py3-none-any.whl")
    return found


def new_venv(where: Path) -> Path:
    run(sys.executable, "-m", "venv", where, cwd=where.parent)
    return where / "bin"


def test_the_wheel_holds_the_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {*DATA, f"runner/{EDITOR_FILE}"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "docs/"))]


def test_the_wheel_installed_in_a_clean_venv_applies_the_demo_playbook(
    wheel: Path, api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    bin_dir = new_venv(tmp_path / "venv")
    work = tmp_path / "work"  # outside the repository: nothing of the source tree importable
    work.mkdir()
    run(bin_dir / "pip", "install", "--quiet", wheel, cwd=work, env=clean_env())
    where = run(bin_dir / "python", "-c", "import runner; print(runner.__file__)", cwd=work)
    assert where.startswith(str(tmp_path / "venv")), where
    playbook = shutil.copy(ROOT / "playbooks" / "reschedule-late.yaml", work)
    env = clean_env(PREFECT_API_URL=api_url)
    assert run(bin_dir / "runner", "validate", playbook, cwd=work, env=env) == f"{playbook}: ok\n"

    flow = seeder.flow(unique("healthcheck"))
    deployment = seeder.deployment(flow, unique("storage"))
    late = seeder.late_runs(5, flow, deployment=deployment)
    name = f"{flow['name']}/{deployment['name']}"
    report = work / "report.json"
    out = run(
        *(bin_dir / "runner", "apply", playbook, "--yes", "--var", f"deployment={name}"),
        *("--state-dir", work / "state", "--report", report),
        cwd=work,
        env=env,
    )
    assert "Summary: 5 to change (3 reschedule, 2 delete), 0 unchanged" in out, out
    counts = json.loads(report.read_text())["counts"]
    assert (counts["done"], counts["failed"]) == (5, 0), counts
    left = {r["id"]: r["state_name"] for r in seeder.runs_of_flow(flow)}
    assert sorted(left.values()) == ["Scheduled"] * 3
    assert set(left) < {r["id"] for r in late}
    # The package data the commands read, from the installed package.
    schema = run(bin_dir / "runner", "schema", "--path", cwd=work).strip()
    assert schema.startswith(str(tmp_path / "venv")) and Path(schema).is_file()


@pytest.mark.nightly  # a second install, from git: the wheel's install runs in CI
def test_the_readme_git_url_form_installs(tmp_path: Path) -> None:
    """README's ``pip install "prefect-runner @ git+https://..."``, with this repository's
    committed HEAD (a ``git+file://`` URL) in place of the placeholder address and tag. The
    URL names a host: the pip that Python 3.11's venv brings (23.2) refuses a ``git+file:///``
    URL in this form, having no host (a newer pip takes it)."""
    readme = (ROOT / "README.md").read_text()
    (line,) = re.findall(r'^pip install "prefect-runner @ (git\+https://\S+)"$', readme, re.M)
    assert line == "git+https://github.com/acme/runner@v0.1.0"
    head = run("git", "rev-parse", "HEAD", cwd=ROOT).strip()
    bin_dir = new_venv(tmp_path / "venv")
    requirement = f"prefect-runner @ git+file://localhost{ROOT}@{head}"
    # --no-deps: the dependencies are the wheel's, installed and run above; this is the form.
    run(
        bin_dir / "pip",
        "install",
        "--quiet",
        "--no-deps",
        requirement,
        cwd=tmp_path,
        env=clean_env(),
    )
    found = run(
        bin_dir / "python",
        "-c",
        "from importlib.metadata import distribution as d; p = d('prefect-runner');"
        " print(p.version, p.read_text('direct_url.json'))",
        cwd=tmp_path,
    )
    version, direct = found.split(" ", 1)
    assert version == "0.1.0"
    assert json.loads(direct)["vcs_info"]["commit_id"] == head
