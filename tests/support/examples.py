"""A GPU example made to run on the CPU test ground: its GPU fields stripped, and only what the
ground itself forces taken from `tiny.yaml` (the model, which is local and tiny; its dtype and
context; two cores' worth of resources). Everything else (name, engine options such as prefix
caching, the image left to the operator's default, the code delivery) is the example's own, so
what serves is the path a GPU cluster takes, minus the GPUs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "manifests" / "examples"
TINY = EXAMPLES / "tiny.yaml"

# Engine options only a GPU has a use for (vLLM CPU sizes its KV cache from VLLM_CPU_KVCACHE_SPACE).
GPU_ONLY_ENGINE = ("gpuMemoryUtilization",)
# What the ground forces: a tiny local model in float32, with its 512-token context.
GROUND_ENGINE = ("dtype", "maxModelLen", "enforceEager")
GROUND_SPEC = ("model", "workerResources", "headResources", "env")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def strip_gpu(example: dict[str, Any], tiny: dict[str, Any] | None = None) -> dict[str, Any]:
    """`example` with `spec.gpu` and GPU-only engine options removed, sized for the ground:
    one replica (two cores hold one engine that starts in a minute), the tiny model."""
    tiny = tiny if tiny is not None else load(TINY)
    out = copy.deepcopy(example)
    spec = out["spec"]
    spec.pop("gpu", None)
    engine = spec.setdefault("engine", {})
    for name in GPU_ONLY_ENGINE:
        engine.pop(name, None)
    engine.pop("tensorParallelSize", None)  # GPUs per replica
    for name in GROUND_ENGINE:
        if name in tiny["spec"]["engine"]:
            engine[name] = tiny["spec"]["engine"][name]
    for name in GROUND_SPEC:
        spec.pop(name, None)
        if name in tiny["spec"]:
            spec[name] = copy.deepcopy(tiny["spec"][name])
    spec["replicas"] = 1
    spec.pop("autoscaling", None)
    return out


def worker_gpus(rayservice: dict[str, Any]) -> list[str]:
    """The GPU limit of every worker container ("0" where none), as strings."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [
        str(ct["resources"]["limits"].get("nvidia.com/gpu", "0"))
        for g in cluster.get("workerGroupSpecs", [])
        for ct in g["template"]["spec"]["containers"]
    ]


def code_delivery(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    """How each Ray pod template of a RayService gets serve_app: the ConfigMap volume, where each
    container mounts it, the PYTHONPATH that puts it first, the digest label. Equal for two
    RayServices means their pods load the same code the same way."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [("head", cluster["headGroupSpec"]["template"])] + [
        (g["groupName"], g["template"]) for g in cluster.get("workerGroupSpecs", [])
    ]
    out = []
    for group, template in templates:
        pod = template["spec"]
        volumes = [v for v in pod.get("volumes", []) if "configMap" in v]
        names = {v["name"] for v in volumes}
        containers = [
            {
                "mounts": [m for m in ct.get("volumeMounts", []) if m["name"] in names],
                "PYTHONPATH": next(
                    (e.get("value") for e in ct.get("env", []) if e["name"] == "PYTHONPATH"), None
                ),
            }
            for ct in pod["containers"]
        ]
        labels = template.get("metadata", {}).get("labels", {})
        out.append({
            "group": group,
            "volumes": volumes,
            "containers": containers,
            "label": labels.get("llmservice.dev/serve-app"),
        })  # fmt: skip
    return out
