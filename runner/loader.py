"""Load a playbook: YAML -> variables -> JSON Schema -> semantic checks -> frozen objects.

Every problem in a file is reported at once, each with file, line, column, key path and what
was expected. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import unicodedata
from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from runner.errors import PlaybookError, Problem
from runner.playbook import (
    ACTION_TYPES,
    OBJECT_ACTION_TYPES,
    Action,
    Archive,
    Defaults,
    Delete,
    Exclusion,
    Guards,
    ObjectSelect,
    Playbook,
    Reschedule,
    Retry,
    RetryRuns,
    Select,
    SetState,
    StateSelect,
    Step,
    Tag,
    TagSelect,
    Window,
)
from runner.states import PREFECT_STATE_NAMES, StateType
from runner.timeexpr import TimeExpr, parse_duration, parse_time

KeyPath = tuple[str | int, ...]

MAX_NODES = 100_000  # a YAML alias bomb stops here
MAX_DEPTH = 64
#: The largest playbook file read; a larger one is refused before it is parsed.
MAX_PLAYBOOK_BYTES = 1024 * 1024
#: The longest name (and any other string but a description, a message or a variable's value).
MAX_NAME_LENGTH = 256
#: The longest description, message or variable value (and any string once variables are in).
MAX_TEXT_LENGTH = 4096
#: The most digits a whole number may have (Python refuses to read past 4,300).
MAX_INTEGER_DIGITS = 100
ENV_PREFIX = "RUNNER_VAR_"
_VAR_RE = re.compile(r"\$\$|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}
_TYPE_WORDS = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}

try:  # the C loader is ~10x faster where libyaml is present
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment,misc,unused-ignore]
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(value: Any) -> str:
    """How a value is named in an error: its text and its kind."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{_short(value)!r} (a string)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Source:
    """The file being loaded: its name and where each key and value stands in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[KeyPath, tuple[int, int]] = {}
        self.keys: dict[KeyPath, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.problem_paths: list[KeyPath] = []
        self.nodes = 0

    def where(self, path: KeyPath, *, key: bool = False) -> tuple[int, int]:
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def problem(self, path: KeyPath, message: str, *, key: bool = False) -> None:
        self.problem_at(self.where(path, key=key), path, message)

    def problem_at(self, at: tuple[int, int], path: KeyPath, message: str) -> None:
        line, column = at
        self.problem_paths.append(path)
        self.problems.append(
            Problem(
                file=self.name, line=line, column=column, path=format_path(path), message=message
            )
        )


# -- YAML ----------------------------------------------------------------------------------


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _construct(node: yaml.Node, path: KeyPath, src: _Source, depth: int = 0) -> Any:
    src.nodes += 1
    if src.nodes > MAX_NODES or depth > MAX_DEPTH:
        raise _TooLarge(node)
    src.values.setdefault(path, _mark(node))
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, path, src)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != "tag:yaml.org,2002:seq":
            src.problem(path, f"unsupported YAML tag {node.tag!r}")
        return [
            _construct(item, (*path, index), src, depth + 1)
            for index, item in enumerate(node.value)
        ]
    assert isinstance(node, yaml.MappingNode)
    if node.tag != "tag:yaml.org,2002:map":
        src.problem(path, f"unsupported YAML tag {node.tag!r}")
    result: dict[str, Any] = {}
    merged: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    src.problem(path, "a YAML merge (<<) takes a mapping or a list of mappings")
                    continue
                data = _construct(source, path, src, depth + 1)
                for k, v in data.items():
                    merged.setdefault(k, v)
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            src.problem_at(
                _mark(key_node), path, "a key must be a plain name, not a list or mapping"
            )
            continue
        key = str(key_node.value)
        key_path = (*path, key)
        if key in result:
            first_line = src.keys[key_path][0]
            src.problem_at(
                _mark(key_node), key_path, f"duplicate key {key!r} (first at line {first_line})"
            )
            continue
        src.keys[key_path] = _mark(key_node)
        result[key] = _construct(value_node, key_path, src, depth + 1)
    for k, v in merged.items():
        result.setdefault(k, v)
    return result


def _scalar(node: yaml.ScalarNode, path: KeyPath, src: _Source) -> Any:
    if node.tag not in _SCALAR_TAGS:
        src.problem(path, f"unsupported YAML tag {node.tag!r}")
        return node.value
    if node.tag in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:timestamp"):
        return node.value  # times are parsed by runner, not by YAML
    if _too_many_digits(node):
        src.problem(path, _TOO_MANY_DIGITS.format(count=_digits(node)))
        return None
    # The constructor function alone: construct_object would cache every node it sees.
    value = _SCALAR_CONSTRUCTOR.yaml_constructors[node.tag](_SCALAR_CONSTRUCTOR, node)
    if "parameters" in path[:-1] and not node.style and not _JSON_LIKE.fullmatch(node.value):
        # A parameter's value may be of any type, so no schema catches YAML 1.1's readings
        # of `no`, `on`, `012` or `12:30`: say what it became, and how to keep the text.
        src.problem(
            path,
            f"{node.value!r} reads as {describe(value)} in YAML: quote it"
            f" ('{node.value}') to mean the text",
        )
    if isinstance(value, float) and not math.isfinite(value):
        src.problem(path, f"expected a finite number, got {node.value}")
    return value


_SCALAR_CONSTRUCTOR = yaml.SafeLoader("")
#: Plain scalars YAML reads as JSON would (true, false, null, numbers without a leading 0).
_JSON_LIKE = re.compile(
    r"true|false|True|False|TRUE|FALSE|null|Null|NULL|~|"
    r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?"
)
_TOO_MANY_DIGITS = f"a whole number of {{count:,}} digits (at most {MAX_INTEGER_DIGITS})"


def _digits(node: yaml.ScalarNode) -> int:
    return sum(ch.isalnum() for ch in node.value)


def _too_many_digits(node: yaml.ScalarNode) -> bool:
    """A whole number too long to read: checked on the text, before Python converts it."""
    return node.tag == "tag:yaml.org,2002:int" and _digits(node) > MAX_INTEGER_DIGITS


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


#: ``${name}`` as written, and the same braces as characters YAML gives no meaning to (from
#: Unicode's private use area): ``{`` and ``}`` open and close a mapping in flow style.
_REFERENCE = re.compile(r"\$\{([^{}\n]*)\}")
_OPEN, _CLOSE = "\ue000", "\ue001"
_RESTORE = str.maketrans({_OPEN: "{", _CLOSE: "}"})
_ESCAPED = re.compile(r"\\(u|U0000)[eE]00[01]")  # a stand-in written as a YAML escape


def _hide_references(text: str) -> str | None:
    """``text`` with the braces of every ``${name}`` replaced, character for character, so
    that a reference inside a flow mapping or list (``end: {before: -${days}d}``) reads as
    part of a plain scalar rather than a mapping inside it; every line and column stays
    where it was. None when there is nothing to replace, or the text holds the stand-ins
    itself, or as an escape (it is then parsed as written)."""
    if "${" not in text or _OPEN in text or _CLOSE in text or _ESCAPED.search(text):
        return None
    hidden = _REFERENCE.sub(lambda m: f"${_OPEN}{m.group(1)}{_CLOSE}", text)
    return hidden if hidden != text else None


def _restore_references(root: yaml.Node) -> None:
    """Put back the braces :func:`_hide_references` replaced, in every scalar (keys too)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias: the node was restored where it was anchored
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            node.value = node.value.translate(_RESTORE)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


