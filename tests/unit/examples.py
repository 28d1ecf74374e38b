"""The shipped examples, shared by the unit, golden and cluster tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmservice_operator.yamlio import load_all

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"


def example_services() -> dict[str, dict[str, Any]]:
    """case name (file stem) -> the LLMService document of that example file."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "LLMService":
                out[path.stem] = doc
    return out
