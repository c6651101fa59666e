"""runner against the seed recipe and the server's ceiling, side by side, on SQLite and
PostgreSQL. One command: ``bash scripts/bench`` (``--quick`` for the reduced CI run).

For each backend: one real Prefect server (the test suite's version). For each workload and
each repeat, every system gets runs seeded fresh (one run through the API, the rest cloned in
the database) and is run as its own process, measured from outside: wall time, HTTP requests
(counted in-process by bench/counting.py), client CPU seconds and peak RSS (``os.wait4``).
Afterwards the server is checked: a change the system reported but the server does not show
counts as failed. The cell's runs are then removed in the database, so every cell meets the
same server.

Systems: ``recipe`` (the seed recipe, bench/recipes.py, with the prefect SDK), ``ceiling``
(bench/ceiling.py at its best concurrency, found by a sweep 1..64 and the bulk route), and
``runner`` (per-run, bulk, and with a 10 requests/s budget where it applies).

Writes bench/results/harness.json (every cell) and bench/RESULTS.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.plot import curve_svg  # noqa: E402
from bench.postgres import Postgres, clone_runs_pg, start_postgres  # noqa: E402
from bench.recipes import SCRIPTS  # noqa: E402
from tests.support.prefect_server import DEFAULT_VERSION, PrefectServer, start_server  # noqa: E402
from tests.support.seed import Seeder, unique  # noqa: E402
from tests.support.seed_db import REMOVE_RUNS_OF_FLOW, clone_runs, remove_runs_of_flow  # noqa: E402

PYTHON = sys.executable
WORKLOADS = {
    # name: (seeded state, needs a deployment, runner action, [runner variants])
    "cancel": ("Late", False, "cancel", ["per-run", "bulk", "rate-10"]),
    # The ceiling keeps no copy of what it deletes: runner is measured like for like, without
    # its archive (whose cost bench/archive_cost.py measures).
    # bulk-no-events: the same apply with --no-events, beside it, to show what runner's events
    # cost the server (never the row a target is judged on: runner runs with its events).
    "delete": (
        "Completed",
        False,
        "{delete: {archive: false}}",
        ["per-run", "bulk", "bulk-no-events"],
    ),
    "reschedule": ("Late", True, "{reschedule: {delay: 6h}}", ["per-run"]),
    "recreate": ("Late", True, "{reschedule: {delay: 6h, strategy: recreate}}", ["per-run"]),
    "plan": ("Completed", False, "delete", ["plan"]),
}
SELECTS = {"Late": "{name: Late}", "Completed": "{type: COMPLETED}"}
SWEEP = [1, 4, 16, 64]
#: A runner variant run with --no-events: measured, never judged against a target.
NO_EVENTS = "-no-events"
#: The ceiling's best configuration with a read of each write's runs right before it
#: (bench/ceiling.py --checked): beside the ceiling, never the row a target is judged on.
CHECKED = "ceiling-checked"


@dataclass
class Cell:
    backend: str
    workload: str
    system: str
    repeat: int
    runs: int
    done: int = 0
    failed: int = 0
    wall_s: float = 0.0
    ops_per_s: float = 0.0
    requests: int = 0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    exit_code: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


#: Runs the measured command as its child and writes the child's CPU seconds, peak RSS and
#: exit status. Linux carries a process's peak RSS across fork and exec, so a command started
#: straight from the harness (which holds 150 MB once it has seeded PostgreSQL) would report
#: at least the harness's size; started from this small launcher, it reports its own.
LAUNCHER = """
import json, os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"cpu": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, out)
"""


def measured(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run a command; wall time, CPU seconds, peak RSS and the requests it counted."""
    count_file = cwd / f"count-{time.monotonic_ns()}"
    usage_file = cwd / f"usage-{time.monotonic_ns()}"
    out_path, err_path = cwd / "out.txt", cwd / "err.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-S", "-E", "-c", LAUNCHER, str(usage_file), *command],
            env={**env, "BENCH_COUNT_FILE": str(count_file)},
            stdout=out,
            stderr=err,
            cwd=cwd,
        )
        process.wait()
        wall = time.perf_counter() - started
    usage = json.loads(usage_file.read_text())
    process.returncode = usage["code"]
    requests = int(count_file.read_text()) if count_file.exists() else 0
    return {
        "wall": wall,
        "cpu": usage["cpu"],
        "rss_mb": usage["rss_kb"] / 1024,
        "requests": requests,
        "code": process.returncode,
        "stdout": out_path.read_text(),
        "stderr": err_path.read_text(),
    }