def _parse_yaml(text: str, src: _Source, at: KeyPath = ()) -> Any:
    hidden = _hide_references(text)
    try:
        node = yaml.compose(hidden or text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or exc.context or "invalid YAML"
        src.problems.append(
            Problem(
                file=src.name, line=line, column=column, path="", message=f"invalid YAML: {what}"
            )
        )
        return None
    except yaml.YAMLError as exc:
        src.problems.append(
            Problem(file=src.name, line=1, column=1, path="", message=f"invalid YAML: {exc}")
        )
        return None
    if node is None:
        src.problems.append(
            Problem(file=src.name, line=1, column=1, path="", message="the file is empty")
        )
        return None
    if hidden is not None:
        _restore_references(node)
    try:
        return _construct(node, at, src)
    except _TooLarge as exc:
        line, column = _mark(exc.node)
        src.problems.append(
            Problem(
                file=src.name,
                line=line,
                column=column,
                path="",
                message=f"too large or too deeply nested (over {MAX_NODES:,} values or"
                f" {MAX_DEPTH} levels, counting YAML aliases)",
            )
        )
        return None


# -- variables -----------------------------------------------------------------------------


def _parse_override(raw: str) -> str | int | float | bool:
    """A ``--var`` or ``RUNNER_VAR_`` value read as a YAML scalar (else kept as text);
    ValueError for a whole number of more than ``MAX_INTEGER_DIGITS`` digits."""
    try:
        node = yaml.compose(raw, Loader=_Loader)
    except yaml.YAMLError:
        return raw
    if isinstance(node, yaml.ScalarNode) and _too_many_digits(node):
        raise ValueError(_TOO_MANY_DIGITS.format(count=_digits(node)))
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, OverflowError):  # e.g. a date that does not exist
        return raw
    if isinstance(value, (str, int, float, bool)) and not (
        isinstance(value, float) and not math.isfinite(value)
    ):
        return value
    return raw


