"""The editor's schema, made from the loader's: ``${name}`` accepted wherever a value stands.

The loader checks a playbook after its variables are substituted, against the strict schema
(``runner/schema/playbook.schema.json``): there ``limit: ${keep}`` is already ``limit: 3``.
An editor sees the file as written, so the schema it is given (``playbook.editor.schema.json``,
``schemas/playbook.schema.json`` in the repository, printed by ``runner schema``) is the strict
one where every value that a variable could stand for, and that a reference would not fit
as text (a number, true/false, a constant, a choice, a pattern, a format), also takes a string
holding a ``${name}`` reference. Literal values are checked as strictly as before; the
substituted value is checked by ``runner validate``. Descriptions and examples stay where
they were, for hover and completion. ``vars`` and mapping keys are not substituted, and are
left alone.

After a change to the strict schema, write the editor's again::

    python -m runner.schema_gen            # writes runner/schema/playbook.editor.schema.json
    python -m runner.schema_gen --check    # exits 1 when the file is not what it would write

``tests/test_editor_schema.py`` fails while the committed file differs from the generated one.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

STRICT_FILE = "schema/playbook.schema.json"
EDITOR_FILE = "schema/playbook.editor.schema.json"

#: A string holding at least one reference the loader substitutes: ``${name}`` not escaped
#: (``$${name}`` is the text ``${name}``; ``$$${name}`` a ``$`` and then a reference).
#: The same in Python's ``re`` and in JavaScript (yaml-language-server).
REFERENCE_PATTERN = r"(?:^|[^$])(?:\$\$)*\$\{[A-Za-z_][A-Za-z0-9_]*\}"
REFERENCE_DEF = "variable_reference"
REFERENCE: Schema = {
    "type": "string",
    "pattern": REFERENCE_PATTERN,
    "description": "A value given by a variable: ${name} is replaced by the variable's value"
    " (its default in 'vars', --var name=value or RUNNER_VAR_name) before the playbook is"
    " checked; runner validate checks the value it becomes.",
}
EDITOR_ID_SUFFIX = ":editor"

#: Keywords whose value is one subschema, a list or a mapping of them. ``propertyNames`` is
#: left out on purpose: keys are never substituted.
_ONE = ("items", "additionalProperties", "contains", "not", "if", "then", "else")
_LIST = ("oneOf", "anyOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "dependentSchemas")
#: Kept on the outside of a wrapped value, for hover and completion.
_ANNOTATIONS = ("title", "description", "markdownDescription", "examples", "default", "deprecated")
#: What a variable's value can be (``vars`` in the strict schema).
_VARIABLE_TYPES = {"string", "integer", "number", "boolean"}
#: Constraints a ``${name}`` string would fail as text though its value may pass.
_CONSTRAINTS = ("enum", "const", "pattern", "format", "maxLength")


def strict_schema() -> Schema:
    """The loader's schema, as shipped with the package."""
    text = resources.files("runner").joinpath(STRICT_FILE).read_text("utf-8")
    return dict(json.loads(text))


def editor_schema(strict: Schema) -> Schema:
    """The editor's schema made from ``strict`` (which is not changed)."""
    if REFERENCE_DEF in strict.get("$defs", {}):
        raise ValueError(f"the strict schema already defines $defs/{REFERENCE_DEF}")
    root = copy.deepcopy(strict)
    variables = root.get("properties", {}).pop("vars", None)  # their values are not substituted
    out: Schema = _transform(root)
    if variables is not None:  # back in its place, as it was
        done = out["properties"]
        out["properties"] = {k: variables if k == "vars" else done[k] for k in strict["properties"]}
    out["$defs"] = {**out.get("$defs", {}), REFERENCE_DEF: dict(REFERENCE)}
    if "$id" in out:
        out["$id"] = str(out["$id"]) + EDITOR_ID_SUFFIX
    out["description"] = (
        str(out.get("description", "")).rstrip()
        + " (The editor's schema: a value may also be a ${name} variable reference, checked by"
        " runner validate once substituted.)"
    ).lstrip()
    for _, node in _subschemas(out, ""):
        message = _pattern_message(node)
        if message:
            node["patternErrorMessage"] = message  # yaml-language-server's, for the raw regex
        for key in [k for k in node if k.startswith("x-")]:
            del node[key]  # the loader's own keywords (x-errors, x-kind)
    _one_of_to_any_of(out)
    return out


