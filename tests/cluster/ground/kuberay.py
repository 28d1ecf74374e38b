"""KubeRay's CRDs, read from the ray-operator Go module that `make tools` fetched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

# PyYAML's libyaml binding when built with it (it is in the PyPI wheels).
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def apply_crds(api_client: client.ApiClient, crd_dir: Path, field_manager: str) -> list[str]:
    """Server-side apply every CRD in `crd_dir`/*.yaml; returns their names."""
    api = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        # libyaml: the pure-Python loader takes seconds on RayCluster's CRD.
        for doc in yaml.load_all(path.read_text(), Loader=_YAML_LOADER):
            if not doc:
                continue
            # Server-side apply: RayCluster's CRD is too large for the
            # last-applied annotation of a client-side apply. The echoed
            # CRD is not decoded into models (slow, and unused): the
            # call returns the raw urllib3 response, which its types omit.
            echoed: Any = api.patch_custom_resource_definition(
                name=doc["metadata"]["name"],
                body=doc,
                field_manager=field_manager,
                force=True,
                _content_type="application/apply-patch+yaml",
                _preload_content=False,
            )
            echoed.release_conn()
            names.append(str(doc["metadata"]["name"]))
    return names


def crds_established(api_client: client.ApiClient, names: list[str]) -> bool:
    """True once the API server serves every named CRD."""
    api = client.ApiextensionsV1Api(api_client)
    for name in names:
        raw: Any = api.read_custom_resource_definition(name, _preload_content=False)
        conditions = json.loads(raw.data).get("status", {}).get("conditions", [])
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return False
    return True
