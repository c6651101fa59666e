"""The one exception tree of runner.

::

    RunnerError
    ├── SettingsError            a connection setting is malformed
    ├── PlaybookError            a playbook failed to load (carries every Problem found)
    ├── SelectionError           a selection names what the server lacks, or the server
    │                            returned a run the selection does not match
    ├── PlanFileError            a saved plan cannot be used (unreadable, edited out of step
    │                            with itself, another server's, too old, breaks its guards)
    ├── CheckpointError          a checkpoint cannot be used (another plan's, locked)
    │   ├── CheckpointWriteError   it cannot be written (a full disk): the apply stops
    │   │   └── ArchiveWriteError    the delete archive cannot be written: the apply stops,
    │   │                            and the runs it was archiving are not deleted
    │   └── ArchiveError           a delete archive cannot be read or appended to (not an
    │                              archive, damaged, written by another apply right now)


    │   └── CheckpointWriteError   it cannot be written (a full disk): the apply stops
    ├── LockError                the server lock of a playbook is held by another apply,
    │                            cannot be taken as it is set up, or was lost
    ├── OutputError              a file or folder runner must write cannot be written
    └── APIError                 the Prefect API answered with an error, or not at all
        ├── Unreachable          no answer after the retries (names the URL, never a key)
        ├── Unauthorized         401/403 (with a hint about the API key or auth string)
        ├── NotFound             404 on something that must exist
        ├── InvalidRequest       400/409/422 (carries the server's detail)
        ├── ServerError          5xx or 429 still failing after the retries
        ├── UnsupportedByServer  the server lacks a route (bulk routes on old servers)
        └── OrchestrationRejected  the server refused a state change (carries the reason)

Messages never contain an API key, an auth string or URL credentials.

Any other exception is a bug in runner: the CLI shows its traceback and asks for a report
(:func:`exit_code_for` and ``runner.cli``); it is never passed off as a problem of the input.

Exit codes, for every command (:data:`EXIT_CODES`):

====  ==========================================================================
0     success, or nothing to change (``runner status``: every change is finished)
1     an error: invalid input, a guard refused the plan, a change failed or raced,
      the server failed (``runner status``: a change failed or is pending)
2     wrong usage; with ``--detailed-exitcode``, changes are pending
130   interrupted (Ctrl-C, SIGTERM) at any stage; an apply that had begun to write
      printed the resume command
====  ==========================================================================
"""

from __future__ import annotations

from typing import Any

from runner.redact import redact

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHANGES = 2
EXIT_INTERRUPTED = 130
#: Every exit code and its meaning (the table above, as data).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success, or nothing to change",
    EXIT_ERROR: "an error: invalid input, a refused plan, a failed or raced change",
    EXIT_USAGE: "wrong usage; with --detailed-exitcode, changes are pending",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGTERM); an apply that wrote printed how to resume",
}


class RunnerError(Exception):
    """Base class of every error runner raises on purpose."""

    #: What went wrong, in one word: ``{"error": {"kind": ...}}`` under ``--format json``.
    kind = "error"


class SelectionError(RunnerError):
    """A selection names something the server does not have (a deployment, say), or the
    server returned a run the selection does not match (a filter it ignored)."""

    kind = "selection"


class PlanFileError(RunnerError):
    """A saved plan cannot be used: unreadable, tampered, from another server, too old."""

    kind = "plan_file"


class CheckpointError(RunnerError):
    """A checkpoint cannot be used: another plan's, a newer format, locked by another apply."""

    kind = "checkpoint"


class CheckpointWriteError(CheckpointError):
    """The checkpoint cannot be written (a full disk, say): the apply must stop. What was
    written before stays; a resume redoes the rest."""

    kind = "checkpoint_write"


class ArchiveError(CheckpointError):
    """A delete archive cannot be read or appended to: not an archive, damaged before its
    end, a newer format, or being written by another apply."""

    kind = "archive"


class ArchiveWriteError(CheckpointWriteError):
    """The delete archive cannot be written (a full disk, say): the apply stops like a
    checkpoint write failure, and the runs whose records were not written are not deleted."""

    kind = "archive_write"


class LockError(RunnerError):
    """The server lock (:mod:`runner.lease`) cannot be had: another apply of the playbook
    holds it, its limit is set up otherwise than runner needs, or the lease was lost before
    anything was sent."""

    kind = "lock"


class SettingsError(RunnerError):
    """A connection setting (argument, environment variable or profile) is malformed."""

    kind = "settings"


class OutputError(RunnerError):
    """A file or folder runner must write (``-o``, ``--report``, ``--state-dir``) cannot be."""

    kind = "output"


class APIError(RunnerError):
    """The Prefect API answered with an error, or could not be reached."""

    kind = "api"

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status_code: int | None = None,
    ) -> None:
        # Built from server answers and URLs: cleaned of every secret form here, once.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = redact(url) if url is not None else None
        self.status_code = status_code

    def __str__(self) -> str:
        where = f"{self.method} {self.url}: " if self.method and self.url else ""
        return f"{where}{self.message}"


class Unreachable(APIError):
    """No answer from the server (connection refused, reset, timed out) after the retries."""

    kind = "unreachable"


class Unauthorized(APIError):
    """The server refused our credentials (401) or their permissions (403)."""

    kind = "unauthorized"


class NotFound(APIError):
    """The object asked for does not exist (404)."""

    kind = "not_found"


class InvalidRequest(APIError):
    """The server refused the request as malformed (400, 409, 422); ``detail`` is its reason."""

    kind = "invalid_request"

    def __init__(self, message: str, *, detail: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.detail = detail


class ServerError(APIError):
    """The server kept failing (5xx) or kept asking us to slow down (429) past the retries."""

    kind = "server_error"


class UnsupportedByServer(APIError):
    """The server does not have this route (for example the bulk routes before Prefect 3.6.16)."""

    kind = "unsupported_by_server"


class OrchestrationRejected(APIError):
    """Prefect's orchestration rules refused a state change; ``reason`` is the server's word."""

    kind = "orchestration_rejected"

    def __init__(self, message: str, *, status: str, reason: str | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status
        self.reason = reason


class Problem:
    """One thing wrong in a playbook, at ``file:line:column`` and a key path."""

    __slots__ = ("column", "file", "line", "message", "path")

    def __init__(self, *, file: str, line: int, column: int, path: str, message: str) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"Problem({self!s})"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class PlaybookError(RunnerError):
    """A playbook (or its variables) failed to load; ``problems`` lists every problem found."""

    kind = "playbook"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


def exit_code_for(exc: BaseException) -> int:
    """The one place an exception becomes an exit code. A :class:`RunnerError` is the
    input's or the server's; ``KeyboardInterrupt`` an interruption; anything else is a bug
    (the caller shows its traceback)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_ERROR


def error_document(exc: BaseException) -> dict[str, object]:
    """``exc`` as the JSON document a command given ``--format json`` writes on stdout:
    ``{"error": {"kind", "message", "exit_code"}}``, with ``problems`` (each at file, line,
    column and key path, as ``runner validate --format json`` gives them) for a playbook,
    ``status_code`` for an answer of the server. Never a key or auth string: the message is
    the one printed on stderr."""
    error: dict[str, object] = {
        "kind": getattr(exc, "kind", "error"),
        "message": str(exc),
        "exit_code": exit_code_for(exc),
    }
    if isinstance(exc, PlaybookError):
        error["problems"] = [p.as_dict() for p in exc.problems]
    if isinstance(exc, APIError) and exc.status_code is not None:
        error["status_code"] = exc.status_code
    return {"error": error}
