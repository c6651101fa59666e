"""Finding the server: a URL without the API's path is named as such (not a 404), a server
that is not running is said at once (not after the backoff meant for a busy one), and the URL
in use is said when it is Prefect's default."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from runner.client import PrefectClient
from runner.errors import Unreachable
from runner.retry import RetryPolicy
from runner.settings import ConnectionSettings
from tests.support.cli import run_cli
from tests.support.prefect_server import PrefectServer, free_port

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = str(ROOT / "playbooks" / "reschedule-late.yaml")
DEFAULT_URL_NOTICE = (
    "runner: PREFECT_API_URL is not set (no --api-url, no environment variable, not in the"
    " Prefect profile): using http://127.0.0.1:4200/api\n"
)


# -- a URL without the API's path ----------------------------------------------------------


def test_doctor_names_a_url_without_the_api_path(prefect_server: PrefectServer) -> None:
    root = prefect_server.api_url.removesuffix("/api")
    result = run_cli("doctor", "--api-url", root)
    assert result.returncode == 1, result.stdout
    assert result.stdout == (
        f"API URL:      {root}  (argument)\n"
        "credentials:  none\n"
        "timeout:      60s\n"
        f"server:       wrong API URL: {root} is the address of a Prefect server, not of its"
        f" API, which answers at {root}/api: use --api-url {root}/api\n"
    )
    fixed = run_cli("doctor", "--api-url", f"{root}/api")
    assert fixed.returncode == 0, fixed.stdout
    assert "server:       Prefect 3.9.1 (API 0.8.4)\n" in fixed.stdout


def test_plan_and_apply_name_a_url_without_the_api_path(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    root = prefect_server.api_url.removesuffix("/api")
    planned = run_cli("plan", PLAYBOOK, api_url=root)
    assert planned.returncode == 1
    assert planned.stdout == ""
    assert planned.stderr == (
        f"runner: {root} is the address of a Prefect server, not of its API, which answers at"
        f" {root}/api: set PREFECT_API_URL={root}/api\n"
    )
    for args in (("--dry-run",), ("--yes",)):
        applied = run_cli("apply", PLAYBOOK, *args, "--api-url", root, cwd=tmp_path)
        assert applied.returncode == 1
        assert applied.stderr == (
            f"runner: {root} is the address of a Prefect server, not of its API, which"
            f" answers at {root}/api: use --api-url {root}/api\n"
        )
    assert not (tmp_path / ".runner").exists()


def test_a_url_with_another_path_keeps_the_servers_404(prefect_server: PrefectServer) -> None:
    """A Prefect Cloud workspace URL (…/api/accounts/<id>/workspaces/<id>) does not end in
    /api: a 404 there is the server's, not taken for a missing API path."""
    workspace = f"{prefect_server.api_url}/accounts/{uuid.uuid4()}/workspaces/{uuid.uuid4()}"
    result = run_cli("plan", PLAYBOOK, api_url=workspace)
    assert result.returncode == 1
    # Every route answers 404 there: the deployment is looked up, and not found.
    assert (
        ":24:20: steps[0].select.deployments: no deployment 'healthcheck/healthcheck-storage-test'"
        f" on {workspace}\n"
    ) in result.stderr
    assert "address of a Prefect server" not in result.stderr


# -- a server that is not running ------------------------------------------------------------


def test_a_server_that_is_not_running_is_said_at_once() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    result = run_cli("plan", PLAYBOOK, api_url=url)
    assert result.returncode == 1
    assert result.stderr == (
        f"runner: GET {url}/admin/version: no connection after 3 attempts (ConnectError: All"
        f" connection attempts failed); is the server at {url} running?\n"
    )


def refusing(answers: list[str]) -> tuple[httpx.MockTransport, list[str]]:
    """A server that answers ("ok") or refuses the connection ("refuse"), in this order."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        what = answers[min(len(seen), len(answers) - 1)]
        seen.append(what)
        if what == "refuse":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        run_id = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, json={"id": run_id, "name": "r", "flow_id": str(uuid.uuid4())})

    return httpx.MockTransport(handler), seen


FAST = RetryPolicy(max_attempts=6, initial_backoff=0.01, max_backoff=0.05, jitter=0.01)
SETTINGS = ConnectionSettings(api_url="http://prefect.test/api")


@pytest.mark.anyio
async def test_first_contact_refused_is_tried_three_times() -> None:
    transport, seen = refusing(["refuse"])
    async with PrefectClient(SETTINGS, transport=transport, retry=FAST) as client:
        with pytest.raises(Unreachable) as info:
            await client.read_flow_run(uuid.uuid4())
    assert seen == ["refuse"] * 3
    assert str(info.value).endswith(
        ": no connection after 3 attempts (ConnectError: [Errno 111] Connection refused); is"
        " the server at http://prefect.test/api running?"
    )


@pytest.mark.anyio
async def test_a_server_that_answered_then_refuses_gets_every_retry() -> None:
    """A restart mid-apply: the server answered before, so the whole policy applies."""
    transport, seen = refusing(["ok", "refuse", "refuse", "refuse", "refuse", "ok"])
    async with PrefectClient(SETTINGS, transport=transport, retry=FAST) as client:
        await client.read_flow_run(uuid.uuid4())
        run = await client.read_flow_run(uuid.uuid4())
    assert run.name == "r"
    assert seen == ["ok", "refuse", "refuse", "refuse", "refuse", "ok"]
    transport, seen = refusing(["ok", "refuse"])
    async with PrefectClient(SETTINGS, transport=transport, retry=FAST) as client:
        await client.read_flow_run(uuid.uuid4())
        with pytest.raises(Unreachable) as info:
            await client.read_flow_run(uuid.uuid4())
    assert len(seen) == 1 + 6
    assert ": no answer after 6 attempts (ConnectError); is the server at" in str(info.value)


# -- which URL, and why ------------------------------------------------------------------------


def test_the_default_url_is_said_once_on_stderr(tmp_path: Path) -> None:
    """No --api-url, no PREFECT_API_URL, no profile: Prefect's default, said before anything
    is sent (whatever answers, or not, at 127.0.0.1:4200)."""
    home = {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    for args in (("plan", PLAYBOOK), ("apply", PLAYBOOK, "--dry-run"), ("doctor",)):
        result = run_cli(*args, env=home, cwd=tmp_path)
        assert result.stderr.startswith(DEFAULT_URL_NOTICE), args
        assert result.stderr.count("PREFECT_API_URL is not set") == 1, args
    profiles = tmp_path / "profiles.toml"
    url = f"http://127.0.0.1:{free_port()}/api"
    profiles.write_text(f'active = "x"\n[profiles.x]\nPREFECT_API_URL = "{url}"\n')
    for env in ({"PREFECT_API_URL": url}, {"PREFECT_PROFILES_PATH": str(profiles)}):
        result = run_cli("plan", PLAYBOOK, env={**home, **env}, cwd=tmp_path)
        assert result.stderr.startswith(f"runner: GET {url}/admin/version: no connection")


def test_a_malformed_url_is_an_error_not_a_bug(tmp_path: Path) -> None:
    for args in (
        ("apply", PLAYBOOK, "--dry-run"),
        ("apply", PLAYBOOK, "--yes"),
        ("plan", PLAYBOOK),
    ):
        result = run_cli(*args, env={"PREFECT_API_URL": "foo"}, cwd=tmp_path)
        assert (result.returncode, result.stdout) == (1, ""), args
        assert result.stderr == (
            "runner: PREFECT_API_URL: expected an http(s) URL such as"
            " http://127.0.0.1:4200/api, got 'foo'\n"
        ), args
