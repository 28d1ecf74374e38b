"""Generate the LLMService CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no $ref, no anyOf over
types. Pydantic's JSON schema is close; this module closes the gap (inline $defs, turn
``Optional[X]`` into X, keep defaults, descriptions and CEL rules) so the models stay the only
place a field is defined.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from llmservice_operator import constants as c
from llmservice_operator.api.models import LLMServiceSpec, LLMServiceStatus

# Keys of pydantic's JSON schema that structural OpenAPI does not know or allow.
_DROP_KEYS = {"title", "$defs", "discriminator"}


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also publish default_factory values, so the API server applies the same defaults."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            schema = {**schema, "default": factory()}  # type: ignore[call-arg]
            schema.pop("default_factory", None)
        return super().default_schema(schema)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = copy.deepcopy(defs[ref.rsplit("/", 1)[-1]])
        node = {**target, **node}  # field-level description/default win over the model's
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot make a structural schema of anyOf {any_of}")
        node = {**_structural(non_null[0], defs), **node}
        if node.get("default", 0) is None:
            del node["default"]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # JSON Schema's numeric exclusive bounds -> OpenAPI 3.0's boolean flag + bound.
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            node[limit] = node.pop(bound)
            node[bound] = True
    if "const" in node:  # Literal["x"] -> enum, which structural schemas allow
        node["enum"] = [node.pop("const")]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
    if node.get("default", 0) is None:
        del node["default"]
    elif "default" in node:
        node["default"] = _without_nulls(node["default"])
    if "properties" in node and isinstance(node.get("additionalProperties"), bool):
        # Structural schemas forbid properties + additionalProperties; the API server prunes
        # unknown fields instead, and kubectl's strict field validation reports them.
        del node["additionalProperties"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def openapi_schema(model: type[LLMServiceSpec] | type[LLMServiceStatus]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model (camelCase field names)."""
    raw = model.model_json_schema(by_alias=True, schema_generator=_WithFactoryDefaults)
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    return schema


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    status = openapi_schema(LLMServiceStatus)
    status["x-kubernetes-preserve-unknown-fields"] = True  # kopf keeps its own bookkeeping there
    ready = '.status.conditions[?(@.type=="Ready")]'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{c.PLURAL}.{c.GROUP}",
            "labels": {c.LABEL_PART_OF: "llmservice"},
        },
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": c.KIND,
                "listKind": f"{c.KIND}List",
                "plural": c.PLURAL,
                "singular": c.SINGULAR,
                "shortNames": list(c.SHORT_NAMES),
                "categories": ["all", "llm"],
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.source"},
                        {"name": "Version", "type": "string", "jsonPath": ".spec.model.version"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Status", "type": "string", "jsonPath": f"{ready}.reason"},
                        # The share of requests a canary takes, as the router runs it.
                        {
                            "name": "Canary",
                            "type": "number",
                            "jsonPath": ".status.rollout.weight",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "LLMService serves one LLM through Ray Serve + vLLM on a KubeRay "
                                "RayService."
                            ),
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": "self.metadata.name.size() <= 47",
                                    "message": "metadata.name: at most 47 characters "
                                    "(KubeRay names derive from it)",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(LLMServiceSpec),
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `make crd` from llmservice_operator/api/models.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    """``python -m llmservice_operator.api.crd OUT [--check]``: write or verify the CRD file."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if OUT is stale")
    args = parser.parse_args(argv)
    fresh = crd_yaml()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != fresh:
            print(f"{args.out} is stale: run `make crd` and commit the result", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
