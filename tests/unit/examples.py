"""The shipped examples, shared by the unit, golden and cluster tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmservice_operator.yamlio import load_all

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"
# The model's application in a rendered serveConfigV2: a version behind the router, or the
# whole app under direct streaming (the GPU default).
MODEL_IMPORT_PATHS = frozenset({"serve_app.app:build_model", "serve_app.app:build"})


def example_services() -> dict[str, dict[str, Any]]:
    """case name (file stem) -> the LLMService document of that example file."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "LLMService":
                out[path.stem] = doc
    return out
