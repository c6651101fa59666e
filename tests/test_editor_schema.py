"""The editor's schema (``schemas/playbook.schema.json``, printed by ``runner schema``).

It is made from the loader's strict schema by ``runner.schema_gen`` and must take ``${name}``
wherever the loader substitutes one, while checking literal values as strictly as the loader.
Checked here: the committed file is the generated one; schema against schema at every
subschema; loader against editor schema on every example playbook and every playbook snippet
of the docs (the ``jsonschema`` package, Draft 2020-12); and the real yaml-language-server,
driven over LSP as an editor drives it, on the same documents.

Which ```yaml snippets of README.md and docs/*.md are checked (the rule):

- a block with ``version`` or ``steps`` at its top is a playbook; one showing steps only is
  given ``version: 1``;
- a block of a step's keys only (``action:`` alone, say) is wrapped into a one-step playbook
  (``name: snippet`` and ``select: {}`` unless it has its own);
- every checked block is given the schema line when it has none, and is opened as if it were
  in ``playbooks/`` (where the docs' schema line points from);
- any other block (the schema line shown alone, a pre-commit config) is not a playbook and
  must be listed in ``NOT_PLAYBOOKS``, so that no new snippet is left out unnoticed.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from runner import loader, schema_gen
from runner.errors import PlaybookError
from tests.support import yaml_ls

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "playbooks").glob("*.yaml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCHEMA_LINE = "# yaml-language-server: $schema=../schemas/playbook.schema.json"
#: The ```yaml blocks that are not playbooks: (file, first line).
NOT_PLAYBOOKS = {
    ("docs/playbooks.md", SCHEMA_LINE),
    ("docs/ci.md", SCHEMA_LINE),
    ("docs/ci.md", "# .pre-commit-config.yaml"),
    ("docs/events.md", "# runner-apply-failed.yaml"),
    ("docs/ci.md", "# prefect.yaml"),
}
STRICT = schema_gen.strict_schema()
EDITOR = json.loads((ROOT / "schemas" / "playbook.schema.json").read_text())

#: A playbook that breaks the schema three ways, each line the editor and the loader flag.
BROKEN = f"""{SCHEMA_LINE}
version: 1
vars:
  keep: 3
steps:
  - name: a literal that is not a number
    select:
      sort: NAME_ASC
      limit: many
      limmit: 3
    action: delete
  - name: an escaped reference is text, not a reference
    select:
      sort: NAME_ASC
      limit: $${{keep}}
    action: delete
