"""``${name}`` in YAML's flow style (``{...}``, ``[...]``), where its braces would otherwise
open a mapping: it reads as it does in block style, and problems keep their line and column
(the error cases are in playbook_errors/variables_in_flow_style.*)."""

from __future__ import annotations

from runner.loader import load_text

BLOCK = """\
version: 1
name: old-runs
vars: {days: 7, flow: etl, keep: 3}
steps:
  - name: old ${flow} runs
    select:
      flows:
        - ${flow}
        - nightly-${flow}
      end:
        before: -${days}d
      sort: END_TIME_DESC
      limit: ${keep}
      name_like: $${flow}
    action: delete
"""

FLOW = """\
version: 1
name: old-runs
vars: {days: 7, flow: etl, keep: 3}
steps:
  - {name: old ${flow} runs, action: delete, select: {flows: [${flow}, nightly-${flow}], end: {before: -${days}d}, sort: END_TIME_DESC, limit: ${keep}, name_like: $${flow}}}
"""


def test_references_in_flow_style_read_as_in_block_style() -> None:
    flow, block = load_text(FLOW, env={}), load_text(BLOCK, env={})
    assert flow.steps == block.steps
    (step,) = flow.steps
    assert step.name == "old etl runs"
    assert step.select.flows == ("etl", "nightly-etl")
    assert step.select.end is not None and str(step.select.end.before) == "-7d"
    assert step.select.limit == 3  # a reference alone keeps its value's type
    assert step.select.name_like == "${flow}"  # $$ escapes, as in block style


def test_the_example_of_the_issue_loads() -> None:
    playbook = load_text(
        "version: 1\nname: x\nvars: {days: 30}\nsteps:\n  - name: old\n"
        "    select: {end: {before: -${days}d}}\n    action: delete\n",
        variables={"days": "90"},
        env={},
    )
    (step,) = playbook.steps
    assert step.select.end is not None and str(step.select.end.before) == "-90d"


def test_a_text_holding_the_stand_in_characters_is_read_as_written() -> None:
    """The braces are stood in for by private-use characters: a playbook that holds them
    itself, or names them as YAML escapes, is parsed untouched (here: in block style)."""
    for literal in ("\ue000", "\\ue000"):
        playbook = load_text(
            f'version: 1\nname: x\nvars: {{f: etl}}\nsteps:\n  - name: "a{literal}b"\n'
            "    select:\n      flows: ${f}\n    action: delete\n",
            env={},
        )
        assert playbook.steps[0].name == "a\ue000b"
        assert playbook.steps[0].select.flows == ("etl",)
