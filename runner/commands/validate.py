"""``runner validate FILE...``: check playbooks without contacting any server."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TextIO

from runner.errors import PlaybookError, Problem
from runner.loader import load_playbook


def run(
    paths: Sequence[str],
    *,
    variables: Mapping[str, str],
    output_format: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """0 when every file is valid, 1 otherwise; every problem of every file is printed."""
    problems: list[Problem] = []
    valid: list[str] = []
    for path in paths:
        try:
            load_playbook(path, variables=variables)
        except PlaybookError as exc:
            problems += exc.problems
        else:
            valid.append(path)
    if output_format == "json":
        report = {
            "valid": not problems,
            "files": [
                {
                    "file": path,
                    "valid": path in valid,
                    "problems": [p.as_dict() for p in problems if p.file == path],
                }
                for path in paths
            ],
        }
        print(json.dumps(report, indent=2), file=out)
    else:
        for problem in problems:
            print(problem, file=err)
        for path in valid:
            print(f"{path}: ok", file=out)
        if problems:
            bad = len(paths) - len(valid)
            print(
                f"{bad} of {len(paths)} playbook{'s' if len(paths) != 1 else ''} invalid,"
                f" {len(problems)} problem{'s' if len(problems) != 1 else ''}",
                file=err,
            )
    return 1 if problems else 0
