"""No command ever shows an API key or an auth string: not in output, files, logs or errors.

Runs against a real Prefect server with basic auth turned on
(``PREFECT_SERVER_API_AUTH_STRING``), so the right auth string works, a wrong one is a 401
and an API key is refused: every path, success and failure, with debug logging on.
"""

from __future__ import annotations

import base64
import gzip
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.prefect_server import PrefectServer, start_server
from tests.support.seed import Seeder, unique

pytestmark = [pytest.mark.server]

BIN = Path(sys.executable).parent
AUTH = "operator:auth-Zq8vW3kP9x"
WRONG_AUTH = "operator:wrong-Hj4nB7sQ2m"
KEY = "pnu_key1Nt9cQ0fL7aRtY6uE3bV8sD5gH2jK4"
URL_PASSWORD = "urlpw-Xk3mN8"


def forms(secret: str) -> list[str]:
    """The secret as given, its password half, and as an Authorization header would carry it."""
    found = [secret, base64.b64encode(secret.encode()).decode()]
    if ":" in secret:
        found.append(secret.split(":", 1)[1])
    return found


SECRETS = [s for secret in (AUTH, WRONG_AUTH, KEY, URL_PASSWORD) for s in forms(secret)]


@pytest.fixture(scope="module")
def auth_server() -> Iterator[PrefectServer]:
    server = start_server(extra_env={"PREFECT_SERVER_API_AUTH_STRING": AUTH})
    yield server
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    debug = {"RUNNER_LOG": "debug", "PREFECT_HOME": str(cwd / "home"), **env}
    return run_cli(*args, cwd=cwd, env=debug)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret ({secret[:6]}...) appears in {where}"


def test_no_secret_in_any_output_or_file(auth_server: PrefectServer, tmp_path: Path) -> None:
    seeder = Seeder(auth_server.api_url, auth=tuple(AUTH.split(":", 1)))  # type: ignore[arg-type]
    flow = seeder.flow(unique("secret-test"))
    seeder.runs(5, flow, "Completed")
    seeder.runs(3, flow, "Late")
    seeder.close()
    playbook = tmp_path / "p.yaml"
    playbook.write_text(
        f"version: 1\nname: secrets\ndefaults: {{retry: {{max_attempts: 2}}}}\nsteps:\n"
        f"  - name: clean\n    select: {{flows: {flow['name']}, state: {{type: COMPLETED}}}}\n"
        f"    action: delete\n"
        f"  - name: late\n    select: {{flows: {flow['name']}, state: {{name: Late}}}}\n"
        f"    action: {{reschedule: {{delay: 2h}}}}\n"
    )
    (tmp_path / "home").mkdir()
    url = auth_server.api_url
    good = {"PREFECT_API_URL": url, "PREFECT_API_AUTH_STRING": AUTH}
    state = str(tmp_path / "state")
    results = {
        "validate": run(["validate", str(playbook)], tmp_path, **good),
        "doctor": run(["doctor"], tmp_path, **good),
        "plan": run(["plan", str(playbook), "-o", "plan.json"], tmp_path, **good),
        "dry-run": run(["apply", str(playbook), "--dry-run", "--format", "json"], tmp_path, **good),
        "show": run(["show", "plan.json", "--format", "markdown"], tmp_path, **good),
        "apply": run(
            ["apply", "plan.json", "--yes", "--report", "report.json", "--state-dir", state],
            tmp_path,
            **good,
        ),
    }
    [workdir] = list(Path(state).iterdir())
    results["status"] = run(["status", str(workdir)], tmp_path, **good)
    results["show-archive"] = run(["show", str(workdir / "archive.jsonl.gz")], tmp_path, **good)
    results["undo"] = run(["undo", str(workdir), "--yes", "--state-dir", state], tmp_path, **good)
    # Failures: a wrong auth string, an API key the server refuses, credentials in the URL of
    # a server that is not there, an invalid playbook.
    results["wrong-auth"] = run(
        ["plan", str(playbook)], tmp_path, PREFECT_API_URL=url, PREFECT_API_AUTH_STRING=WRONG_AUTH
    )
    results["key-refused"] = run(
        ["apply", str(playbook), "--yes"], tmp_path, PREFECT_API_URL=url, PREFECT_API_KEY=KEY
    )
    results["doctor-refused"] = run(["doctor"], tmp_path, PREFECT_API_URL=url, PREFECT_API_KEY=KEY)
    results["unreachable"] = run(
        ["plan", str(playbook)],
        tmp_path,
        PREFECT_API_URL=f"http://operator:{URL_PASSWORD}@127.0.0.1:9/api",
        PREFECT_API_KEY=KEY,
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nsteps: nope\n")
    results["invalid"] = run(["apply", str(broken), "--yes"], tmp_path, **good)

    # What each command should have done, so the check below is not on empty output.
    assert results["validate"].returncode == 0
    assert results["doctor"].returncode == 0, results["doctor"].stderr
    assert "auth string" in results["doctor"].stdout.lower()
    assert results["apply"].returncode == 0, results["apply"].stdout + results["apply"].stderr
    assert "Applied: 8 done" in results["apply"].stdout
    assert "HTTP request" in results["apply"].stderr or "HTTP Request" in results["apply"].stderr
    for name in ("wrong-auth", "key-refused", "doctor-refused"):
        result = results[name]
        assert result.returncode == 1, name
        assert "HTTP 401: the server refused the credentials." in result.stderr + result.stdout
    assert results["unreachable"].returncode == 1
    assert "127.0.0.1:9" in results["unreachable"].stderr
    assert results["invalid"].returncode == 1
    assert "5 runs archived" in results["show-archive"].stdout
    assert "Applied: 3 done" in results["undo"].stdout, results["undo"].stderr

    for name, result in results.items():
        assert_clean(result.stdout, f"the stdout of {name}")
        assert_clean(result.stderr, f"the stderr of {name}")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "home" not in p.parts]
    assert {"plan.json", "report.json", "checkpoint.jsonl", "archive.jsonl.gz"} <= {
        p.name for p in files
    }
    for path in files:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert_clean(data.decode(errors="replace"), str(path.relative_to(tmp_path)))
