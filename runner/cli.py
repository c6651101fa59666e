"""The ``runner`` command line: parse, dispatch to ``runner.commands``, map errors to exit codes.

Exit codes are the table in :mod:`runner.errors`; :func:`_run_command` is where an error
becomes one. An exception that is not a :class:`~runner.errors.RunnerError` is a bug: its
traceback is shown, with a line asking for a report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from runner import __version__

if TYPE_CHECKING:
    from runner.executor import ApplyOptions

from runner.errors import EXIT_CHANGES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK

__all__ = ["EXIT_CHANGES", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(func: F) -> F:
    """Options that override Prefect's own connection settings for one command."""
    func = click.option(
        "--api-url", envvar=None, help="Prefect API URL (default: PREFECT_API_URL or the profile)."
    )(func)
    return func


def _lock_wait_and_plan_age(
    wait_for_lock: str | None, max_plan_age: str
) -> tuple[float, float | None]:
    """``--wait-for-lock`` and ``--max-plan-age`` in seconds (``none``: no age limit), as
    ``runner apply`` and ``runner undo`` take them."""
    from runner.timeexpr import parse_duration  # on use: `runner validate` starts cheap

    try:
        wait = parse_duration(wait_for_lock).total_seconds() if wait_for_lock else 0.0
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait-for-lock") from None
    if max_plan_age.lower() == "none":
        return wait, None
    try:
        return wait, parse_duration(max_plan_age).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-plan-age") from None


def _apply_options(
    rate: float | None,
    concurrency: int | None,
    strategy: str,
    max_failures: int | None,
    max_fail_ratio: float | None,
) -> ApplyOptions:
    """The executor's options, as ``runner apply`` and ``runner undo`` take them."""
    from runner.executor import ApplyOptions

    return ApplyOptions(
        rate_limit=rate,
        concurrency=concurrency,
        strategy=strategy,  # type: ignore[arg-type]
        max_failures=max_failures,
        max_fail_ratio=max_fail_ratio,
    )


def _settings(api_url: str | None) -> Any:
    """The connection settings; when no URL is set anywhere, which one is used, said once on
    stderr before anything is sent (a server on another port is then found at once)."""
    import os

    from runner.errors import SettingsError
    from runner.settings import resolve_settings

    settings = resolve_settings(api_url=api_url)
    if settings.sources.get("PREFECT_API_URL") == "default" and _in_ci(os.environ):
        # A CI job whose secrets are missing (a fork's pull request) would otherwise wait on
        # a server that is not there: say what is missing, at once.
        raise SettingsError(
            "PREFECT_API_URL is not set (no --api-url, no environment variable, not in the"
            f" Prefect profile) and CI is set: not falling back to {settings.display_url}"
            " (on GitHub Actions, pull requests from forks and from Dependabot get no secrets)"
        )
    if settings.sources.get("PREFECT_API_URL") == "default":
        click.echo(
            "runner: PREFECT_API_URL is not set (no --api-url, no environment variable, not in"
            f" the Prefect profile): using {settings.display_url}",
            err=True,
        )
    return settings


