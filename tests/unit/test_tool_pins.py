"""hack/tools/: every Go module is either a pin of the test ground (built by default, kept current
by Dependabot) or a cell of the compatibility matrix (built on demand for `make test-compat`,
bumped by hand), never both and never neither; and the matrix script knows every compat cell."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "hack" / "tools"


def _compat() -> set[str]:
    script = (ROOT / "hack" / "build-tools.sh").read_text()
    match = re.search(r'^compat=" (.*) "$', script, re.M)
    assert match, "build-tools.sh has no compat list"
    return set(match.group(1).split())


def _dependabot() -> set[str]:
    config = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    (gomod,) = [u for u in config["updates"] if u["package-ecosystem"] == "gomod"]
    return {d.removeprefix("/hack/tools/") for d in gomod["directories"]}


def test_every_go_module_is_a_pin_or_a_compat_cell() -> None:
    modules = {p.parent.name for p in TOOLS.glob("*/go.mod")}
    pinned, compat = _dependabot(), _compat()
    assert not pinned & compat
    assert pinned | compat == modules


def test_the_matrix_script_knows_every_compat_module() -> None:
    script = (ROOT / "hack" / "test-compat.sh").read_text()
    for name in _compat():
        assert f"bin/compat/{name}" in script, name