class Backend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pg: Postgres | None = None
        extra = {}
        if name == "postgresql":
            self.pg = start_postgres()
            extra["PREFECT_API_DATABASE_CONNECTION_URL"] = self.pg.url
        self.server: PrefectServer = start_server(extra_env=extra)
        self.seeder = Seeder(self.server.api_url)
        self.version = str(self.seeder._call("GET", "admin/version"))

    def seed(
        self, state: str, count: int, deployment: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        flow = self.seeder.flow(unique("bench"))
        dep = self.seeder.deployment(flow, unique("d")) if deployment else None
        template = self.seeder.run(flow, state, deployment=dep)
        self.grow(template["id"], count - 1)
        return flow, dep

    def grow(self, template: str, count: int, prefix: str = "r") -> None:
        """``count`` clones of run ``template``, made in the database (the API makes ~20-45
        runs/s)."""
        if self.pg is not None:
            clone_runs_pg(self.pg, template, count, name_prefix=unique(prefix))
        else:
            db = self.server.home / "prefect.db"
            clone_runs(db, template, count, name_prefix=unique(prefix))

    def runs(self, flow: dict[str, Any]) -> list[dict[str, Any]]:
        return self.seeder.runs_of_flow(flow)

    def remove(self, flow: dict[str, Any]) -> None:
        """Drop a cell's runs in the database: every cell meets a server of the same size."""
        if self.pg is not None:
            self.pg.psql("; ".join(s.format(id=flow["id"]) for s in REMOVE_RUNS_OF_FLOW))
            return
        remove_runs_of_flow(self.server.home / "prefect.db", flow["id"])

    def close(self) -> None:
        self.seeder.close()
        self.server.stop()
        shutil.rmtree(self.server.home, ignore_errors=True)
        if self.pg is not None:
            self.pg.stop()


def verify(backend: Backend, workload: str, flow: dict[str, Any], runs: int) -> int:
    """How many of the ``runs`` planned changes the server shows."""
    if workload == "plan":
        return runs
    found = backend.runs(flow)
    if workload == "delete":
        return runs - len(found)
    if workload == "cancel":
        return sum(1 for r in found if r["state_type"] == "CANCELLED")
    return sum(1 for r in found if r["state_name"] == "Scheduled")


def run_system(
    backend: Backend,
    workload: str,
    system: str,
    variant: str,
    count: int,
    tmp: Path,
    *,
    flow: dict[str, Any] | None = None,
    dep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Seed (unless given), run one system on it, verify, clean up."""
    state, needs_dep, action, _ = WORKLOADS[workload]
    seeded_here = flow is None
    if flow is None:
        flow, dep = backend.seed(state, count, needs_dep)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=backend.server.api_url,
        NO_COLOR="1",
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(tmp / "prefect-home"),
    )
    if system == "recipe":
        script = tmp / "recipe.py"
        script.write_text(SCRIPTS[workload])
        args = {
            "reschedule": [dep["name"] if dep else "", "21600"],
            "recreate": [dep["name"] if dep else "", "21600"],
            "delete": [flow["name"]],
            "plan": [flow["name"]],
            "cancel": [],
        }[workload]
        python = str(backend.server.venv / "bin" / "python")
        command = [
            python,
            "-c",
            "import bench.counting, runpy, sys;"
            " sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
            str(script),
            *args,
        ]
    elif system == "ceiling":
        concurrency, *modes = variant.split("/")
        command = [
            PYTHON,
            str(ROOT / "bench" / "ceiling.py"),
            workload,
            "--state",
            {"Late": "Late", "Completed": "COMPLETED"}[state],
            "--concurrency",
            concurrency,
            "--flow",
            flow["name"],
        ]
        command += [f"--{mode}" for mode in modes]  # bulk, checked
    else:
        playbook = tmp / "playbook.yaml"
        playbook.write_text(
            f"version: 1\nname: bench-{workload}\nguards: {{allow_active: true}}\nsteps:\n"
            f"  - name: {workload}\n    select: {{flows: {flow['name']}, state: {SELECTS[state]}}}\n"
            f"    action: {action}\n"
        )
        runner = [
            "-c",
            "import bench.counting, sys; from runner.cli import main;"
            " sys.argv = ['runner', *sys.argv[1:]]; main()",
        ]
        if variant == "plan":
            command = [PYTHON, *runner, "plan", str(playbook), "--format", "json"]
        else:
            command = [
                PYTHON,
                *runner,
                "apply",
                str(playbook),
                "--yes",
                "--state-dir",
                str(tmp / "state"),
            ]
            if variant == "rate-10":
                command += ["--rate", "10"]
            elif variant.endswith(NO_EVENTS):
                command += ["--strategy", variant.removesuffix(NO_EVENTS), "--no-events"]
            else:
                command += ["--strategy", variant]
    result = measured(command, env, tmp)
    result["done"] = verify(backend, workload, flow, count)
    if seeded_here:
        backend.remove(flow)
    return result


def cell_from(
    backend: Backend,
    workload: str,
    system: str,
    repeat: int,
    count: int,
    result: dict[str, Any],
    note: str,
) -> Cell:
    done = result["done"] if result["code"] == 0 or workload != "plan" else 0
    return Cell(
        backend=backend.name,
        workload=workload,
        system=system,
        repeat=repeat,
        runs=count,
        done=done,
        failed=count - done,
        wall_s=round(result["wall"], 2),
        ops_per_s=round(done / result["wall"], 1) if result["wall"] else 0.0,
        requests=result["requests"],
        cpu_s=round(result["cpu"], 2),
        rss_mb=round(result["rss_mb"], 1),
        exit_code=result["code"],
        note=note,
        extra={"stderr_tail": result["stderr"][-300:]} if result["code"] else {},
    )


def workload_systems(workload: str, best: str) -> list[tuple[str, str, str]]:
    """What a workload's cells measure, as (system, variant, note): the recipe, the ceiling at
    the sweep's ``best``, the checked ceiling (apply workloads) and runner's variants."""
    systems = [("recipe", "", ""), ("ceiling", best, f"best of sweep: {best}")]
    if workload != "plan":
        # The same calls, each write after a read of what it writes: the least that
        # runner's promise (read back right before) costs.
        systems.append((CHECKED, f"{best}/checked", f"{best}, each write read first"))
    return systems + [(f"runner-{v}", v, "") for v in WORKLOADS[workload][3]]


def sweep(
    backend: Backend,
    workload: str,
    size: int,
    tmp: Path,
    plan_seed: tuple[dict[str, Any], None] | None,
    quick: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    """The ceiling's best configuration for this workload and backend."""
    variants = [str(c) for c in (SWEEP if not quick else (1, 16))]
    if workload in ("cancel", "delete") and backend.version >= "3.6.16":
        variants += ["1/bulk", "4/bulk"] if not quick else ["4/bulk"]
    if workload == "plan":
        variants = ["1", "4", "16"] if not quick else ["4"]
    tried = []
    for variant in variants:
        flow = plan_seed[0] if plan_seed else None
        result = run_system(backend, workload, "ceiling", variant, size, tmp, flow=flow)
        rate = result["done"] / result["wall"] if result["wall"] else 0.0
        tried.append(
            {"variant": variant, "ops_per_s": round(rate, 1), "failed": size - result["done"]}
        )
        print(f"  sweep {backend.name} {workload} ceiling {variant}: {rate:.1f}/s", flush=True)
    best = max(
        (t for t in tried if t["failed"] == 0), key=lambda t: t["ops_per_s"], default=tried[0]
    )
    return best["variant"], tried


def summarise(cells: list[Cell]) -> dict[tuple[str, str, str], dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.backend, cell.workload, cell.system), []).append(cell)
    summary = {}
    for key, group in groups.items():
        rates = [c.ops_per_s for c in group]
        summary[key] = {
            "n": len(group),
            "runs": group[0].runs,
            "wall_s": statistics.median(c.wall_s for c in group),
            "ops_per_s": statistics.median(rates),
            "spread": (min(rates), max(rates)),
            "requests": int(statistics.median(c.requests for c in group)),
            "cpu_s": statistics.median(c.cpu_s for c in group),
            "rss_mb": max(c.rss_mb for c in group),
            "failed": sum(c.failed for c in group),
            "note": group[0].note,
        }
    return summary


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(
            ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
        )
        mem_gb = int(mem.split()[1]) / 1024 / 1024
    except (OSError, StopIteration):
        mem_gb = 0
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, {platform.system()}"
        f" {platform.release()}, Python {platform.python_version()} (client)"
    )