def _in_ci(environ: Mapping[str, str]) -> bool:
    """``CI`` set as CI services set it (GitHub Actions, GitLab, CircleCI: ``true``)."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


class _Group(click.Group):
    """Click's group, but Ctrl-C and SIGTERM (see :func:`main`) exit 130, at any stage, as
    the exit-code table says (click itself would print "Aborted!" and exit 1)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["runner.args"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # shown by click on stderr, exit 2
            _json_error(exc, _wants_json(ctx.meta.get("runner.args", [])))
            raise
        except KeyboardInterrupt as exc:
            name = str(exc) or "SIGINT"
            click.echo(f"\nrunner: {name}: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runner")
def cli() -> None:
    """Declarative batch operations on Prefect flow runs, driven by YAML playbooks."""


@cli.command()
@connection_options
def doctor(api_url: str | None) -> None:
    """Show the connection settings in force and what the server supports."""
    from runner.commands import doctor as command

    _run_command(lambda: command.run(_settings(api_url), out=sys.stdout))


def parse_vars(values: tuple[str, ...]) -> dict[str, str]:
    """``--var name=value`` pairs."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected name=value, got {item!r}", param_hint="--var")
        out[name.strip()] = value
    return out


var_option = click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a playbook variable (repeatable). Also: RUNNER_VAR_NAME in the environment.",
)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@var_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: a machine-readable report on stdout.",
)
def validate(files: tuple[str, ...], variables: tuple[str, ...], output_format: str) -> None:
    """Check playbooks against the schema. No server is contacted."""
    from runner.commands import validate as command

    sys.exit(
        command.run(
            files,
            variables=parse_vars(variables),
            output_format=output_format,
            out=sys.stdout,
            err=sys.stderr,
        )
    )


@cli.command()
@click.option("--path", "show_path", is_flag=True, help="Print the schema file's path instead.")
def schema(show_path: bool) -> None:
    """Print the playbook JSON Schema for editors (yaml-language-server): ${name} is
    accepted wherever a value goes; runner validate checks the values once substituted."""
    from importlib import resources

    from runner.schema_gen import EDITOR_FILE

    ref = resources.files("runner").joinpath(EDITOR_FILE)
    if show_path:
        click.echo(str(ref))
    else:
        click.echo(ref.read_text("utf-8"), nl=False)


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
    help="markdown: for a PR comment or $GITHUB_STEP_SUMMARY; json: the versioned plan document.",
)
full_option = click.option("--full", is_flag=True, help="List every run, not the first 25 a step.")
max_bytes_option = click.option(
    "--max-bytes",
    type=click.IntRange(min=4096),
    help="With --format markdown: list runs only while the whole stays under this many bytes"
    " (GitHub's job summary takes 1 MiB a step); the rest is counted.",
)


def _check_max_bytes(max_bytes: int | None, fmt: str) -> None:
    if max_bytes is not None and fmt != "markdown":
        raise click.UsageError("--max-bytes goes with --format markdown")


def _colour() -> bool:
    import os

    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _run_command(call: Callable[[], int], *, json_errors: bool = False) -> None:
    """Run a command; the one place runner's errors become an exit code and a message (a
    playbook's problems one a line, anything else on one line). With ``json_errors`` (the
    command was given ``--format json``) the error is also a JSON document on stdout
    (:func:`runner.errors.error_document`), stderr as without it."""
    from runner.errors import PlaybookError, RunnerError, exit_code_for

    try:
        code = call()
    except PlaybookError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        _json_error(exc, json_errors)
        sys.exit(exit_code_for(exc))
    except RunnerError as exc:
        click.echo(f"runner: {exc}", err=True)
        _json_error(exc, json_errors)
        sys.exit(exit_code_for(exc))
    sys.exit(code)


def _json_error(exc: BaseException, wanted: bool) -> None:
    """The error as one line of JSON on stdout, when the command line asked for JSON."""
    if wanted:
        import json

        from runner.errors import EXIT_USAGE, error_document

        if isinstance(exc, click.UsageError):  # click's own words, as it shows them
            document: dict[str, object] = {
                "error": {"kind": "usage", "message": exc.format_message(), "exit_code": EXIT_USAGE}
            }
        else:
            document = error_document(exc)
        click.echo(json.dumps(document, ensure_ascii=False))


def _wants_json(args: list[str]) -> bool:
    """Whether a command line asks for ``--format json`` (read before, or without, click's
    parsing: a usage error is answered in JSON too)."""
    return any(
        arg == "--format=json" or (arg == "--format" and after == "json")
        for arg, after in zip(args, [*args[1:], ""], strict=True)
    )


@cli.command()
@click.argument("playbook", type=click.Path(dir_okay=False))
@var_option
@connection_options
@click.option("-o", "--out", "output", type=click.Path(dir_okay=False), help="Save the plan here.")
@format_option
@full_option
@max_bytes_option
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 2 when there are changes to make (0: none, 1: error), for CI gates.",
)
def plan(
    playbook: str,
    variables: tuple[str, ...],
    api_url: str | None,
    output: str | None,
    fmt: str,
    full: bool,
    max_bytes: int | None,
    detailed_exitcode: bool,
) -> None:
    """Show what PLAYBOOK would change, and optionally save the plan. Sends no write."""
    from runner.commands import plan as command

    _check_max_bytes(max_bytes, fmt)

    _run_command(
        lambda: command.run(
            playbook,
            variables=parse_vars(variables),
            settings=_settings(api_url),
            output=output,
            fmt=fmt,
            full=full,
            max_bytes=max_bytes,
            detailed_exitcode=detailed_exitcode,
            colour=_colour() and fmt == "text",
            out=sys.stdout,
        ),
        json_errors=fmt == "json",
    )


@cli.command()
@click.argument("target", required=False, type=click.Path(dir_okay=False))
@var_option
@connection_options
@click.option("--dry-run", is_flag=True, help="Plan and show the diff; send nothing.")
@click.option("-y", "--yes", is_flag=True, help="Apply without asking (needed off a terminal).")
@click.option("--rate", type=float, help="At most this many requests per second.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="At most this many in flight.")
@click.option(
    "--strategy",
    type=click.Choice(["auto", "bulk", "per-run"]),
    default="auto",
    show_default=True,
    help="Bulk routes or one request per run (auto picks per action).",
)
@click.option("--max-failures", type=click.IntRange(0), help="Stop after more failures than this.")
@click.option(
    "--max-fail-ratio", type=click.FloatRange(0, 1), help="Stop when this share of changes failed."
)
@click.option(
    "--resume",
    "resume",
    type=click.Path(exists=True),
    help="Resume the apply whose checkpoint (or its folder) this is.",
)
@click.option("--fresh", is_flag=True, help="Plan anew even if an earlier apply did not finish.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".runner",
    show_default=True,
    help="Where plans and checkpoints of applies are kept.",
)
@click.option(
    "--wait-for-lock",
    metavar="DURATION",
    help="When another apply of the playbook holds its server lock, wait up to this long"
    " (e.g. 10m) instead of failing at once.",
)
@click.option(
    "--no-server-lock",
    is_flag=True,
    help="Do not take the playbook's lock on the server (a Prefect global concurrency limit"
    " runner:<playbook>): only applies sharing --state-dir are then kept apart.",
)
@click.option(
    "--max-plan-age",
    default="1h",
    show_default=True,
    help="Refuse a saved plan older than this (a duration, or 'none').",
)
@click.option("--report", type=click.Path(dir_okay=False), help="Write the outcome per run here.")
@click.option(
    "--archive",
    type=click.Path(dir_okay=False),
    help="Archive the runs deletes remove to this gzip JSON Lines file, appending"
    " (default: archive.jsonl.gz in the apply's folder).",
)
@click.option(
    "--artifact",
    is_flag=True,
    help="Also store the summary in Prefect as a markdown artifact (key runner-<playbook>).",
)
@click.option(
    "--no-events",
    is_flag=True,
    help="Do not record the apply in Prefect's event feed (runner.apply.*, runner.flow-run.*"
    " events).",
)
@format_option
@full_option
@max_bytes_option
@click.option(
    "--detailed-exitcode", is_flag=True, help="With --dry-run: exit 2 when there are changes."
)
def apply(
    target: str | None,
    variables: tuple[str, ...],
    api_url: str | None,
    dry_run: bool,
    yes: bool,
    rate: float | None,
    concurrency: int | None,
    strategy: str,
    max_failures: int | None,
    max_fail_ratio: float | None,
    resume: str | None,
    fresh: bool,
    state_dir: str,
    wait_for_lock: str | None,
    no_server_lock: bool,
    max_plan_age: str,
    report: str | None,
    archive: str | None,
    artifact: bool,
    no_events: bool,
    fmt: str,
    full: bool,
    max_bytes: int | None,
    detailed_exitcode: bool,
) -> None:
    """Apply a playbook or a saved plan.json: plan, show the diff, confirm, apply.

    Interrupted or failed applies resume: run the same command again, or
    `runner apply --resume .runner/<plan-id>`.
    """
    from pathlib import Path

    if target is None and resume is None:
        raise click.UsageError("give a playbook or plan.json, or --resume CHECKPOINT")
    _check_max_bytes(max_bytes, fmt)
    if dry_run and artifact:
        raise click.UsageError("--artifact records an apply; for a dry run use --format markdown")
    if detailed_exitcode and not dry_run:
        raise click.UsageError(
            "--detailed-exitcode goes with --dry-run (or runner plan): an apply exits 0 when"
            " every change is made"
        )
    from runner.apply import ApplyRequest
    from runner.commands import apply as command

    if wait_for_lock is not None and (no_server_lock or dry_run):
        raise click.UsageError(
            "--wait-for-lock waits for the server lock, which "
            + ("--no-server-lock" if no_server_lock else "a dry run")
            + " does not take"
        )
    wait, age = _lock_wait_and_plan_age(wait_for_lock, max_plan_age)
    variable_values = parse_vars(variables)

    def request() -> ApplyRequest:  # inside _run_command: a bad setting is an error, exit 1
        return ApplyRequest(
            target=target or "",
            variables=variable_values,
            settings=_settings(api_url),
            options=_apply_options(rate, concurrency, strategy, max_failures, max_fail_ratio),
            state_dir=Path(state_dir),
            server_lock=not no_server_lock,
            wait_for_lock=wait,
            resume=resume,
            fresh=fresh,
            max_plan_age=age,
            report=report,
            archive=archive,
            artifact=artifact,
            events=not no_events,
            dry_run=dry_run,
            detailed_exitcode=detailed_exitcode,
            fmt=fmt,
            full=full,
            max_bytes=max_bytes,
            colour=_colour() and fmt == "text",
        )

    _run_command(
        lambda: command.run(
            request(),
            yes=yes,
            interactive=sys.stdin.isatty() and sys.stdout.isatty(),
            out=sys.stdout,
            err=sys.stderr,
        ),
        json_errors=fmt == "json",
    )


@cli.command()
@click.argument("applied", metavar="DIR", type=click.Path())
@connection_options
@click.option("--dry-run", is_flag=True, help="Make the undo plan and show it; send nothing.")
@click.option(
    "-o", "--out", "output", type=click.Path(dir_okay=False), help="Save the undo plan here."
)
@click.option("-y", "--yes", is_flag=True, help="Apply without asking (needed off a terminal).")
@click.option("--rate", type=float, help="At most this many requests per second.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="At most this many in flight.")
@click.option(
    "--strategy",
    type=click.Choice(["auto", "bulk", "per-run"]),
    default="auto",
    show_default=True,
    help="Bulk routes or one request per run (auto picks per action).",
)
@click.option("--max-failures", type=click.IntRange(0), help="Stop after more failures than this.")
@click.option(
    "--max-fail-ratio", type=click.FloatRange(0, 1), help="Stop when this share of changes failed."
)
@click.option("--fresh", is_flag=True, help="Plan anew even if an earlier undo did not finish.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=".runner",
    show_default=True,
    help="Where plans and checkpoints of applies (and undos) are kept.",
)
@click.option(
    "--wait-for-lock",
    metavar="DURATION",
    help="When another undo of the apply holds its server lock, wait up to this long.",
)
@click.option("--no-server-lock", is_flag=True, help="Do not take the undo's lock on the server.")
@click.option(
    "--max-plan-age",
    default="1h",
    show_default=True,
    help="Plan anew rather than resume an unfinished undo older than this (or 'none').",
)
@click.option("--report", type=click.Path(dir_okay=False), help="Write the outcome per run here.")
@click.option(
    "--allow-active",
    is_flag=True,
    help="Allow forcing a state on runs that are Pending, Running, Paused or Cancelling now.",
)
@click.option(
    "--max-affected",
    type=click.IntRange(0),
    help="Refuse an undo that would change more runs than this.",
)
@format_option
@full_option
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="With --dry-run or -o: exit 2 when there is something to undo.",
)
def undo(
    applied: str,
    api_url: str | None,
    dry_run: bool,
    output: str | None,
    yes: bool,
    rate: float | None,
    concurrency: int | None,
    strategy: str,
    max_failures: int | None,
    max_fail_ratio: float | None,
    fresh: bool,
    state_dir: str,
    wait_for_lock: str | None,
    no_server_lock: bool,
    max_plan_age: str,
    report: str | None,
    allow_active: bool,
    max_affected: int | None,
    fmt: str,
    full: bool,
    detailed_exitcode: bool,
) -> None:
    """Undo the apply in DIR (its .runner/<plan-id> folder, or its checkpoint).

    Makes a plan that puts back what the apply changed where it can be (a run
    rescheduled, cancelled before it started, given a state or tags), lists what
    cannot be with the reason, and applies it like any plan: each change only if
    the run is still exactly as the apply left it. An interrupted undo resumes:
    run the same command again.
    """
    from pathlib import Path

    from runner.apply import ApplyRequest
    from runner.commands import undo as command
    from runner.undo import UndoGuards

    if output is not None and dry_run:
        raise click.UsageError("-o saves the undo plan and sends nothing: drop --dry-run")
    if detailed_exitcode and not (dry_run or output):
        raise click.UsageError("--detailed-exitcode goes with --dry-run or -o")
    sends = not (dry_run or output)
    if wait_for_lock is not None and (no_server_lock or not sends):
        raise click.UsageError(
            "--wait-for-lock waits for the server lock, which "
            + ("--no-server-lock" if no_server_lock else "a dry run")
            + " does not take"
        )
    wait, age = _lock_wait_and_plan_age(wait_for_lock, max_plan_age)

    def request() -> ApplyRequest:
        return ApplyRequest(
            undo=applied,
            undo_guards=UndoGuards(allow_active=allow_active, max_affected=max_affected),
            settings=_settings(api_url),
            options=_apply_options(rate, concurrency, strategy, max_failures, max_fail_ratio),
            state_dir=Path(state_dir),
            server_lock=not no_server_lock,
            wait_for_lock=wait,
            fresh=fresh,
            max_plan_age=age,
            report=report,
            dry_run=dry_run,
            detailed_exitcode=detailed_exitcode,
            fmt=fmt,
            full=full,
            colour=_colour() and fmt == "text",
        )

    _run_command(
        lambda: command.run(
            request(),
            output=output,
            yes=yes,
            interactive=sys.stdin.isatty() and sys.stdout.isatty(),
            out=sys.stdout,
            err=sys.stderr,
        )
    )


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: the counts and every change's status on stdout.",
)
def status(checkpoint: str, fmt: str) -> None:
    """Done / drifted / failed / pending counts of an apply's checkpoint (or its folder).

    \b
    Exit codes:
      0  every change is finished (done, drifted or raced)
      1  a change failed or is still pending (runner apply --resume finishes
         it), or the checkpoint or its plan cannot be read
    """
    from runner.apply import status as command

    _run_command(lambda: command(checkpoint, fmt=fmt, out=sys.stdout), json_errors=fmt == "json")


@cli.command()
@click.argument("plan_file", metavar="PLAN_OR_ARCHIVE", type=click.Path(dir_okay=False))
@format_option
@full_option
@max_bytes_option
def show(plan_file: str, fmt: str, full: bool, max_bytes: int | None) -> None:
    """Render a saved plan, or list the runs in a delete archive (text or json)."""
    from runner.commands import show as command

    _check_max_bytes(max_bytes, fmt)
    _run_command(
        lambda: command.run(
            plan_file,
            fmt=fmt,
            full=full,
            max_bytes=max_bytes,
            colour=_colour() and fmt == "text",
            out=sys.stdout,
        ),
        json_errors=fmt == "json",
    )


@cli.command(name="ls")
@click.argument("playbook", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--select",
    metavar="YAML",
    help="List this selection instead: a step's select keys as YAML ('{state: {name: Late}}').",
)
@var_option
@connection_options
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="json: JSON Lines, one object a run; csv: a header, then a row a run.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Stop after N runs in all.")
def ls(
    playbook: str | None,
    select: str | None,
    variables: tuple[str, ...],
    api_url: str | None,
    fmt: str,
    limit: int | None,
) -> None:
    """List the runs each step of PLAYBOOK selects, as a plan would. Sends no write.

    Runs are written as they are read (a step with a limit: at its end, in its sort order).
    With --select, each --var defines a variable it can use as ${NAME}.
    """
    from runner.commands import ls as command

    if (playbook is None) == (select is None):
        raise click.UsageError("give a PLAYBOOK or --select YAML (one of them)")
    _run_command(
        lambda: command.run(
            playbook,
            select=select,
            variables=parse_vars(variables),
            settings=_settings(api_url),
            fmt=fmt,  # type: ignore[arg-type]
            limit=limit,
            out=sys.stdout,
            err=sys.stderr,
        ),
        json_errors=fmt == "json",
    )


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash:  eval "$(runner completion bash)"     (e.g. in ~/.bashrc)
    zsh:   eval "$(runner completion zsh)"      (e.g. in ~/.zshrc)
    fish:  runner completion fish > ~/.config/fish/completions/runner.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None  # every click.Choice value has a class
    click.echo(completer(cli, {}, "runner", "_RUNNER_COMPLETE").source())


def _configure_logging() -> None:
    """``RUNNER_LOG=debug|info|warning``: log requests (method, URL, status) to stderr.

    Every record on the way out (runner's, httpx's, httpcore's) passes through
    :class:`runner.redact.RedactingFilter`: no key, auth string, URL credentials,
    Authorization value or token in a query string is ever printed. Without ``RUNNER_LOG``,
    warnings are printed as Python's last-resort handler would, cleaned the same way."""
    import logging
    import os

    from runner.redact import RedactingFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    level = os.environ.get("RUNNER_LOG", "").upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    else:
        handler.setLevel(logging.WARNING)
        logging.basicConfig(level=logging.WARNING, handlers=[handler])


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")  # stopped as Ctrl-C is: exit 130, not 143


def main() -> None:
    """Console-script entry point."""
    import signal

    _configure_logging()
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        cli.main(prog_name="runner")
    except KeyboardInterrupt as exc:  # between commands' own handling and the exit
        click.echo(f"\nrunner: {str(exc) or 'SIGINT'}: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception:  # not a RunnerError: a bug in runner, never the input's fault
        import traceback

        traceback.print_exc()
        click.echo(
            f"runner: this is a bug in runner {__version__}, not a problem of your input:"
            " please report it with the traceback above",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    finally:
        signal.signal(signal.SIGTERM, previous)  # called in-process (tests): as it was


if __name__ == "__main__":
    main()
