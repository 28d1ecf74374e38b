"""The CRD is generated from the models, structural, and committed fresh."""

from __future__ import annotations

from typing import Any

from llmservice_operator.api.crd import crd, crd_yaml
from tests.unit.examples import ROOT

CRD_FILE = ROOT / "manifests" / "crd" / "llmservices.llmservice.dev.yaml"


def _walk(node: Any, path: str = "") -> list[str]:
    """Paths of schema nodes that break Kubernetes' structural-schema rules."""
    bad = []
    if isinstance(node, dict):
        if "$ref" in node or "anyOf" in node or "title" in node:
            bad.append(path)
        if "properties" in node and "additionalProperties" in node:
            bad.append(path)
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):  # OpenAPI 3.0: booleans
            if bound in node and not isinstance(node[bound], bool):
                bad.append(f"{path}.{bound}")
        if not node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
            bad.append(path)
        for key, child in node.get("properties", {}).items():
            bad += _walk(child, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                bad += _walk(node[key], f"{path}[{key}]")
    return bad


def test_committed_crd_is_fresh() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "run `make crd` and commit the result"


def test_schema_is_structural() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []


def test_crd_has_scale_status_and_columns() -> None:
    version = crd()["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Model", "Version", "Replicas", "Ready", "Status", "Canary", "Age"]
    assert crd()["spec"]["names"]["shortNames"] == ["llmsvc"]


def test_every_field_has_a_description() -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = []

    def visit(node: dict[str, Any], path: str) -> None:
        for key, child in node.get("properties", {}).items():
            if "description" not in child:
                missing.append(f"{path}.{key}")
            visit(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            visit(node["items"], f"{path}[]")

    visit(spec, "spec")
    assert missing == []