def _resolve_vars(
    data: dict[str, Any], overrides: Mapping[str, str], env: Mapping[str, str], src: _Source
) -> dict[str, Any]:
    declared = data.get("vars")
    if declared is None:
        declared = {}
    if not isinstance(declared, dict):
        return {}  # the schema reports it
    values = dict(declared)

    def override(name: str, raw: str, source: str) -> None:
        try:
            values[name] = _parse_override(raw)
        except ValueError as exc:
            src.problem(("vars",), f"{source}: {exc}", key=True)

    for name in declared:
        if f"{ENV_PREFIX}{name}" in env:
            override(name, env[f"{ENV_PREFIX}{name}"], f"{ENV_PREFIX}{name}")
    for name, raw in overrides.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            src.problem(
                ("vars",),
                f"--var {name}: no such variable in this playbook (variables: {known})",
                key=True,
            )
            continue
        override(name, raw, f"--var {name}")
    return values


def _substitute(value: Any, path: KeyPath, variables: Mapping[str, Any], src: _Source) -> Any:
    if isinstance(value, dict):
        return {
            k: (v if path == () and k == "vars" else _substitute(v, (*path, k), variables, src))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, (*path, i), variables, src) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    whole = _VAR_RE.fullmatch(value)
    if whole and whole.group(0) != "$$":
        name = whole.group(1)
        return _lookup(name, path, variables, src, value)

    length = [len(value)]

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        text = str(_lookup(match.group(1), path, variables, src, value))
        length[0] += len(text) - len(match.group(0))
        if length[0] > MAX_TEXT_LENGTH:  # ${a}${a}${a}... must not grow without bound
            raise _TooLong
        return text

    try:
        return _VAR_RE.sub(replace, value)
    except _TooLong:
        src.problem(
            path, f"too long once its variables are in (over {MAX_TEXT_LENGTH:,} characters)"
        )
        return value


class _TooLong(Exception):
    pass


#: Strings that may hold tabs and line breaks, and be up to ``MAX_TEXT_LENGTH`` long.
_TEXT_KEYS = frozenset({"description", "message"})
_LINE_BREAKS = "\t\n\r"


def _check_strings(value: Any, path: KeyPath, src: _Source, skip: set[KeyPath]) -> None:
    """Lengths and control characters of every string, after variables are substituted.

    A name (every string but a description, a message or a variable's value) is at most
    ``MAX_NAME_LENGTH`` characters, with no control character (tab and line breaks included);
    those texts are at most ``MAX_TEXT_LENGTH`` and may hold tabs and line breaks. Strings
    at a path in ``skip`` already have a problem (an undefined variable, say).
    """
    if isinstance(value, dict):
        for key, item in value.items():
            _check_strings(item, (*path, key), src, skip)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, (*path, index), src, skip)
    elif isinstance(value, str) and path not in skip:
        text = path[:1] == ("vars",) or (bool(path) and path[-1] in _TEXT_KEYS)
        limit = MAX_TEXT_LENGTH if text else MAX_NAME_LENGTH
        if len(value) > limit:
            what = "text" if text else "name"
            src.problem(
                path, f"too long: {len(value):,} characters (a {what} takes at most {limit:,})"
            )
            return
        for position, char in enumerate(value, 1):
            if text and char in _LINE_BREAKS:
                continue
            if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
                allowed = (
                    "tabs and line breaks are allowed, other control characters are not"
                    if text
                    else "a name cannot hold tabs, line breaks or other control characters"
                )
                src.problem(path, f"{_char_name(char)} at character {position}: {allowed}")
                return


def _char_name(char: str) -> str:
    names = {"\t": "a tab", "\n": "a line break", "\r": "a carriage return"}
    return names.get(char, f"the control character U+{ord(char):04X}")


