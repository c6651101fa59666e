"""The server lock (runner.lease) against a real server: two applies of one playbook never
write at once, whatever their state directories; a lock held by a dead apply frees itself;
a lost lease stops the apply; servers without leases fall back to the file lock, and say so."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from runner import lease
from runner.apply import Applied, ApplyRequest, apply
from runner.client import PrefectClient
from runner.errors import LockError
from runner.executor import ApplyOptions
from runner.models import LeaseGrant, LeaseRefused
from runner.settings import ConnectionSettings
from tests.support.cli import RUNNER, cli_env, run_cli, start_cli
from tests.support.fault_proxy import FaultProxy
from tests.support.prefect_server import PrefectServer
from tests.support.seed import Seeder, unique


def write_playbook(tmp: Path, flow: dict[str, Any], name: str, rate: float = 5) -> Path:
    """Cancel every run of ``flow``, one request a run, ``rate`` a second (slow enough to
    be caught applying)."""
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\ndefaults:\n  rate_limit: {rate}\nsteps:\n  - name: act\n"
        f"    select: {{flows: {flow['name']}}}\n    action: cancel\n"
    )
    return path


def apply_args(path: Path, state_dir: Path, *more: str) -> tuple[str, ...]:
    return (
        "apply",
        str(path),
        "--yes",
        "--strategy",
        "per-run",
        "--state-dir",
        str(state_dir),
        *more,
    )


def read_limit(api_url: str, name: str) -> dict[str, Any] | None:
    response = httpx.get(f"{api_url}/v2/concurrency_limits/{name}", timeout=30)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return dict(response.json())


def taken_message(playbook: str) -> str:
    return (
        f"runner: another apply of playbook {playbook!r} holds the server lock"
        f" 'runner:{playbook}'; nothing was sent. prefect gcl inspect runner:{playbook} (or"
        " Concurrency in the Prefect UI) shows the limit; an apply that died frees it when its"
        " lease runs out, within 1m15s. --wait-for-lock DURATION waits for it\n"
    )


def histories(seeder: Seeder, runs: list[dict[str, Any]]) -> set[tuple[str, ...]]:
    """The distinct state histories of ``runs`` (by name): one cancel each is
    {("Running", "Cancelling")}; a second apply writing too would add a state."""
    found = set()
    for run in runs:
        states = seeder._call("GET", "flow_run_states/", params={"flow_run_id": run["id"]})
        ordered = sorted(states, key=lambda s: s["timestamp"])
        found.add(tuple(s["name"] for s in ordered))
    return found


def released_from_the_machines_record(
    result: subprocess.CompletedProcess[str],
    api_url: str,
    name: str,
    seeder: Seeder,
    runs: list[dict[str, Any]],
) -> None:
    """The apply found a dead apply's lease in the machine's record, released it (said so,
    word for word), cancelled ``runs`` and left the lock free."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.startswith("runner: an apply on this machine (pid "), result.stderr
    assert result.stderr.endswith(
        f") ended without releasing the server lock 'runner:{name}': its lease is released\n"
    )
    assert histories(seeder, runs) == {("Running", "Cancelling")}
    limit = read_limit(api_url, f"runner:{name}")
    assert limit is not None and limit["active_slots"] == 0


def journal_records(state_dir: Path) -> int:
    return sum(
        max(0, len(f.read_bytes().splitlines()) - 1) for f in state_dir.glob("*/checkpoint.jsonl")
    )


def wait_until_writing(state_dir: Path, process: subprocess.Popen[str]) -> None:
    """Poll (bounded) until the apply has recorded a change: it holds the lock, writing."""
    deadline = time.monotonic() + 120
    while journal_records(state_dir) < 1:
        assert process.poll() is None, "the apply ended before it was caught writing"
        assert time.monotonic() < deadline, "the apply wrote nothing in 120s"
        time.sleep(0.02)


class Holder:
    """The test itself holding the lock of a playbook, as another apply would."""

    def __init__(self, api_url: str, playbook: str) -> None:
        self.http = httpx.Client(base_url=api_url + "/", timeout=30)
        self.name = f"runner:{playbook}"
        self.lease: str | None = None

    def take(self) -> None:
        if read_limit(str(self.http.base_url).rstrip("/"), self.name) is None:
            self.http.post("v2/concurrency_limits/", json={"name": self.name, "limit": 1})
        body = {"names": [self.name], "slots": 1, "lease_duration": 120}
        answer = self.http.post("v2/concurrency_limits/increment-with-lease", json=body)
        assert answer.status_code == 200, answer.text
        self.lease = answer.json()["lease_id"]

    def release(self) -> None:
        if self.lease is not None:
            self.http.post(
                "v2/concurrency_limits/decrement-with-lease", json={"lease_id": self.lease}
            ).raise_for_status()
            self.lease = None
        self.http.close()


def test_an_apply_at_its_prompt_holds_the_lock_against_another_state_dir(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """The first apply holds the lock from before it reads the server to its end (here it
    waits at its prompt, as long as the test likes): a second one, from another state
    directory, exits 1 at once with nothing sent; once the first is done, the second finds
    nothing left to do."""
    flow = seeder.flow()
    runs = seeder.runs(5, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    assert read_limit(api_url, f"runner:{name}") is None
    terminal, side = pty.openpty()  # a terminal: the first apply asks before it applies
    first = subprocess.Popen(
        [RUNNER, "apply", str(path), "--state-dir", str(tmp_path / "s1")],
        stdin=side,
        stdout=side,
        stderr=subprocess.PIPE,
        env=cli_env(api_url),
        cwd=tmp_path,
        text=True,
    )
    os.close(side)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while b"? [y/N] " not in shown:
            assert time.monotonic() < deadline and first.poll() is None, shown.decode()
            if select.select([terminal], [], [], 0.1)[0]:
                shown += os.read(terminal, 65536)
        # Made on first use, one slot, taken.
        limit = read_limit(api_url, f"runner:{name}")
        assert limit is not None
        assert (limit["limit"], limit["active"], limit["active_slots"]) == (1, True, 1)

        second = run_cli(*apply_args(path, tmp_path / "s2"), api_url=api_url, cwd=tmp_path)
        assert second.returncode == 1, second.stdout + second.stderr
        assert (second.stdout, second.stderr) == ("", taken_message(name))
        assert not (tmp_path / "s2").exists()
        assert histories(seeder, runs) == {("Running",)}

        os.write(terminal, b"y\n")
        assert first.stderr is not None
        first_err = first.stderr.read()
        first.wait(timeout=120)
    finally:
        os.close(terminal)
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_err
    assert histories(seeder, runs) == {("Running", "Cancelling")}
    released = read_limit(api_url, f"runner:{name}")
    assert released is not None and released["active_slots"] == 0

    again = run_cli(*apply_args(path, tmp_path / "s2"), api_url=api_url, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to do." in again.stdout
    assert histories(seeder, runs) == {("Running", "Cancelling")}


def test_two_applies_started_at_once_from_two_state_dirs_write_once(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """The issue's case: two state directories, the same playbook, at once. One applies
    every change; the other exits 1 having sent nothing (each run is cancelled once)."""
    flow = seeder.flow()
    runs = seeder.runs(40, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)  # 40 writes at 5/s: the lock is held for 8s+
    both = [
        start_cli(*apply_args(path, tmp_path / state), api_url=api_url, cwd=tmp_path)
        for state in ("s1", "s2")
    ]
    ended = []
    for process in both:
        out, err = process.communicate(timeout=300)
        ended.append((process.returncode, out, err))
    codes = sorted(code for code, _, _ in ended)
    assert codes == [0, 1], ended
    (winner,) = [e for e in ended if e[0] == 0]
    (loser,) = [e for e in ended if e[0] == 1]
    assert "Applied: 40 done, 0 drifted (left alone), 0 failed, 0 pending" in winner[1]
    assert (loser[1], loser[2]) == ("", taken_message(name))
    assert histories(seeder, runs) == {("Running", "Cancelling")}


def test_a_resume_from_the_same_state_dir_takes_over_a_killed_applys_lock(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """SIGKILL while writing: the lease stays on the server until it runs out, so an apply
    from elsewhere is refused; the resume from the same state directory knows the lease is
    its dead predecessor's (its file lock died with it), releases it and finishes at once."""
    flow = seeder.flow()
    runs = seeder.runs(30, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    first = start_cli(*apply_args(path, tmp_path / "s1"), api_url=api_url, cwd=tmp_path)
    wait_until_writing(tmp_path / "s1", first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)

    elsewhere = run_cli(*apply_args(path, tmp_path / "s2"), api_url=api_url, cwd=tmp_path)
    assert (elsewhere.returncode, elsewhere.stderr) == (1, taken_message(name))

    resumed = run_cli(*apply_args(path, tmp_path / "s1"), api_url=api_url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming unfinished plan" in resumed.stdout
    assert f"ended without releasing the server lock 'runner:{name}': its lease is released" in (
        resumed.stderr
    )
    assert histories(seeder, runs) == {("Running", "Cancelling")}
    limit = read_limit(api_url, f"runner:{name}")
    assert limit is not None and limit["active_slots"] == 0


#: ``runner ARGS``, killed (SIGKILL, by itself) where a kill is most awkward: its plan and
#: journal written, the lease still recorded only in the machine's record, not yet in the
#: plan's folder (the moment ``hold_for_writing`` moves it there).
DIES_BEFORE_RECORDING_IN_ITS_FOLDER = """
import os, signal, sys
from runner import lease
async def die(self, playbook, folder):
    os.kill(os.getpid(), signal.SIGKILL)
lease.ServerLock.hold_for_writing = die
from runner.cli import main
sys.argv = ["runner", *sys.argv[1:]]
main()
"""


def test_a_resume_releases_a_lease_its_dead_apply_left_in_the_machines_record(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """Killed after writing its plan, before its lease was recorded in the plan's folder:
    the resume of that plan (which takes the lock by its folder) releases the lease the
    machine's record still holds, and finishes at once. It used to be refused until the
    lease ran out (seen in CI: test_reliability's random SIGKILL hit that moment)."""
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    first = subprocess.run(
        [sys.executable, "-c", DIES_BEFORE_RECORDING_IN_ITS_FOLDER, *apply_args(path, tmp_path)],
        capture_output=True,
        text=True,
        env=cli_env(api_url),
        cwd=tmp_path,
        timeout=300,
    )
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    assert len(list(tmp_path.glob("*/plan.json"))) == 1  # its plan written, nothing applied
    limit = read_limit(api_url, f"runner:{name}")
    assert limit is not None and limit["active_slots"] == 1  # the dead apply's lease

    resumed = run_cli(*apply_args(path, tmp_path), api_url=api_url, cwd=tmp_path)
    assert "Resuming unfinished plan" in resumed.stdout
    released_from_the_machines_record(resumed, api_url, name, seeder, runs)


@pytest.mark.nightly  # waits ~80 s for the server to free the slot
def test_a_killed_applys_lease_runs_out_and_a_waiting_apply_goes_on(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """SIGKILL while writing, nobody resumes from its state directory: the server frees the
    slot when the lease runs out (60s, the least it takes, then its repossessor's next look),
    and an apply from another machine waiting for the lock plans and applies the rest."""
    flow = seeder.flow()
    runs = seeder.runs(30, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    first = start_cli(*apply_args(path, tmp_path / "s1"), api_url=api_url, cwd=tmp_path)
    wait_until_writing(tmp_path / "s1", first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    killed_at = time.monotonic()

    waiting = run_cli(
        *apply_args(path, tmp_path / "s2", "--wait-for-lock", "3m"), api_url=api_url, cwd=tmp_path
    )
    assert waiting.returncode == 0, waiting.stdout + waiting.stderr
    assert time.monotonic() - killed_at > 30, "the lock was free long before its lease ran out"
    assert waiting.stderr.startswith(
        f"runner: another apply of playbook {name!r} holds the server lock 'runner:{name}';"
        " waiting up to 3m00s for it (--wait-for-lock)\n"
        f"runner: took the server lock 'runner:{name}' after "
    )
    assert histories(seeder, runs) == {("Running", "Cancelling")}


def test_wait_for_lock_waits_then_gives_up_or_takes_it(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    holder = Holder(api_url, name)
    holder.take()
    try:
        short = run_cli(
            *apply_args(path, tmp_path / "s", "--wait-for-lock", "2s"),
            api_url=api_url,
            cwd=tmp_path,
        )
        assert short.returncode == 1
        # How long it waited, never less than asked (more on a slow server: the last ask).
        waited = re.search(
            f"holds the server lock 'runner:{name}', still after (\\d+)s \\(--wait-for-lock\\);",
            short.stderr,
        )
        assert waited is not None and int(waited[1]) >= 2, short.stderr
        assert histories(seeder, runs) == {("Running",)}

        waiting = start_cli(
            *apply_args(path, tmp_path / "s", "--wait-for-lock", "2m"),
            api_url=api_url,
            cwd=tmp_path,
        )
        assert waiting.stderr is not None
        said = ""
        deadline = time.monotonic() + 60
        while "waiting up to 2m00s" not in said:
            assert time.monotonic() < deadline and waiting.poll() is None, said
            if select.select([waiting.stderr], [], [], 0.1)[0]:
                said += waiting.stderr.readline()
        holder.release()
        out, err = waiting.communicate(timeout=120)
    finally:
        holder.release()
    assert waiting.returncode == 0, out + said + err
    assert f"took the server lock 'runner:{name}' after" in err
    assert histories(seeder, runs) == {("Running", "Cancelling")}


def test_dry_runs_and_plans_never_take_the_lock_and_no_server_lock_skips_it(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    holder = Holder(api_url, name)
    holder.take()
    try:
        for args in (("plan", str(path)), ("apply", str(path), "--dry-run")):
            result = run_cli(*args, api_url=api_url, cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert "runner:" not in result.stderr
        refused = run_cli(*apply_args(path, tmp_path / "s"), api_url=api_url, cwd=tmp_path)
        assert (refused.returncode, refused.stderr) == (1, taken_message(name))
        assert histories(seeder, runs) == {("Running",)}
        unlocked = run_cli(
            *apply_args(path, tmp_path / "s", "--no-server-lock"), api_url=api_url, cwd=tmp_path
        )
        assert unlocked.returncode == 0, unlocked.stderr
        assert histories(seeder, runs) == {("Running", "Cancelling")}
        limit = read_limit(api_url, f"runner:{name}")
        assert limit is not None and limit["active_slots"] == 1  # still the holder's
    finally:
        holder.release()
    usage = run_cli("apply", str(path), "--no-server-lock", "--wait-for-lock", "1m", cwd=tmp_path)
    assert usage.returncode == 2
    assert "--wait-for-lock waits for the server lock, which --no-server-lock does not take" in (
        usage.stderr
    )


@pytest.mark.parametrize(
    ("limit", "active", "said"),
    [
        (2, True, "is a global concurrency limit of 2 slots; runner needs exactly 1"),
        (0, True, "is a global concurrency limit of 0 slots; runner needs exactly 1"),
        (1, False, "is an inactive global concurrency limit, which keeps nothing apart"),
    ],
    ids=["two slots", "no slot", "inactive"],
)
def test_a_limit_runner_did_not_make_as_it_would_is_refused_and_left_as_it_is(
    api_url: str, seeder: Seeder, tmp_path: Path, limit: int, active: bool, said: str
) -> None:
    flow = seeder.flow()
    runs = seeder.runs(2, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    seeder._call(
        "POST",
        "v2/concurrency_limits/",
        json={"name": f"runner:{name}", "limit": limit, "active": active},
    )
    result = run_cli(*apply_args(path, tmp_path / "s"), api_url=api_url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"runner: the server lock 'runner:{name}' {said}")
    assert histories(seeder, runs) == {("Running",)}
    after = read_limit(api_url, f"runner:{name}")
    assert after is not None
    assert (after["limit"], after["active"], after["active_slots"]) == (limit, active, 0)


@pytest.mark.anyio
async def test_a_lost_lease_stops_the_apply_with_the_rest_pending(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease is released under the apply (as the server does to one that ran out): the
    next renewal finds it gone, the apply stops dispatching, exits 1 with the resume command,
    and the resume (taking the lock anew) finishes."""
    monkeypatch.setattr(lease, "RENEW_SECONDS", 0.2)
    grants: list[LeaseGrant] = []
    take = PrefectClient.take_concurrency_lease

    async def spy(self: PrefectClient, *args: Any, **kwargs: Any) -> LeaseGrant | LeaseRefused:
        answer = await take(self, *args, **kwargs)
        if isinstance(answer, LeaseGrant) and answer.limits:
            grants.append(answer)
        return answer

    monkeypatch.setattr(PrefectClient, "take_concurrency_lease", spy)
    flow = seeder.flow()
    runs = seeder.runs(40, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name, rate=4)
    request = ApplyRequest(
        target=str(path),
        settings=settings,
        state_dir=tmp_path / "s",
        options=ApplyOptions(strategy="per-run", concurrency=1),
    )
    out, err = io.StringIO(), io.StringIO()
    applied: list[Applied] = []

    async def run() -> None:
        applied.append(await apply(request, out=out, err=err))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        with anyio.fail_after(120):
            while journal_records(tmp_path / "s") < 2:
                await anyio.sleep(0.02)
        (grant,) = grants
        async with httpx.AsyncClient(base_url=settings.api_url + "/") as http:
            answer = await http.post(
                "v2/concurrency_limits/decrement-with-lease", json={"lease_id": str(grant.lease_id)}
            )
            assert answer.status_code == 204
    (result,) = applied
    assert result.code == 1, err.getvalue()
    assert result.result is not None and result.result.count("pending") > 10
    assert (
        f"runner: stopped: lost the server lock 'runner:{name}': the server no longer has its"
        " lease (it ran out, or was released); resume with: runner apply --resume "
    ) in err.getvalue()
    assert len(histories(seeder, runs)) == 2  # some cancelled, the rest still Running

    resumed = await apply(
        ApplyRequest(
            target=str(path), settings=settings, state_dir=tmp_path / "s", options=request.options
        ),
        out=io.StringIO(),
        err=io.StringIO(),
    )
    assert resumed.code == 0
    assert histories(seeder, runs) == {("Running", "Cancelling")}
    assert len(grants) == 2


@pytest.mark.anyio
async def test_a_lease_lost_while_the_prompt_held_the_event_loop_up_sends_nothing(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A prompt reads the terminal with the event loop, and the renewals, held up: before its
    first write the apply renews, and finding the lease gone (the server freed the slot
    meanwhile), stops with nothing sent."""
    monkeypatch.setattr(lease, "RENEW_SECONDS", 0.2)
    grants: list[LeaseGrant] = []
    take = PrefectClient.take_concurrency_lease

    async def spy(self: PrefectClient, *args: Any, **kwargs: Any) -> LeaseGrant | LeaseRefused:
        answer = await take(self, *args, **kwargs)
        if isinstance(answer, LeaseGrant) and answer.limits:
            grants.append(answer)
        return answer

    monkeypatch.setattr(PrefectClient, "take_concurrency_lease", spy)
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)

    def slow_answer(plan: Any) -> bool:  # a blocking prompt, answered late
        (grant,) = grants
        seeder._call(
            "POST",
            "v2/concurrency_limits/decrement-with-lease",
            json={"lease_id": str(grant.lease_id)},
        )
        time.sleep(0.5)
        return True

    request = ApplyRequest(target=str(path), settings=settings, state_dir=tmp_path / "s")
    with pytest.raises(LockError) as raised:
        await apply(request, out=io.StringIO(), err=io.StringIO(), confirm=slow_answer)
    assert str(raised.value) == (
        f"lost the server lock 'runner:{name}': the server no longer has its lease (it ran out,"
        " or was released), before anything was sent: apply again"
    )
    assert histories(seeder, runs) == {("Running",)}


@pytest.mark.anyio
async def test_a_prompt_that_awaits_its_answer_keeps_the_lease_renewed(
    settings: ConnectionSettings,
    seeder: Seeder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI's prompt awaits the terminal in the event loop: the lease is renewed while the
    operator thinks (a blocking prompt held every renewal up), and the apply goes on."""
    monkeypatch.setattr(lease, "RENEW_SECONDS", 0.2)
    renewals: list[float] = []
    renew = PrefectClient.renew_concurrency_lease

    async def spy(self: PrefectClient, *args: Any, **kwargs: Any) -> bool:
        renewed = await renew(self, *args, **kwargs)
        renewals.append(time.monotonic())
        return renewed

    monkeypatch.setattr(PrefectClient, "renew_concurrency_lease", spy)
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    path = write_playbook(tmp_path, flow, unique("lock"))
    during: list[int] = []

    async def thinking(plan: Any) -> bool:
        asked = len(renewals)
        deadline = time.monotonic() + 30
        while len(renewals) < asked + 3 and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        during.append(len(renewals) - asked)
        return True

    request = ApplyRequest(target=str(path), settings=settings, state_dir=tmp_path / "s")
    applied = await apply(request, out=io.StringIO(), err=io.StringIO(), confirm=thinking)
    assert during == [3]
    assert applied.code == 0
    assert histories(seeder, runs) == {("Running", "Cancelling")}


class FirstOnly(FaultProxy):
    """Faults the first request it may, then none."""

    def _pick(self, method: str, target: str) -> str | None:
        kind = super()._pick(method, target)
        if kind is not None:
            self.enabled = False
        return kind


@pytest.mark.nightly  # waits ~80 s for the orphaned lease to run out
def test_a_lock_taken_by_a_request_whose_answer_was_lost_is_waited_for(
    prefect_server: PrefectServer, seeder: Seeder, tmp_path: Path
) -> None:
    """The first request for the lock takes it and its answer is lost; the one sent again is
    refused. The slot may be the apply's own, under a lease it never learned of: it waits
    for that lease to run out (and says so), then applies."""

    flow = seeder.flow()
    runs = seeder.runs(2, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    seeder._call("POST", "v2/concurrency_limits/", json={"name": f"runner:{name}", "limit": 1})
    with FirstOnly(
        prefect_server.api_url,
        seed=1,
        rate=1.0,
        kinds=("reset-after",),
        only="increment-with-lease",
    ) as proxy:
        result = run_cli(*apply_args(path, tmp_path / "s"), api_url=proxy.api_url, cwd=tmp_path)
        assert proxy.injected["reset-after"] == 1
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"runner: the answer to a request for the server lock 'runner:{name}' was lost, and the"
        " lock is taken: by that request, perhaps; waiting up to 1m20s for its lease to run out\n"
        f"runner: took the server lock 'runner:{name}' after "
    )
    assert histories(seeder, runs) == {("Running", "Cancelling")}


@pytest.mark.prefect2
def test_without_leases_the_file_lock_alone_is_used_and_said_once(
    api_url: str, seeder: Seeder, tmp_path: Path, is_prefect2: bool
) -> None:
    if not is_prefect2:
        pytest.skip("this server has leases (RUNNER_TEST_PREFECT=2 runs this test)")
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    result = run_cli(*apply_args(path, tmp_path / "s"), api_url=api_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = (
        "runner: the server has no concurrency leases (Prefect 2.x and early 3.x have none):"
        f" the server lock 'runner:{name}' is not used; only the file lock in"
        f" {tmp_path / 's'} keeps another apply of this plan out, and only one from the same"
        " state directory\n"
    )
    assert result.stderr.count(said) == 1, result.stderr
    assert histories(seeder, runs) == {("Running", "Cancelling")}
    assert read_limit(api_url, f"runner:{name}") is None  # nothing made on the server


def test_an_apply_killed_before_it_wrote_leaves_its_lease_to_the_next_on_this_machine(
    api_url: str, seeder: Seeder, tmp_path: Path
) -> None:
    """SIGKILL at the prompt (the lock taken, nothing written, no plan folder yet): the next
    apply of the playbook on this machine, from another state directory, finds the dead
    apply's lease in the machine's record, releases it and applies at once (it used to be
    refused until the lease ran out, up to 1m15s)."""
    flow = seeder.flow()
    runs = seeder.runs(3, flow, "Running")
    name = unique("lock")
    path = write_playbook(tmp_path, flow, name)
    terminal, side = pty.openpty()
    first = subprocess.Popen(
        [RUNNER, "apply", str(path), "--state-dir", str(tmp_path / "s1")],
        stdin=side,
        stdout=side,
        stderr=subprocess.PIPE,
        env=cli_env(api_url),
        cwd=tmp_path,
        text=True,
    )
    os.close(side)
    shown = b""
    try:
        deadline = time.monotonic() + 60
        while b"? [y/N] " not in shown:
            assert time.monotonic() < deadline and first.poll() is None, shown.decode()
            if select.select([terminal], [], [], 0.1)[0]:
                shown += os.read(terminal, 65536)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        os.close(terminal)
        if first.poll() is None:
            first.kill()
    limit = read_limit(api_url, f"runner:{name}")
    assert limit is not None and limit["active_slots"] == 1  # the dead apply's lease

    second = run_cli(*apply_args(path, tmp_path / "s2"), api_url=api_url, cwd=tmp_path)
    released_from_the_machines_record(second, api_url, name, seeder, runs)