"""
BROKEN_LINES = {9: "limit", 10: "limmit", 15: "limit"}  # 1-based line -> the key there


@dataclass(frozen=True)
class Document:
    """A whole playbook as an editor would open it."""

    label: str
    text: str
    path: Path  # where it is opened (an example's own path; a snippet's made-up one)

    @property
    def uri(self) -> str:
        return self.path.as_uri()


def _blocks(path: Path) -> list[tuple[int, str]]:
    """The ```yaml blocks of a markdown file: (line of the fence, text)."""
    found = []
    for match in re.finditer(r"^```yaml\n(.*?)^```", path.read_text(), re.M | re.S):
        found.append((path.read_text()[: match.start()].count("\n") + 1, match.group(1)))
    return found


def _snippets() -> tuple[list[Document], set[tuple[str, str]]]:
    playbook_keys = set(STRICT["properties"])
    step_keys = set(STRICT["$defs"]["step"]["properties"])
    checked, skipped = [], set()
    for path in DOCS:
        name = str(path.relative_to(ROOT))
        for line, text in _blocks(path):
            data = yaml.safe_load(text)
            keys = set(data) if isinstance(data, dict) else set()
            if keys & {"version", "steps"} and keys <= playbook_keys:
                body = text if "version" in keys else "version: 1\n" + text
            elif keys & {"select", "action"} and keys <= step_keys:
                head = "".join(
                    f"    {key}: {value}\n"
                    for key, value in (("name", "snippet"), ("select", "{}"))
                    if key not in keys
                )
                step = "".join(f"    {ln}\n" if ln else "\n" for ln in text.splitlines())
                body = "version: 1\nsteps:\n  -" + (head + step)[3:]
            else:
                skipped.add((name, text.splitlines()[0]))
                continue
            if SCHEMA_LINE not in body:
                body = f"{SCHEMA_LINE}\n{body}"
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower())
            label = f"{name}:{line}"
            checked.append(Document(label, body, ROOT / "playbooks" / f"snippet-{slug}{line}.yaml"))
    return checked, skipped


SNIPPETS, SKIPPED = _snippets()
DOCUMENTS = [Document(str(p.relative_to(ROOT)), p.read_text(), p) for p in EXAMPLES] + SNIPPETS


def _validator(schema: dict[str, Any], pointer: str = "") -> jsonschema.Draft202012Validator:
    """A validator of the subschema at ``pointer`` (its refs resolved in the whole schema)."""
    uri = schema["$id"]
    registry: Registry[Any] = Registry().with_resource(
        uri, Resource.from_contents(schema, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"{uri}#{pointer}"},
        registry=registry,
        format_checker=jsonschema.FormatChecker(formats=["uuid"]),
    )


# -- the file --------------------------------------------------------------------------------


def test_the_committed_editor_schema_is_the_generated_one() -> None:
    generated = schema_gen.render(schema_gen.editor_schema(STRICT))
    committed = (ROOT / "runner" / "schema" / "playbook.editor.schema.json").read_text()
    assert committed == generated, "run: python -m runner.schema_gen"
    assert (ROOT / "schemas" / "playbook.schema.json").read_text() == committed
    assert schema_gen.main(["--check"]) == 0


def test_the_loader_keeps_the_strict_schema() -> None:
    assert loader.schema() == STRICT
    assert EDITOR["$id"] == STRICT["$id"] + ":editor"
    before = copy.deepcopy(STRICT)
    schema_gen.editor_schema(STRICT)
    assert before == STRICT


def test_a_one_of_whose_branches_both_take_a_reference_becomes_any_of() -> None:
    strict: dict[str, Any] = {
        "$id": "urn:test",
        "type": "object",
        "properties": {
            "size": {"oneOf": [{"type": "integer"}, {"type": "string", "enum": ["all"]}]},
            "names": {"oneOf": [{"type": "string"}, {"type": "array"}]},
        },
    }
    editor = schema_gen.editor_schema(strict)
    assert "anyOf" in editor["properties"]["size"] and "oneOf" not in editor["properties"]["size"]
    assert editor["properties"]["names"] == strict["properties"]["names"]
    check = _validator(editor)
    for good in ({"size": "${n}"}, {"size": 3}, {"size": "all"}, {"names": "${n}"}):
        assert check.is_valid(good), good
    for bad in ({"size": "some"}, {"size": 2.5}, {"names": 3}):
        assert not check.is_valid(bad), bad


# -- the reference pattern is the loader's -----------------------------------------------------


def _loader_substitutes(text: str) -> bool:
    """Whether the loader replaces a variable in ``text`` (its own scanner)."""
    return any(
        m.group(1) is not None and loader._VAR_NAME.match(m.group(1))
        for m in loader._VAR_RE.finditer(text)
    )


@given(st.text(alphabet="${}ab_1 -", max_size=16))
def test_the_reference_pattern_matches_what_the_loader_substitutes(text: str) -> None:
    found = re.search(schema_gen.REFERENCE_PATTERN, text) is not None
    assert found == _loader_substitutes(text)


@pytest.mark.parametrize(
    ("text", "substituted"),
    [
        ("${keep}", True),
        ("-${days}d", True),
        ("$${keep}", False),  # the text ${keep}
        ("$$${keep}", True),  # a $, then a reference
        ("${1x}", False),
        ("${}", False),
        ("$keep", False),
    ],
)
def test_the_reference_pattern_examples(text: str, substituted: bool) -> None:
    assert (re.search(schema_gen.REFERENCE_PATTERN, text) is not None) is substituted
    assert _loader_substitutes(text) is substituted


# -- schema against schema, at every subschema -------------------------------------------------

#: Values tried at every subschema: none holds a reference.
LITERALS: list[Any] = [
    *(None, True, False, 0, 1, 3, -1, 2.5, 300, 100000),
    *("", "many", "$${name}", "$name", "now", "-30d", "6h", "6 hours", "Late", "RUNNING"),
    *("delete", "NAME_ASC", "etl/nightly", "etl", "4a6e8b8e-3c2d-4f7a-9a53-0f7a3c1b2d4e"),
    *([], ["many"], ["RUNNING"], {}, {"before": "now"}),
]
REFERENCES = ["${name}", "$$${name}", "-${name}d"]


def _subschemas() -> list[str]:
    """Pointers of every subschema of the strict schema where the loader substitutes (not
    under ``vars``, not ``propertyNames``: keys are not substituted; not in an ``if``: a
    condition tests literal values, a ``${name}`` takes no branch), as in the editor's."""
    return [
        pointer
        for pointer, _ in schema_gen._subschemas(STRICT, "")
        if pointer
        and not pointer.startswith("/properties/vars")
        and "/propertyNames" not in pointer
        and "/if" not in pointer
    ]


def _editor_pointer(pointer: str) -> str:
    """The same place in the editor's schema: inside a wrapped value, in a oneOf made anyOf."""
    strict, editor, out = STRICT, EDITOR, ""
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        wrapped = isinstance(editor, dict) and _is_wrapper(editor) and not _is_wrapper(strict)
        if wrapped:
            editor, out = editor["anyOf"][0], out + "/anyOf/0"
        key = "anyOf" if part == "oneOf" and part not in editor else part
        strict = strict[int(part)] if isinstance(strict, list) else strict[part]
        editor = editor[int(key)] if isinstance(editor, list) else editor[key]
        out += "/" + (raw if key == part else key)
    return out


def _is_wrapper(node: Any) -> bool:
    reference = {"$ref": f"#/$defs/{schema_gen.REFERENCE_DEF}"}
    return isinstance(node, dict) and reference in node.get("anyOf", [])


@pytest.mark.parametrize("pointer", _subschemas())
def test_every_value_takes_a_reference_and_literals_are_checked_as_strictly(pointer: str) -> None:
    strict = _validator(STRICT, pointer)
    editor = _validator(EDITOR, _editor_pointer(pointer))
    node = STRICT
    for part in pointer.split("/")[1:]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    own = [
        *node.get("examples", []),
        *node.get("enum", []),
        *([node["const"]] if "const" in node else []),
    ]
    tried = LITERALS + [value for value in own if value not in LITERALS]
    for value in tried:
        assert strict.is_valid(value) == editor.is_valid(value), value
    takes_a_scalar = any(
        strict.is_valid(value) for value in tried if isinstance(value, (str, int, float, bool))
    )
    for reference in REFERENCES:
        assert editor.is_valid(reference) == takes_a_scalar, reference


# -- loader and editor schema on the examples and the docs -------------------------------------


def test_which_snippets_are_checked() -> None:
    assert SKIPPED == NOT_PLAYBOOKS
    assert {d.label.split(":")[0] for d in SNIPPETS} == {"README.md", "docs/playbooks.md"}
    assert len(SNIPPETS) >= 4


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.label)
def test_documents_load_and_pass_the_editor_schema(document: Document) -> None:
    loader.load_text(document.text, name=document.label, env={})  # or a PlaybookError
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(EDITOR).iter_errors(yaml.safe_load(document.text))
    ]
    assert errors == []
    assert not list(_validator(STRICT).iter_errors(_substituted(document.text)))


def _substituted(text: str) -> Any:
    """The document's data once the loader's variables are in (what the strict schema sees)."""
    data = yaml.safe_load(text)
    source = loader._Source("x")
    values = loader._resolve_vars(data, {}, {}, source)
    return loader._substitute(data, (), values, source)


def _scalar_paths(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [
            p for k, v in data.items() if path or k != "vars" for p in _scalar_paths(v, (*path, k))
        ]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _scalar_paths(v, (*path, i))]
    return [path] if data is not None else []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.label)
def test_any_value_of_a_document_can_be_a_variable(document: Document) -> None:
    """Each value in turn given by a variable: the loader loads it, the editor takes it."""
    data = yaml.safe_load(document.text)
    for path in _scalar_paths(data):
        changed = copy.deepcopy(data)
        *parents, last = path
        node = changed
        for part in parents:
            node = node[part]
        value, node[last] = node[last], "${the_value}"
        changed["vars"] = {**(changed.get("vars") or {}), "the_value": value}
        if isinstance(value, str) and _loader_substitutes(value):
            continue  # a variable's value is not substituted again
        loader.load_text(yaml.safe_dump(changed), name=f"{document.label} {path}", env={})
        assert _validator(EDITOR).is_valid(changed), path


def test_a_broken_playbook_is_flagged_by_both() -> None:
    with pytest.raises(PlaybookError) as info:
        loader.load_text(BROKEN, name="broken.yaml", env={})
    assert sorted(p.line for p in info.value.problems) == sorted(BROKEN_LINES)
    errors = list(_validator(EDITOR).iter_errors(yaml.safe_load(BROKEN)))
    where = {tuple(e.absolute_path) for e in errors}
    assert where == {
        ("steps", 0, "select", "limit"),
        ("steps", 0, "select"),
        ("steps", 1, "select", "limit"),
    }


# -- the real yaml-language-server -------------------------------------------------------------


@pytest.fixture(scope="module")
def yaml_language_server() -> Any:
    reason = yaml_ls.missing_tools()
    if reason:
        pytest.skip(f"yaml-language-server needs node and npm: {reason}")
    with yaml_ls.LanguageServer(yaml_ls.ensure_installed(), root=ROOT) as server:
        yield server


def _summary(found: list[dict[str, Any]]) -> list[str]:
    return [f"{d['range']['start']['line'] + 1}: {d['message']}" for d in found]


@pytest.mark.editor
def test_yaml_language_server_accepts_every_example_and_snippet(yaml_language_server: Any) -> None:
    found = yaml_language_server.diagnostics({d.uri: d.text for d in DOCUMENTS})
    assert {d.label: _summary(found[d.uri]) for d in DOCUMENTS} == {d.label: [] for d in DOCUMENTS}


@pytest.mark.editor
def test_yaml_language_server_flags_a_broken_playbook(yaml_language_server: Any) -> None:
    uri = (ROOT / "playbooks" / "broken-for-the-test.yaml").as_uri()
    found = yaml_language_server.diagnostics({uri: BROKEN})[uri]
    lines = {d["range"]["start"]["line"] + 1 for d in found}
    assert lines == set(BROKEN_LINES), _summary(found)
    messages = " | ".join(_summary(found))
    assert 'Expected "integer"' in messages and "limmit" in messages


@pytest.mark.editor
def test_yaml_language_server_refuses_references_with_the_strict_schema(
    yaml_language_server: Any,
) -> None:
    """The issue's report, reproduced: the loader's own schema, given to the editor, refuses
    the examples' references (this is why the editor gets a schema of its own)."""
    example = ROOT / "playbooks" / "reschedule-late.yaml"
    text = example.read_text().replace(
        "../schemas/playbook.schema.json", "../runner/schema/playbook.schema.json"
    )
    uri = (ROOT / "playbooks" / "strict-for-the-test.yaml").as_uri()
    found = yaml_language_server.diagnostics({uri: text})[uri]
    assert any('Expected "integer"' in d["message"] for d in found), _summary(found)
    assert len(found) == 4, _summary(found)