def render(schema: Schema) -> str:
    """The file's text: as the strict schema is written (2 spaces, UTF-8, a final newline)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _transform(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = dict(node)
    for key in _ONE:
        # An ``if`` tests the literal value it names: a ``${name}`` there matches no branch
        # (the value is checked once substituted), so conditions are left as they are.
        if isinstance(node.get(key), dict) and key != "if":
            node[key] = _transform(node[key])
    for key in _LIST:
        if isinstance(node.get(key), list):
            node[key] = [_transform(item) for item in node[key]]
    for key in _MAP:
        if isinstance(node.get(key), dict):
            node[key] = {name: _transform(item) for name, item in node[key].items()}
    if not _takes_reference_as_is(node):
        outside = {k: v for k, v in node.items() if k in _ANNOTATIONS}
        inside = {k: v for k, v in node.items() if k not in _ANNOTATIONS}
        node = {**outside, "anyOf": [inside, {"$ref": f"#/$defs/{REFERENCE_DEF}"}]}
    return node


def _takes_reference_as_is(node: Schema) -> bool:
    """False for a value a variable could give that a ``${name}`` string does not pass."""
    types = node.get("type")
    allowed = set(
        _VARIABLE_TYPES if types is None else [types] if isinstance(types, str) else types
    )
    if not allowed & _VARIABLE_TYPES:
        return True  # a mapping or a list: no variable's value is one
    if types is None and not any(k in node for k in _CONSTRAINTS):
        return True  # no constraint on a scalar (a $ref, a oneOf: handled where they lead)
    return "string" in allowed and not any(k in node for k in _CONSTRAINTS)


def _one_of_to_any_of(schema: Schema) -> None:
    """A ``oneOf`` of which two branches now take ``${name}`` would refuse it: make it an
    ``anyOf``. Literal values match the branches they matched before, so only a oneOf whose
    branches overlap on purpose loses its exclusivity (the strict schema has none)."""
    import jsonschema
    from referencing import Registry, Resource

    probe = "${name}"
    uri = str(schema.get("$id", "urn:runner-schema-gen"))  # where its own "#/..." refs resolve
    while True:
        registry: Registry[Any] = Registry().with_resource(
            uri, Resource.from_contents(schema, default_specification=_draft())
        )
        changed = False
        for pointer, node in _subschemas(schema, ""):
            branches = node.get("oneOf")
            if not isinstance(branches, list):
                continue
            taking = [
                i
                for i in range(len(branches))
                if jsonschema.Draft202012Validator(
                    {"$ref": f"{uri}#{pointer}/oneOf/{i}"}, registry=registry
                ).is_valid(probe)
            ]
            if len(taking) > 1:
                node["anyOf"] = node.pop("oneOf")
                changed = True
                break  # pointers below have moved: look again
        if not changed:
            return


def _draft() -> Any:
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


def _pattern_message(node: Schema) -> str | None:
    """The loader's words for a value that does not match ``pattern``, without the value:
    ``{value} is not a duration (...)`` becomes ``Not a duration (...)``."""
    template = node.get("x-errors", {}).get("pattern")
    prefix = "{value} is "
    if "pattern" not in node or not isinstance(template, str) or not template.startswith(prefix):
        return None
    rest = template[len(prefix) :]
    return None if "{" in rest else rest[:1].upper() + rest[1:]


def _subschemas(node: Any, pointer: str) -> Iterator[tuple[str, Schema]]:
    """Every schema in ``node`` (itself included) with its JSON pointer, examples skipped."""
    if not isinstance(node, dict):
        return
    yield pointer, node
    for key in (*_ONE, "propertyNames"):
        yield from _subschemas(node.get(key), f"{pointer}/{key}")
    for key in _LIST:
        for index, item in enumerate(node.get(key) or ()):
            yield from _subschemas(item, f"{pointer}/{key}/{index}")
    for key in _MAP:
        for name, item in (node.get(key) or {}).items():
            yield from _subschemas(item, f"{pointer}/{key}/{_escape(name)}")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.schema_gen",
        description="Write the editor's playbook schema, made from the loader's.",
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the file differs; write nothing"
    )
    args = parser.parse_args(argv)
    target = Path(str(resources.files("runner").joinpath(EDITOR_FILE)))
    text = render(editor_schema(strict_schema()))
    current = target.read_text("utf-8") if target.exists() else None
    if args.check:
        if current != text:
            print(f"{target} is out of date: run python -m runner.schema_gen", file=sys.stderr)
            return 1
        return 0
    if current != text:
        target.write_text(text, encoding="utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
