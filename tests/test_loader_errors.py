"""Error text is interface: each case in playbook_errors/ is a playbook and, word for word,
what loading it must say."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import PlaybookError
from runner.loader import load_text

CASES = Path(__file__).parent / "playbook_errors"


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.yaml")))
def test_error_text(case: str) -> None:
    text = (CASES / f"{case}.yaml").read_text()
    expected = (CASES / f"{case}.expected").read_text().rstrip("\n")
    with pytest.raises(PlaybookError) as info:
        load_text(text, name=f"{case}.yaml", env={})
    assert str(info.value) == expected


def test_every_case_has_its_expected_text() -> None:
    yamls = {p.stem for p in CASES.glob("*.yaml")}
    expected = {p.stem for p in CASES.glob("*.expected")}
    assert yamls == expected
    assert len(yamls) >= 20
