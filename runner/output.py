"""Where runner writes (``-o``, ``--report``, ``--state-dir``): checked before anything is
sent to the server, so a path that cannot be written costs no request and changes nothing."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from runner.errors import OutputError


def check_folder(path: Path, option: str) -> None:
    """``path`` (made later if missing) can take new files: tried by making one in it, or in
    the nearest folder above it that exists."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {path}: {probe} is not a folder")
    _try_a_file_in(probe, f"{option} {path}")


def check_file(path: str, option: str, *, replaced: bool) -> None:
    """``path`` can be written: its folder exists and takes new files. With ``replaced`` (the
    file is written beside itself, then renamed over it) it must be a regular file if it
    exists; otherwise an existing file must be writable (``/dev/stdout`` is fine)."""
    target = Path(path)
    where = f"{option} {path}"
    if target.is_dir():
        raise OutputError(f"{where}: is a folder")
    folder = target.parent
    if not folder.exists():
        raise OutputError(f"{where}: no such folder: {folder}")
    if not folder.is_dir():
        raise OutputError(f"{where}: {folder} is not a folder")
    if replaced:
        if target.exists() and not target.is_file():
            raise OutputError(f"{where}: not a regular file (it would be replaced)")
        _try_a_file_in(folder, where)
    elif target.exists():
        if not os.access(target, os.W_OK):
            raise OutputError(f"{where}: cannot write: Permission denied")
    else:
        _try_a_file_in(folder, where)


def _try_a_file_in(folder: Path, where: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(
            f"{where}: cannot write in {folder}: {exc.strerror or type(exc).__name__}"
        ) from None
