"""serve_app's sources as the Ray pods get them: a ConfigMap mounted on their PYTHONPATH.

Why not an image: a stock Ray image (rayproject/ray-llm) then serves, no project image has to be
built or published, and the code a replica imports is always the code this renderer was written
against (both come from the same installed package). The ConfigMap is named by a digest of its
contents and is immutable, so a pod can only ever see the code its template names; a changed
serve_app (an operator upgrade) changes the pod template, and KubeRay rolls a new cluster.

One ConfigMap per namespace and digest is shared by every LLMService there (tens of KiB each
would be a lot at 10,000 services); it has no owner, like the code it carries belongs to the
operator's release rather than to one service.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from types import MappingProxyType
from typing import Any

from llmservice_operator import constants as c

PACKAGE = "serve_app"
# Where the Ray containers find it: PYTHONPATH=CODE_ROOT, the package at CODE_ROOT/serve_app.
CODE_ROOT = "/opt/llmservice"
CODE_VOLUME = "serve-app"
CONFIGMAP_PREFIX = "llmservice-serve-app-"
# ConfigMaps hold at most 1 MiB; stay far below it (the sources are ~40 KiB).
MAX_BYTES = 512 * 1024


@dataclass(frozen=True)
class CodeBundle:
    """The files of one serve_app package (flat: file name -> text)."""

    files: Mapping[str, str]

    def __post_init__(self) -> None:
        if "__init__.py" not in self.files:
            raise ValueError("a serve_app bundle needs its __init__.py")
        size = sum(len(text.encode()) for text in self.files.values())
        if size > MAX_BYTES:
            raise ValueError(f"serve_app sources are {size} bytes, above {MAX_BYTES}")
        object.__setattr__(self, "files", MappingProxyType(dict(sorted(self.files.items()))))

    @cached_property  # read several times per render, on every reconcile: hash ~45 KiB once
    def digest(self) -> str:
        h = hashlib.sha256()
        for name, text in self.files.items():  # sorted: the digest is the contents'
            h.update(name.encode() + b"\0" + text.encode() + b"\0")
        return h.hexdigest()[:12]

    @property
    def configmap_name(self) -> str:
        return f"{CONFIGMAP_PREFIX}{self.digest}"


@cache
def packaged() -> CodeBundle:
    """The installed serve_app's sources (read once, like the Jinja templates beside them)."""
    root = resources.files(PACKAGE)
    files = {
        item.name: item.read_text(encoding="utf-8")
        for item in root.iterdir()
        if item.is_file() and item.name.endswith(".py")
    }
    return CodeBundle(files)


def render_configmap(code: CodeBundle, namespace: str) -> dict[str, Any]:
    """The ConfigMap carrying ``code`` into ``namespace`` (immutable: its name is its digest)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": code.configmap_name,
            "namespace": namespace,
            "labels": {
                c.LABEL_NAME: "llmservice",
                c.LABEL_COMPONENT: "serve-app",
                c.LABEL_PART_OF: "llmservice",
                c.LABEL_MANAGED_BY: c.FIELD_MANAGER,
                c.LABEL_SERVE_APP: code.digest,
            },
        },
        "immutable": True,
        "data": dict(code.files),
    }


def volume(code: CodeBundle) -> dict[str, Any]:
    return {"name": CODE_VOLUME, "configMap": {"name": code.configmap_name}}


MOUNT: dict[str, Any] = {
    "name": CODE_VOLUME,
    "mountPath": f"{CODE_ROOT}/{PACKAGE}",
    "readOnly": True,
}
