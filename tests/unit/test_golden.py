"""Every example renders to its committed golden files (compared as parsed YAML).

Update with `make golden` (pytest --update-golden) and review the diff.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from llmservice_operator.render import render
from llmservice_operator.validate import parse
from llmservice_operator.yamlio import dump_all
from tests.unit.examples import ROOT, example_services

GOLDEN = ROOT / "tests" / "golden"
CASES = example_services()


def _file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}.yaml"


def test_every_example_has_a_case() -> None:
    assert len(CASES) >= 5
    assert {p.name for p in GOLDEN.iterdir() if p.is_dir()} == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str, request: pytest.FixtureRequest) -> None:
    rendered = render(parse(CASES[case]))
    folder = GOLDEN / case
    if request.config.getoption("--update-golden"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.yaml"):
            old.unlink()
        for obj in rendered:
            (folder / _file_name(obj)).write_text(dump_all([obj]))
        return
    expected = {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}
    actual = {_file_name(o): o for o in rendered}
    assert actual.keys() == expected.keys()
    for name, obj in actual.items():
        assert obj == expected[name], f"{case}/{name} differs: run `make golden` and review"