def against_checked(row: dict[str, Any], checked: dict[str, Any] | None) -> str:
    """A runner row's ops/s over the checked ceiling's, for the ratios table ("-": none)."""
    if not checked or not checked["ops_per_s"]:
        return "-"
    return f"{row['ops_per_s'] / checked['ops_per_s']:.2f}x"


def write_results(
    path: Path, cells: list[Cell], sweeps: dict[str, Any], meta: dict[str, Any]
) -> None:
    summary = summarise([c for c in cells if c.workload != "plan-curve"])
    lines = [
        "# Benchmark results",
        "",
        f"One run of `{meta['command']}`, {meta['started']} to {meta['finished']} (UTC).",
        "",
        *(
            [
                "The run was interrupted and continued with `--resume` (same sizes, same machine)"
                f" at {', '.join(meta['resumed'])}: workloads measured completely before the"
                " interruption were kept, a workload cut off halfway was measured again whole.",
                "",
            ]
            if meta.get("resumed")
            else []
        ),
        *(
            [
                f"**Incomplete:** not measured yet: {', '.join(meta['pending'])}. The table"
                " below is partial; `bash scripts/bench --resume` measures the rest.",
                "",
            ]
            if meta.get("pending")
            else []
        ),
        f"- Machine: {meta['machine']}",
        f"- Server: Prefect {meta['prefect']} (`prefect server start`, local), backends:"
        f" {', '.join(meta['backends'])}"
        + "".join(f" ({name} skipped: {why})" for name, why in meta["skipped"].items()),
        f"- Sizes: {meta['size']} runs per apply workload, {meta['plan_size']} for plan,"
        f" {meta['curve'].replace(',', ' / ')} for the plan curve (one measurement each);"
        f" {meta['repeats']} repeats per cell"
        " (median, spread min-max); the ceiling's sweep on cells of"
        f" {meta['sweep_size']} runs.",
        "- Every cell: runs seeded fresh, the system run as its own process, the server checked"
        " afterwards (failed = planned changes the server does not show).",
        "- runner runs as an operator runs it (its checks, checkpoint, lock and events on),"
        " except that its deletes keep no archive (`archive: false`): the ceiling keeps no"
        " copy either; `bench/archive_cost.py` measures what the archive costs.",
        "",
        "| backend | workload | system | runs | wall s | ops/s (spread) | requests | client CPU s"
        " | peak RSS MB | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (backend, workload, system), s in sorted(summary.items()):
        spread = f"{s['ops_per_s']:.1f} ({s['spread'][0]:.1f}-{s['spread'][1]:.1f})"
        label = system + (f" [{s['note']}]" if s["note"] else "")
        lines.append(
            f"| {backend} | {workload} | {label} | {s['runs']} | {s['wall_s']:.1f} | {spread}"
            f" | {s['requests']} | {s['cpu_s']:.1f} | {s['rss_mb']:.0f} | {s['failed']} |"
        )
    lines += [
        "",
        "## Ratios and targets",
        "",
        "| backend | workload | runner (best) ops/s | / ceiling | / checked ceiling"
        " | / seed recipe | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in meta["backends"]:
        for workload in WORKLOADS:
            runner_rows = {
                k[2]: v
                for k, v in summary.items()
                if k[0] == backend
                and k[1] == workload
                and k[2].startswith("runner")
                and not k[2].endswith(NO_EVENTS)
            }
            if not runner_rows:
                continue
            best_name, best = max(runner_rows.items(), key=lambda kv: kv[1]["ops_per_s"])
            ceiling = summary.get((backend, workload, "ceiling"))
            recipe = summary.get((backend, workload, "recipe"))
            to_ceiling = (
                best["ops_per_s"] / ceiling["ops_per_s"] if ceiling and ceiling["ops_per_s"] else 0
            )
            to_recipe = (
                best["ops_per_s"] / recipe["ops_per_s"] if recipe and recipe["ops_per_s"] else 0
            )
            to_checked = against_checked(best, summary.get((backend, workload, CHECKED)))
            target = ">= 0.9x ceiling" + (", >= 10x recipe" if workload == "delete" else "")
            met = to_ceiling >= 0.9 and (workload != "delete" or to_recipe >= 10)
            lines.append(
                f"| {backend} | {workload} | {best['ops_per_s']:.1f} ({best_name}) |"
                f" {to_ceiling:.2f}x | {to_checked} | {to_recipe:.1f}x |"
                f" {target}: {'met' if met else 'MISSED'} |"
            )
        rate = summary.get((backend, "cancel", "runner-rate-10"))
        recipe = summary.get((backend, "cancel", "recipe"))
        if rate and recipe and recipe["ops_per_s"] and recipe["requests"]:
            # The recipe ran unthrottled on a local server. Under the same budget it could do
            # at most runs / (its requests / 10) runs a second: the ratio against that bound is
            # the least runner gains where the budget applies (a budget refuses, it never
            # speeds up).
            bound = min(recipe["ops_per_s"], recipe["runs"] / (recipe["requests"] / 10))
            ratio = rate["ops_per_s"] / bound
            lines.append(
                f"| {backend} | cancel at 10 req/s | {rate['ops_per_s']:.1f} ({rate['requests']}"
                f" requests) | - | - | {ratio:.1f}x the recipe under the same budget (at most"
                f" {bound:.1f}/s: {recipe['requests']} requests at 10/s);"
                f" {rate['ops_per_s'] / recipe['ops_per_s']:.1f}x the recipe unthrottled |"
                f" >= 1.5x recipe: {'met' if ratio >= 1.5 else 'MISSED'} |"
            )
        per_run = summary.get((backend, "delete", "runner-per-run"))
        bulk = summary.get((backend, "delete", "runner-bulk"))
        quiet = summary.get((backend, "delete", f"runner-bulk{NO_EVENTS}"))
        ceiling = summary.get((backend, "delete", "ceiling"))
        if bulk and quiet and ceiling and ceiling["ops_per_s"] and quiet["ops_per_s"]:
            # What the apply's events cost: the same bulk delete without them. Not a target's
            # row (runner runs with its events), the measure of where the rest of the gap is.
            events_s = bulk["wall_s"] - quiet["wall_s"]
            quiet_checked = against_checked(quiet, summary.get((backend, "delete", CHECKED)))
            lines.append(
                f"| {backend} | delete, --no-events | {quiet['ops_per_s']:.1f}"
                f" (runner-bulk{NO_EVENTS}) | {quiet['ops_per_s'] / ceiling['ops_per_s']:.2f}x |"
                f" {quiet_checked} | - |"
                f" not a target: its events cost {events_s:.1f} s of the {bulk['wall_s']:.1f} s"
                f" bulk delete ({1000 * events_s / bulk['runs']:.1f} ms a run) |"
            )
        if per_run and bulk and bulk["requests"]:
            fewer = per_run["requests"] / bulk["requests"]
            lines.append(
                f"| {backend} | delete requests, per-run / bulk | - | - | - | {fewer:.0f}x fewer |"
                f" >= 10x fewer: {'met' if fewer >= 10 else 'MISSED'} |"
            )
    lines += curve_section(cells, meta)
    lines += ["", "## The ceiling's sweep", ""]
    for key, (best, tried) in sweeps.items():
        tried_text = ", ".join(f"{t['variant']}: {t['ops_per_s']}/s" for t in tried)
        lines.append(f"- {key}: best `{best}` ({tried_text})")
    curve = [c for c in cells if c.workload == "plan-curve" and c.exit_code == 0]
    if curve:
        points = [(c.backend, c.system, c.runs, c.ops_per_s) for c in curve]
        path.with_name("plan-curve.svg").write_text(curve_svg(points))
    raw = "harness-quick.json" if meta["size"] == 40 else "harness.json"
    lines += ["", f"Raw numbers: `bench/results/{raw}`.", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--plan-size", type=int, default=20_000)
    parser.add_argument(
        "--curve",
        default="10000,100000,500000",
        help="history sizes at which `runner plan` is measured (one flow's runs, grown)",
    )
    parser.add_argument(
        "--curve-offset-max",
        type=int,
        default=100_000,
        help="the largest size at which the ceiling and the recipe (both page by offset, whose"
        " cost grows with the square of the history) are measured too",
    )
    parser.add_argument("--sweep-size", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="CI: small sizes, one repeat")
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument(
        "--require-all", action="store_true", help="fail when a backend cannot be started"
    )
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="run even when another Prefect server or harness is running on this machine",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run recorded in bench/results/harness.json (same options): keep"
        " the workloads it measured completely, measure the rest",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="write RESULTS.md again from bench/results/harness.json, measuring nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.plan_size, args.sweep_size = 40, 600, 20
        args.curve, args.curve_offset_max = "600,2000", 2000
        args.repeats = 1
    if args.report:
        report(args)
        return
    other = busy_machine()
    if other and not args.allow_busy:
        raise SystemExit(
            f"another server or harness is running ({other}): it would skew every cell."
            " Stop it, or pass --allow-busy"
        )
    started = datetime.now(timezone.utc)
    cells: list[Cell] = []
    sweeps: dict[str, Any] = {}
    versions = set()
    skipped: dict[str, str] = {}
    resumed: list[str] = []
    if args.resume:
        started, cells, sweeps, resumed = resume(args)
        versions.add(DEFAULT_VERSION)
    args.resumed = resumed
    for name in args.backends.split(","):
        if all(complete(args, cells, sweeps, name, w) for w in [*args.workloads.split(","), "-"]):
            print(f"== {name}: measured before, kept", flush=True)
            continue
        print(f"== {name}", flush=True)
        try:
            backend = Backend(name)
        except Exception as exc:  # e.g. PostgreSQL cannot be installed on this machine
            if args.require_all:
                raise
            skipped[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            print(f"  {name} skipped: {skipped[name]}", flush=True)
            continue
        versions.add(backend.version)
        try:
            with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp_name:
                tmp = Path(tmp_name)
                for workload in args.workloads.split(","):
                    if complete(args, cells, sweeps, name, workload):
                        print(f"  {name} {workload}: measured before, kept", flush=True)
                        continue
                    size = args.plan_size if workload == "plan" else args.size
                    plan_seed = (
                        (backend.seed("Completed", size, False)[0], None)
                        if workload == "plan"
                        else None
                    )
                    best, tried = sweep(
                        backend,
                        workload,
                        size if workload == "plan" else args.sweep_size,
                        tmp,
                        plan_seed,
                        quick=args.quick,
                    )
                    sweeps[f"{name} {workload}"] = (best, tried)
                    systems = workload_systems(workload, best)
                    shared = shared_recipe(cells, name, workload)
                    for repeat in range(args.repeats):
                        for system, variant, note in systems:
                            kind = system.split("-")[0]
                            if kind == "recipe" and len(shared) > repeat:
                                # The seed's reschedule recipe already recreates its runs: one
                                # script for both workloads, measured once.
                                cells.append(shared[repeat])
                                continue
                            flow = plan_seed[0] if plan_seed else None
                            result = run_system(
                                backend, workload, kind, variant, size, tmp, flow=flow
                            )
                            cell = cell_from(backend, workload, system, repeat, size, result, note)
                            cells.append(cell)
                            save(args, cells, sweeps, versions, skipped, started)
                            print(
                                f"  {name} {workload} {system} #{repeat}: {cell.ops_per_s}/s,"
                                f" {cell.requests} requests, {cell.failed} failed,"
                                f" exit {cell.exit_code}",
                                flush=True,
                            )
                    if plan_seed:
                        backend.remove(plan_seed[0])
                if "plan" in args.workloads and not complete(args, cells, sweeps, name, "-"):
                    plan_curve(args, backend, sweeps, cells, tmp, versions, skipped, started)
        finally:
            backend.close()
    save(args, cells, sweeps, versions, skipped, started)
    bad = [c for c in cells if c.exit_code != 0 and c.system.startswith("runner")]
    if bad:
        raise SystemExit(f"{len(bad)} runner cells failed: {bad[0]}")


def curve_section(cells: list[Cell], meta: dict[str, Any]) -> list[str]:
    """RESULTS.md's plan-curve table, its targets, and the plot beside it."""
    curve = [c for c in cells if c.workload == "plan-curve"]
    if not curve:
        return []
    lines = [
        "",
        "## Planning as the history grows",
        "",
        "`runner plan` over one flow's finished runs, the history grown in the database"
        " between sizes; one measurement per cell. runner reads by keyset (the sort key after"
        " the last value seen), the ceiling and the recipe by offset (the server skips every"
        f" earlier row on every page: measured up to {meta['curve_offset_max']:,} runs). The"
        " keyset ceiling reads by keyset from bare httpx, parsing nothing: what the server"
        " itself can serve such a read at (`bench/ceiling.py plan --keyset`).",
        "",
        "![runs/s against history size](plan-curve.svg)",
        "",
        "| backend | runs | system | wall s | runs/s | requests | client CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(curve, key=lambda c: (c.backend, c.runs, c.system)):
        failed = "" if c.exit_code == 0 else f" (exit {c.exit_code})"
        lines.append(
            f"| {c.backend} | {c.runs:,} | {c.system} | {c.wall_s:.1f} | {c.ops_per_s:.1f}{failed}"
            f" | {c.requests} | {c.cpu_s:.1f} | {c.rss_mb:.0f} |"
        )
    lines += ["", "| backend | target | measured | |", "|---|---|---|---|"]
    for backend in meta["backends"]:
        mine = {(c.system, c.runs): c for c in curve if c.backend == backend}
        sizes = sorted({c.runs for c in curve if c.backend == backend})
        if not sizes:
            continue
        small, large = mine.get(("runner-plan", sizes[0])), mine.get(("runner-plan", sizes[-1]))
        if small and large and small.ops_per_s:
            flat = large.ops_per_s / small.ops_per_s
            lines.append(
                f"| {backend} | runs/s over {sizes[-1]:,} >= 0.8x over {sizes[0]:,} |"
                f" {flat:.2f}x ({large.ops_per_s:.0f} / {small.ops_per_s:.0f}) |"
                f" {'met' if flat >= 0.8 else 'MISSED'} |"
            )
        at = [n for n in sizes if ("ceiling", n) in mine and ("runner-plan", n) in mine]
        if at:
            n = at[-1]
            ceiling = mine[("ceiling", n)].ops_per_s
            ratio = mine[("runner-plan", n)].ops_per_s / ceiling if ceiling else 0.0
            lines.append(
                f"| {backend} | >= 1.2x the offset-paging ceiling at {n:,} | {ratio:.2f}x |"
                f" {'met' if ratio >= 1.2 else 'MISSED'} |"
            )
        server = [n for n in sizes if ("ceiling-keyset", n) in mine and ("runner-plan", n) in mine]
        for n in server[-1:]:
            keyset = mine[("ceiling-keyset", n)].ops_per_s
            ratio = mine[("runner-plan", n)].ops_per_s / keyset if keyset else 0.0
            offset = mine.get(("ceiling", n))
            beyond = (
                f"; the keyset ceiling is {keyset / offset.ops_per_s:.2f}x the offset ceiling"
                if offset and offset.ops_per_s
                else ""
            )
            lines.append(
                f"| {backend} | not a target: runner against the keyset ceiling (the server's"
                f" own limit for a keyset read) at {n:,} | {ratio:.2f}x{beyond} | |"
            )
        if large:
            lines.append(
                f"| {backend} | peak RSS <= 200 MB at {sizes[-1]:,} | {large.rss_mb:.0f} MB |"
                f" {'met' if large.rss_mb <= 200 else 'MISSED'} |"
            )
    return lines


def plan_curve(
    args: argparse.Namespace,
    backend: Backend,
    sweeps: dict[str, Any],
    cells: list[Cell],
    tmp: Path,
    versions: set[str],
    skipped: dict[str, str],
    started: datetime,
) -> None:
    """`runner plan` over one flow's runs as its history grows (cloned in the database up to
    each size of ``--curve``); up to ``--curve-offset-max`` the ceiling (at the plan sweep's
    best) and the recipe read the same runs. Peak RSS of the largest is the memory check."""
    best = sweeps.get(f"{backend.name} plan", ("16", []))[0]
    flow, _ = backend.seed("Completed", 1, False)
    template = backend.runs(flow)[0]["id"]
    have = 1
    for size in curve_sizes(args):
        backend.grow(template, size - have, "c")
        have = size
        systems = [("runner-plan", "runner", "plan", "keyset paging")]
        keyset = f"keyset paging, raw httpx, concurrency {best}"
        systems += [("ceiling-keyset", "ceiling", f"{best}/keyset", keyset)]
        if size <= args.curve_offset_max:
            systems += [("ceiling", "ceiling", best, f"offset paging, concurrency {best}")]
            systems += [("recipe", "recipe", "", "offset paging, one page at a time")]
        for system, kind, variant, note in systems:
            result = run_system(backend, "plan", kind, variant, size, tmp, flow=flow)
            cells.append(cell_from(backend, "plan-curve", system, 0, size, result, note))
            save(args, cells, sweeps, versions, skipped, started)
            print(
                f"  {backend.name} plan-curve {size} {system}: {cells[-1].ops_per_s}/s,"
                f" {cells[-1].rss_mb:.0f} MB, exit {cells[-1].exit_code}",
                flush=True,
            )
    backend.remove(flow)


def curve_sizes(args: argparse.Namespace) -> list[int]:
    return sorted(int(size) for size in str(args.curve).split(","))


def shared_recipe(cells: list[Cell], backend: str, workload: str) -> list[Cell]:
    """For recreate: the reschedule workload's recipe cells (the same script on the same
    runs), relabelled; empty when there are none to share."""
    if workload != "recreate" or SCRIPTS["recreate"] != SCRIPTS["reschedule"]:
        return []
    found = [
        c
        for c in cells
        if c.backend == backend and c.workload == "reschedule" and c.system == "recipe"
    ]
    return [
        Cell(**{**asdict(c), "workload": workload, "note": "the reschedule recipe's cells"})
        for c in found
    ]


def busy_machine() -> str:
    """What else is using the CPU: another Prefect server (an orphan of an earlier run, say)
    would take a core from every cell and skew them unevenly."""
    own = {os.getpid(), os.getppid()}  # the parent: a `timeout` or shell that started it
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "prefect server start" in args or "bench/harness.py" in args:
            found.append(f"{entry.name}: {args.strip()[:120]}")
    return "; ".join(found)


def complete(
    args: argparse.Namespace,
    cells: list[Cell],
    sweeps: dict[str, Any],
    backend: str,
    workload: str,
) -> bool:
    """Whether ``workload`` ("-": the memory check) was measured whole on ``backend``."""
    if workload == "-":
        largest = curve_sizes(args)[-1]
        return "plan" not in args.workloads or any(
            c.backend == backend and c.workload == "plan-curve" and c.runs == largest for c in cells
        )
    expected = args.repeats * len(workload_systems(workload, ""))
    found = sum(1 for c in cells if c.backend == backend and c.workload == workload)
    return f"{backend} {workload}" in sweeps and found == expected


def pending(
    args: argparse.Namespace, cells: list[Cell], sweeps: dict[str, Any], skipped: dict[str, str]
) -> list[str]:
    """The workloads of this run not yet measured whole ("sqlite plan-curve": planning as
    the history grows)."""
    return [
        f"{backend} {'plan-curve' if workload == '-' else workload}"
        for backend in args.backends.split(",")
        if backend not in skipped
        for workload in [*args.workloads.split(","), "-"]
        if not complete(args, cells, sweeps, backend, workload)
    ]


def report(args: argparse.Namespace) -> None:
    """Write RESULTS.md again from the recorded JSON, measuring nothing."""
    raw = ROOT / "bench" / "results" / ("harness-quick.json" if args.quick else "harness.json")
    recorded = json.loads(raw.read_text())
    meta = recorded["meta"]
    cells = [Cell(**c) for c in recorded["cells"]]
    sweeps = {k: tuple(v) for k, v in recorded["sweeps"].items()}
    for option in ("size", "plan_size", "curve", "curve_offset_max", "sweep_size", "repeats"):
        setattr(args, option, meta[option])
    args.backends = ",".join([*meta["backends"], *meta["skipped"]])
    args.workloads = ",".join(meta.get("workloads", WORKLOADS))
    meta["pending"] = pending(args, cells, sweeps, meta["skipped"])
    write_results(Path(args.output), cells, sweeps, meta)


def resume(args: argparse.Namespace) -> tuple[datetime, list[Cell], dict[str, Any], list[str]]:
    """The cells and sweeps of the recorded run, less any workload it did not finish."""
    raw = ROOT / "bench" / "results" / ("harness-quick.json" if args.quick else "harness.json")
    recorded = json.loads(raw.read_text())
    meta = recorded["meta"]
    for option in ("size", "plan_size", "curve", "curve_offset_max", "sweep_size", "repeats"):
        if meta[option] != getattr(args, option):
            raise SystemExit(
                f"--resume: {raw} was measured with {option}={meta[option]},"
                f" not {getattr(args, option)}"
            )
    cells = [Cell(**c) for c in recorded["cells"]]
    sweeps = {k: tuple(v) for k, v in recorded["sweeps"].items()}
    cells = [
        c
        for c in cells
        if complete(
            args, cells, sweeps, c.backend, "-" if c.workload == "plan-curve" else c.workload
        )
    ]
    kept = {f"{c.backend} {c.workload}" for c in cells}
    sweeps = {k: v for k, v in sweeps.items() if k in kept}
    started = datetime.strptime(meta["started"], "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    return started, cells, sweeps, [*meta.get("resumed", []), now]


def save(
    args: argparse.Namespace,
    cells: list[Cell],
    sweeps: dict[str, Any],
    versions: set[str],
    skipped: dict[str, str],
    started: datetime,
) -> None:
    """Write the raw JSON and RESULTS.md (after every cell: an interrupted run keeps what it
    measured)."""
    finished = datetime.now(timezone.utc)
    meta = {
        "command": " ".join(["bash scripts/bench", *sys.argv[1:]]),
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "finished": finished.strftime("%Y-%m-%d %H:%M"),
        "resumed": args.resumed,
        "machine": machine(),
        "prefect": ", ".join(sorted(versions)) or DEFAULT_VERSION,
        "backends": [b for b in args.backends.split(",") if b not in skipped],
        "skipped": skipped,
        "size": args.size,
        "plan_size": args.plan_size,
        "curve": args.curve,
        "curve_offset_max": args.curve_offset_max,
        "sweep_size": args.sweep_size,
        "repeats": args.repeats,
        "workloads": args.workloads.split(","),
        "pending": pending(args, cells, sweeps, skipped),
    }
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    raw = results / ("harness-quick.json" if args.quick else "harness.json")
    raw.write_text(
        json.dumps({"meta": meta, "sweeps": sweeps, "cells": [asdict(c) for c in cells]}, indent=1)
        + "\n"
    )
    write_results(Path(args.output), cells, sweeps, meta)


if __name__ == "__main__":
    main()
