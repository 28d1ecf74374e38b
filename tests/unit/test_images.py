"""No rendered object and no chart default names an image that nothing publishes.

Allowed: the stock images Ray publishes for the pinned Ray (rayproject/ray-llm for GPUs), and the
images the release workflow builds (.github/workflows/release.yaml: the operator, and the CPU
base image of stock Ray plus vLLM for CPU, since Ray publishes no CPU image with vLLM).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from llmservice_operator.render import (
    DEFAULT_CPU_IMAGE,
    DEFAULT_GPU_IMAGE,
    DEFAULT_RAY_VERSION,
    render,
)
from llmservice_operator.validate import parse
from tests.unit.examples import ROOT, example_services
from tests.unit.test_versions import cv

RAY = cv.printable(ROOT, "ray")
# What Ray publishes on Docker Hub for one release (docker/README.md of ray-project/ray; the LLM
# image since Ray 2.43): Python 3.11 like this package, CUDA 12.8 for ray-llm.
STOCK = {
    f"rayproject/ray-llm:{RAY}-py311-cu128",
    f"rayproject/ray:{RAY}-py311-cpu",
    f"rayproject/ray:{RAY}-py311-gpu",
}
RELEASED = {cv.printable(ROOT, "operator-image"), cv.printable(ROOT, "cpu-base-image")}


def _images(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def test_the_defaults_follow_the_pins() -> None:
    assert DEFAULT_RAY_VERSION == RAY
    assert DEFAULT_GPU_IMAGE in STOCK
    assert cv.printable(ROOT, "cpu-base-image") == DEFAULT_CPU_IMAGE


def test_every_example_renders_to_published_images_only() -> None:
    seen = set()
    for name, doc in example_services().items():
        for obj in render(parse(doc)):
            for image in _images(obj):
                assert image in STOCK | RELEASED, f"{name}: {image} is published by nobody"
                seen.add(image)
    assert {DEFAULT_GPU_IMAGE, DEFAULT_CPU_IMAGE} <= seen


def test_the_install_manifests_name_published_images_only() -> None:
    for rel in ("manifests/install.yaml", "manifests/guardrails.yaml"):
        for doc in yaml.safe_load_all((ROOT / rel).read_text()):
            for image in _images(doc or {}):
                assert image in RELEASED, f"{rel}: {image} is published by nobody"


def test_the_release_workflow_builds_the_images_it_is_credited_with() -> None:
    text = (ROOT / ".github" / "workflows" / "release.yaml").read_text()
    workflow = yaml.safe_load(text)
    assert {"operator-image", "cpu-base-image"} <= set(workflow["jobs"])
    # Each image's tag is what hack/check-versions.py prints, the source the tests check too.
    for what in ("operator-image", "cpu-base-image"):
        assert f"tags: ${{{{ needs.versions.outputs.{what} }}}}" in text
    (printed,) = [line for line in text.splitlines() if line.strip().startswith("for what in")]
    assert {"operator-image", "cpu-base-image"} <= set(printed.replace(";", " ").split())
    assert "serve_app/Dockerfile.cpu-base" in text and "operator/Dockerfile" in text