def _lookup(name: str, path: KeyPath, variables: Mapping[str, Any], src: _Source, text: str) -> Any:
    if not _VAR_NAME.match(name):
        src.problem(path, f"{'${' + name + '}'!r} is not a variable reference (write ${{name}})")
        return text
    if name not in variables:
        known = ", ".join(sorted(variables))
        where = f"variables: {known}" if known else "this playbook defines no variables"
        close = difflib.get_close_matches(name, list(variables), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        src.problem(path, f"undefined variable {name!r} ({where}){hint}")
        return text
    return variables[name]


# -- schema --------------------------------------------------------------------------------


def schema_text() -> str:
    """The loader's strict JSON Schema, as shipped with the package: values as they are once
    variables are in. Editors get the one :mod:`runner.schema_gen` makes from it."""
    return resources.files("runner").joinpath("schema/playbook.schema.json").read_text("utf-8")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return dict(json.loads(schema_text()))


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    checker = jsonschema.FormatChecker(formats=["uuid"])
    return jsonschema.Draft202012Validator(schema(), format_checker=checker)


def _schema_problems(data: Any, src: _Source, *, skip: set[KeyPath]) -> None:
    for error in _validator().iter_errors(data):
        for path, message, at_key in _explain(error):
            if path not in skip:
                src.problem(path, message, key=at_key)


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _branch_accepts(branch: dict[str, Any], kind: str) -> bool:
    types = branch.get("type")
    if types is None:
        return True
    allowed = {types} if isinstance(types, str) else set(types)
    return kind in allowed or (kind == "integer" and "number" in allowed)


def _explain(error: Any) -> list[tuple[KeyPath, str, bool]]:
    """Our words for one jsonschema error: [(path, message, points at a key)]."""
    path: KeyPath = tuple(error.absolute_path)
    value = error.instance
    schema_node: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    custom: dict[str, str] = schema_node.get("x-errors", {})
    kind_name = schema_node.get("x-kind")
    validator = error.validator

    if validator in ("oneOf", "anyOf") and error.context:
        kind = _kind_of(value)
        branches = schema_node[validator]
        fitting = [i for i, b in enumerate(branches) if _branch_accepts(b, kind)]
        if fitting:
            chosen = [e for e in error.context if e.schema_path and e.schema_path[0] == fitting[0]]
            out: list[tuple[KeyPath, str, bool]] = []
            for sub in chosen:
                out += _explain(sub)
            if out:
                return out
        if "type" in custom:
            return [(path, custom["type"].format(value=repr(value), got=describe(value)), False)]
        return [(path, f"unexpected {describe(value)}", False)]

    if validator in custom:
        count = len(value) if isinstance(value, (dict, list)) else 0
        text = custom[validator].format(value=repr(value), got=describe(value), count=count)
        return [(path, text, False)]

    if validator == "additionalProperties":
        allowed = sorted(schema_node.get("properties", {}))
        out = []
        for key in value:
            if key in schema_node.get("properties", {}):
                continue
            noun = kind_name or "key"
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if noun == "exclusion key" and key in ("sort", "limit", "exclude"):
                message = f"{key!r} has no place in an exclusion (it takes selection keys only)"
            elif close:
                message = f"unknown {noun} {key!r}; did you mean {close[0]!r}?"
            elif allowed:
                message = f"unknown {noun} {key!r} (expected one of: {', '.join(allowed)})"
            else:
                message = f"unexpected key {key!r}: this takes no parameters"
            out.append(((*path, key), message, True))
        return out
    if validator == "required":
        missing = error.validator_value
        keys = [k for k in missing if isinstance(value, dict) and k not in value]
        return [(path, f"missing required key {key!r}", False) for key in keys]
    if validator == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        words = " or ".join(_TYPE_WORDS.get(n, n) for n in names if n != "null")
        return [(path, f"expected {words}, got {describe(value)}", False)]
    if validator == "enum":
        options = ", ".join(str(o) for o in error.validator_value)
        noun = kind_name or "value"
        close = difflib.get_close_matches(str(value), [str(o) for o in error.validator_value], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if noun == "action" and value == "pause":
            hint = "; pause is for deployments, work pools and work queues (target: deployments)"
        elif noun == "action" and set(error.validator_value) == {"pause", "resume"}:
            hint = (
                "; a step with a target (deployments, work pools, work queues) only pauses"
                " or resumes"
            )
        return [
            (
                path,
                f"unknown {noun} {_short(str(value))!r} (expected one of: {options}){hint}",
                False,
            )
        ]
    if validator == "const":
        return [(path, f"expected {error.validator_value!r}, got {describe(value)}", False)]
    if validator == "minimum":
        return [(path, f"must be at least {error.validator_value}, got {value!r}", False)]
    if validator == "maximum":
        return [(path, f"must be at most {error.validator_value}, got {value!r}", False)]
    if validator == "exclusiveMinimum":
        return [(path, f"must be more than {error.validator_value}, got {value!r}", False)]
    if validator == "minLength":
        return [(path, "must not be empty", False)]
    if validator == "minItems":
        return [(path, "must not be an empty list", False)]
    if validator == "uniqueItems":
        return [(path, "lists the same item twice", False)]
    if validator == "format":
        return [(path, f"{_short(str(value))!r} is not a {error.validator_value.upper()}", False)]
    if validator == "pattern":
        return [(path, f"{_short(str(value))!r} does not match {error.validator_value}", False)]
    return [(path, error.message, False)]


# -- semantic checks and the typed objects -------------------------------------------------


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _duration(raw: str | None, path: KeyPath, src: _Source) -> timedelta | None:
    if raw is None:
        return None
    try:
        return parse_duration(raw)
    except ValueError as exc:
        src.problem(path, str(exc))
        return None


def _time(raw: str | None, path: KeyPath, src: _Source) -> TimeExpr | None:
    if raw is None:
        return None
    try:
        return parse_time(raw)
    except ValueError as exc:
        src.problem(path, str(exc))
        return None


def _retry(raw: dict[str, Any] | None, path: KeyPath, src: _Source) -> Retry | None:
    if raw is None:
        return None
    base = Retry()
    backoff = _duration(raw.get("backoff"), (*path, "backoff"), src)
    max_backoff = _duration(raw.get("max_backoff"), (*path, "max_backoff"), src)
    return Retry(
        max_attempts=raw.get("max_attempts", base.max_attempts),
        backoff=backoff if backoff is not None else base.backoff,
        max_backoff=max_backoff if max_backoff is not None else base.max_backoff,
    )


def _guards(raw: dict[str, Any] | None) -> Guards | None:
    if raw is None:
        return None
    expect = raw.get("expect", "any")
    return Guards(**{**raw, "expect": tuple(_names(expect))})


def _window(raw: dict[str, Any] | None, path: KeyPath, src: _Source) -> Window | None:
    if raw is None:
        return None
    before = _time(raw.get("before"), (*path, "before"), src)
    after = _time(raw.get("after"), (*path, "after"), src)
    if before is not None and after is not None:
        # Relative times share one `now`, so they compare by offset; absolute ones by value.
        same_kind = (before.absolute is None) == (after.absolute is None)
        if same_kind and (
            (
                before.absolute is not None
                and after.absolute is not None
                and before.absolute < after.absolute
            )
            or (
                before.offset is not None
                and after.offset is not None
                and before.offset < after.offset
            )
        ):
            src.problem(
                path, f"'before' ({before}) is earlier than 'after' ({after}): no run can match"
            )
    return Window(before=before, after=after)


def _state_names(raw: Any, path: KeyPath, src: _Source, custom: bool) -> tuple[str, ...]:
    """The names, each checked against Prefect's own unless ``custom`` allows others."""
    names = _names(raw)
    if custom:
        return names
    for index, name in enumerate(names):
        if name in PREFECT_STATE_NAMES:
            continue
        at = path if isinstance(raw, str) else (*path, index)
        folded = {n.lower(): n for n in PREFECT_STATE_NAMES}
        close = [folded[name.lower()]] if name.lower() in folded else []
        close = close or difflib.get_close_matches(name, PREFECT_STATE_NAMES, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        src.problem(
            at,
            f"{_short(name)!r} is not a Prefect state name{hint} (a name your code sets:"
            " add custom: true to the state selection)",
        )
    return names


def _parameters(raw: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((raw or {}).items()))


def _select(raw: dict[str, Any], path: KeyPath, src: _Source, *, top: bool = True) -> Select:
    state = raw.get("state")
    tags = raw.get("tags")
    if top and raw.get("limit") is not None and raw.get("sort") is None:
        src.problem(
            (*path, "limit"), "'limit' needs a 'sort' (which runs are the first N depends on it)"
        )
    spath = (*path, "state")
    custom = bool(state.get("custom")) if state else False
    if state and not set(state) - {"custom"}:
        src.problem(
            spath,
            "a state selection needs 'type', 'name', 'not_type', 'not_name' or 'since'"
            " ('custom' alone matches every state)",
        )
    return Select(
        state=StateSelect(
            type=tuple(StateType(t) for t in _names(state.get("type"))),
            name=_state_names(state.get("name"), (*spath, "name"), src, custom),
            not_type=tuple(StateType(t) for t in _names(state.get("not_type"))),
            not_name=_state_names(state.get("not_name"), (*spath, "not_name"), src, custom),
            since=_window(state.get("since"), (*spath, "since"), src),
            custom=custom,
        )
        if state
        else None,
        flows=_names(raw.get("flows")),
        deployments=_names(raw.get("deployments")),
        deployment_ids=tuple(UUID(i) for i in raw.get("deployment_ids", ())),
        deployment_like=raw.get("deployment_like"),
        tags=TagSelect(
            all=_names(tags.get("all")), any=_names(tags.get("any")), none=_names(tags.get("none"))
        )
        if tags
        else None,
        work_pools=_names(raw.get("work_pools")),
        work_queues=_names(raw.get("work_queues")),
        name_like=raw.get("name_like"),
        parent=raw.get("parent", "any"),
        parent_id=tuple(UUID(i) for i in _names(raw.get("parent_id"))),
        expected_start=_window(raw.get("expected_start"), (*path, "expected_start"), src),
        start=_window(raw.get("start"), (*path, "start"), src),
        end=_window(raw.get("end"), (*path, "end"), src),
        next_scheduled_start=_window(
            raw.get("next_scheduled_start"), (*path, "next_scheduled_start"), src
        ),
        created=_window(raw.get("created"), (*path, "created"), src),
        parameters=_parameters(raw.get("parameters")),
        sort=raw.get("sort"),
        limit=raw.get("limit"),
        exclude=_exclusions(raw.get("exclude"), (*path, "exclude"), src) if top else (),
    )


def _exclusions(raw: Any, path: KeyPath, src: _Source) -> tuple[Exclusion, ...]:
    """A mapping: one exclusion per key; a list: one exclusion per item (all its keys)."""
    if raw is None:
        return ()
    if isinstance(raw, dict):
        parts = [(f"exclude.{key}", (*path, key), {key: value}) for key, value in raw.items()]
    else:
        parts = [(f"exclude[{i}]", (*path, i), item) for i, item in enumerate(raw)]
    exclusions = []
    for label, at, keys in parts:
        select = _select(keys, path if isinstance(raw, dict) else at, src, top=False)
        if not select.keys():
            src.problem(at, "this exclusion matches every run (parent: any narrows nothing)")
        exclusions.append(Exclusion(label=label, select=select))
    return tuple(exclusions)


def _object_select(raw: dict[str, Any], path: KeyPath, src: _Source) -> ObjectSelect:
    """A deployment, work pool or work queue step's ``select`` (the schema allowed only the
    keys its target has)."""
    tags = raw.get("tags")
    return ObjectSelect(
        names=_names(raw.get("names")),
        flows=_names(raw.get("flows")),
        tags=TagSelect(
            all=_names(tags.get("all")), any=_names(tags.get("any")), none=_names(tags.get("none"))
        )
        if tags
        else None,
        work_pools=_names(raw.get("work_pools")),
        work_queues=_names(raw.get("work_queues")),
        types=_names(raw.get("types")),
        paused=raw.get("paused"),
        exclude=_names(raw.get("exclude")),
    )


def _object_action(raw: Any) -> Action:
    name = raw if isinstance(raw, str) else next(iter(raw))
    return OBJECT_ACTION_TYPES[name]()


_NEEDS_PARAMETERS = {
    "set_state": "set_state: {type: FAILED}",
    "reschedule": "reschedule: {delay: 6h}",
    "tag": "tag: {add: [reviewed]}",
}


def _action(raw: Any, path: KeyPath, src: _Source) -> Action | None:
    if isinstance(raw, str):
        if raw in _NEEDS_PARAMETERS:
            src.problem(path, f"{raw!r} needs parameters, e.g. `{_NEEDS_PARAMETERS[raw]}`")
            return None
        name, params = raw, {}
    else:
        ((name, params),) = raw.items()
        params = params or {}
    apath = (*path, name)
    if name == "reschedule":
        if ("delay" in params) == ("at" in params):
            src.problem(apath, "reschedule needs exactly one of 'delay' or 'at'")
            return None
        if "from" in params and "delay" not in params:
            src.problem(
                (*apath, "from"),
                "'from' says what 'delay' counts from; with 'at', every run goes to that time",
                key=True,
            )
        return Reschedule(
            delay=_duration(params.get("delay"), (*apath, "delay"), src),
            at=_time(params.get("at"), (*apath, "at"), src),
            from_=params.get("from", "scheduled"),
            spread=_duration(params.get("spread"), (*apath, "spread"), src),
            allow_past=params.get("allow_past", False),
            strategy=params.get("strategy", "in_place"),
            message=params.get("message"),
        )
    if name == "retry":
        return RetryRuns(
            delay=_duration(params.get("delay"), (*apath, "delay"), src),
            message=params.get("message"),
        )
    if name == "tag":
        add, remove = _names(params.get("add")), _names(params.get("remove"))
        both = sorted(set(add) & set(remove))
        if both:
            src.problem(apath, f"tags both added and removed: {', '.join(both)}")
        return Tag(add=add, remove=remove)
    if name == "delete":
        archive = params.get("archive", True)
        if archive is False:
            return Delete(archive=None)
        options = archive if isinstance(archive, dict) else {}  # true, or null: the defaults
        return Delete(archive=Archive(logs=options.get("logs", False)))
    if name == "set_state":
        return SetState(
            type=StateType(params["type"]),
            name=params.get("name"),
            message=params.get("message"),
            force=params.get("force", False),
        )
    return ACTION_TYPES[name](**params)


def _clean(faulty: set[KeyPath], prefix: KeyPath) -> bool:
    """True when no problem was found at or below ``prefix``."""
    return not any(p[: len(prefix)] == prefix for p in faulty)


def _duplicate_step_names(raw_steps: list[Any], src: _Source, *, faulty: set[KeyPath]) -> None:
    """Two steps of one name, found whatever else is wrong in either (every problem at once)."""
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_steps):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not _clean(faulty, ("steps", index, "name")):
            continue
        if name in seen:
            src.problem(
                ("steps", index, "name"), f"duplicate step name {name!r} (also steps[{seen[name]}])"
            )
        seen.setdefault(name, index)


def _build(
    data: dict[str, Any], name: str, src: _Source, *, faulty: set[KeyPath]
) -> Playbook | None:
    defaults: Defaults | None = None
    if _clean(faulty, ("defaults",)) and isinstance(data.get("defaults") or {}, dict):
        raw_defaults = data.get("defaults") or {}
        retry = _retry(raw_defaults.get("retry"), ("defaults", "retry"), src)
        defaults = Defaults(
            concurrency=raw_defaults.get("concurrency", Defaults().concurrency),
            rate_limit=raw_defaults.get("rate_limit"),
            retry=retry or Retry(),
            message=raw_defaults.get("message", Defaults().message),
        )
    steps: list[Step] = []
    raw_steps = data.get("steps") if isinstance(data.get("steps"), list) else []
    _duplicate_step_names(raw_steps or [], src, faulty=faulty)
    for index, raw in enumerate(raw_steps or []):
        path: KeyPath = ("steps", index)
        if not _clean(faulty, path) or not isinstance(raw, dict):
            continue
        target = raw.get("target", "flow_runs")
        objects: ObjectSelect | None = None
        if target == "flow_runs":
            action = _action(raw["action"], (*path, "action"), src)
            select = _select(raw["select"], (*path, "select"), src)
        else:
            action = _object_action(raw["action"])
            select = Select()
            objects = _object_select(raw["select"] or {}, (*path, "select"), src)
        step_retry = _retry(raw.get("retry"), (*path, "retry"), src)
        if action is None:
            continue
        steps.append(
            Step(
                name=raw["name"],
                select=select,
                action=action,
                target=target,
                objects=objects,
                concurrency=raw.get("concurrency"),
                rate_limit=raw.get("rate_limit"),
                retry=step_retry,
                guards=_guards(raw.get("guards")),
            )
        )
    if src.problems or defaults is None:
        return None
    return Playbook(
        version=1,
        name=data.get("name") or name,
        description=data.get("description"),
        vars=data.get("vars") or {},
        defaults=defaults,
        guards=_guards(data.get("guards")) or Guards(),
        steps=tuple(steps),
    )


# -- the one load function -----------------------------------------------------------------


def load_playbook(
    path: str | os.PathLike[str],
    *,
    variables: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Playbook:
    """Read, validate and freeze one playbook file; :class:`PlaybookError` lists every problem.

    ``variables`` are ``--var`` overrides (strings, read as YAML scalars); ``env`` is where
    ``RUNNER_VAR_<name>`` overrides are looked up (default: ``os.environ``).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            raw = handle.read(MAX_PLAYBOOK_BYTES + 1)  # never more, whatever the file holds
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PlaybookError(
            [Problem(file=name, line=1, column=1, path="", message=f"cannot read: {reason}")]
        ) from None
    if len(raw) > MAX_PLAYBOOK_BYTES:
        raise PlaybookError([_too_large(name)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlaybookError(
            [Problem(file=name, line=1, column=1, path="", message=f"not UTF-8 text: {exc.reason}")]
        ) from None
    playbook = load_text(
        text, name=name, variables=variables, env=env, default_name=Path(name).stem
    )
    return dataclasses.replace(playbook, digest="sha256:" + hashlib.sha256(raw).hexdigest())


def _too_large(name: str) -> Problem:
    return Problem(
        file=name,
        line=1,
        column=1,
        path="",
        message=f"too large: a playbook is at most {MAX_PLAYBOOK_BYTES // 1024 // 1024} MiB"
        f" ({MAX_PLAYBOOK_BYTES:,} bytes)",
    )


def load_text(
    text: str,
    *,
    name: str = "<string>",
    variables: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    default_name: str = "playbook",
) -> Playbook:
    """Like :func:`load_playbook`, from a string."""
    src = _Source(name)
    if len(text) > MAX_PLAYBOOK_BYTES:
        raise PlaybookError([_too_large(name)])
    data = _parse_yaml(text, src)
    if not src.problems and not isinstance(data, dict):
        src.problem((), f"a playbook is a mapping (version, steps, ...), got {describe(data)}")
    if src.problems or data is None:
        raise PlaybookError(src.problems)
    playbook = _load_data(
        data, src, variables or {}, os.environ if env is None else env, default_name
    )
    digest = "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return dataclasses.replace(playbook, path=name, digest=digest)


def _load_data(
    data: dict[str, Any],
    src: _Source,
    variables: Mapping[str, str],
    env: Mapping[str, str],
    default_name: str,
) -> Playbook:
    """The parsed YAML of a playbook -> variables -> schema -> semantic checks -> frozen."""
    values = _resolve_vars(data, variables, env, src)
    data = _substitute(data, (), values, src)
    _check_strings(data, (), src, skip=set(src.problem_paths))
    # Report everything at once: the schema skips what a variable problem already explains,
    # and the semantic checks run on every part the schema found no fault in.
    _schema_problems(data, src, skip={p for p in src.problem_paths})
    data["vars"] = values
    try:
        playbook = _build(data, default_name, src, faulty=set(src.problem_paths))
    except (ValueError, TypeError, KeyError, AttributeError):
        if not src.problems:
            raise  # a bug in runner, not a problem of the playbook: never passed off as one
        playbook = None  # a part the problems found already explain
    if playbook is None or src.problems:
        raise PlaybookError(src.problems)
    positions = {format_path(p): at for p, at in src.values.items() if p[:1] == ("steps",)}
    return dataclasses.replace(playbook, path=src.name, positions=positions)


#: The option an ad-hoc selection is given with: where its problems are said to be.
SELECT_OPTION = "--select"
#: Where an ad-hoc selection stands in the one-step playbook it is loaded as.
_SELECT_AT: KeyPath = ("steps", 0, "select")


def load_select(
    text: str, *, variables: Mapping[str, str] | None = None, option: str = SELECT_OPTION
) -> Playbook:
    """An ad-hoc selection (``runner ls --select '{state: {name: Late}, flows: etl}'``): the
    keys of a step's ``select`` as YAML, checked by the same schema and semantic checks.

    Returns a playbook of one step, both named ``option``, whose action changes nothing (a
    tag action that adds and removes no tag): it is there to be listed. ``variables``
    (``--var``) are its variables, each usable as ``${name}``. A :class:`PlaybookError`'s
    problems name ``option`` and the selection key (``--select:1:17: state.name: ...``);
    :func:`select_error` says a problem found later (an unknown flow) the same way.
    """
    src = _Source(option)
    if len(text) > MAX_PLAYBOOK_BYTES:
        raise select_error([_too_large(option)])
    if not text.strip():
        src.problem((), "an empty selection: give its keys, e.g. '{state: {name: Late}}'")
        raise select_error(src.problems)
    raw = _parse_yaml(text, src, at=_SELECT_AT)
    if not src.problems and not isinstance(raw, dict):
        src.problem(
            _SELECT_AT, f"a selection is a mapping (state, flows, ...), got {describe(raw)}"
        )
    if src.problems or raw is None:
        raise select_error(src.problems)
    declared = dict(variables or {})
    data = {
        "version": 1,
        "name": option,
        "vars": declared,
        "steps": [{"name": option, "select": raw, "action": "resume"}],
    }
    try:
        playbook = _load_data(data, src, declared, {}, option)
    except PlaybookError as exc:
        raise select_error(exc.problems) from None
    (step,) = playbook.steps
    return dataclasses.replace(playbook, steps=(dataclasses.replace(step, action=Tag()),))


def select_error(problems: list[Problem]) -> PlaybookError:
    """Problems of an ad-hoc selection (:func:`load_select`), each at the selection key
    (``state.name``) rather than where the selection stands in its one-step playbook."""
    prefix = format_path(_SELECT_AT)

    def key(path: str) -> str:
        if path == "vars" or path == prefix:
            return ""
        return path.removeprefix(prefix + ".") if path.startswith(prefix + ".") else path

    return PlaybookError(
        [
            Problem(
                file=p.file,
                line=p.line,
                column=p.column,
                path=key(p.path),
                message=p.message.replace("this playbook defines no variables", "no --var given"),
            )
            for p in problems
        ]
    )
