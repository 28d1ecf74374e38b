"""Every example renders to its committed golden files (compared as parsed YAML).

Update with `make golden` (pytest --update-golden) and review the diff.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from llmservice_operator.canary import wanted
from llmservice_operator.observe import live_arms
from llmservice_operator.plan import plan
from llmservice_operator.render import Layout, render, render_rayservice
from llmservice_operator.render.code import CodeBundle
from llmservice_operator.rollout import View, decide
from llmservice_operator.validate import parse
from llmservice_operator.yamlio import dump_all
from tests.unit.examples import ROOT, example_services

GOLDEN = ROOT / "tests" / "golden"
CASES = example_services()
# A fixed stand-in for serve_app's sources: the golden files pin how code is delivered (the
# ConfigMap, its mount, PYTHONPATH), not the code itself, which changes with every edit.
CODE = CodeBundle(
    {
        "__init__.py": '"""serve_app (golden stand-in)."""\n',
        "app.py": "def build(args):\n    ...\n",
    }
)


def _file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}.yaml"


def _canary_at_10() -> list[dict[str, Any]]:
    """The canary example mid-rollout: a new version at its first step (10 %) beside the old."""
    doc = CASES["llama-8b-l4-canary"]
    old = parse(doc)
    arms, _ = live_arms(render_rayservice(old))
    new_doc = {**doc, "spec": {**doc["spec"], "model": {**doc["spec"]["model"], "version": "v2"}}}
    new = parse(new_doc)
    want = wanted(new, plan(new.spec))
    started = decide(new.spec, want, View(arms, None, None, {}), None, None, 0.0)
    assert started.layout is not None
    stable, canary = started.layout.arms
    at_10 = (dataclasses.replace(stable, weight=90.0), dataclasses.replace(canary, weight=10.0))
    return render(new, Layout(at_10, started.layout.sticky_header), CODE)


# Rendered from a rollout's layout rather than from an example alone.
LAYOUT_CASES = {"llama-8b-l4-canary-at-10": _canary_at_10}


def test_every_example_has_a_case() -> None:
    assert len(CASES) >= 5
    assert {p.name for p in GOLDEN.iterdir() if p.is_dir()} == set(CASES) | set(LAYOUT_CASES)


@pytest.mark.parametrize("case", sorted(CASES) + sorted(LAYOUT_CASES))
def test_render_matches_golden(case: str, request: pytest.FixtureRequest) -> None:
    rendered = (
        LAYOUT_CASES[case]() if case in LAYOUT_CASES else render(parse(CASES[case]), code=CODE)
    )
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
