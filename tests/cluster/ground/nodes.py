"""KWOK node pools: fake nodes that advertise CPUs, memory and GPUs like real pools."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client

# KWOK manages only nodes carrying this annotation, so a stray real node never
# has its status forged.
KWOK_ANNOTATION_KEY = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
POOL_LABEL = "llmservice.dev/pool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT: dict[str, str] = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodePool:
    """A set of identical fake nodes."""

    name: str
    count: int
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str | None = None


# GPU pools are tainted like real GPU node pools, so only pods that tolerate
# the taint (the GPU workers) land there; the Ray heads go to `cpu`.
DEFAULT_POOLS: tuple[NodePool, ...] = (
    NodePool("a100", 2, cpu="96", memory="1360Gi", gpus=8, gpu_product="NVIDIA-A100-SXM4-80GB"),
    NodePool("l4", 2, cpu="32", memory="128Gi", gpus=1, gpu_product="NVIDIA-L4"),
    NodePool("cpu", 2, cpu="32", memory="128Gi"),
)


def node_manifest(pool: NodePool, name: str) -> dict[str, Any]:
    """One fake node of `pool`; its capacity is set in the status on create (no kubelet)."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool.name,
    }
    resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
    taints = []
    if pool.gpus:
        resources[GPU_RESOURCE] = str(pool.gpus)
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.count"] = str(pool.gpus)
        if pool.gpu_product:
            labels[GPU_PRODUCT_LABEL] = pool.gpu_product
        taints.append(GPU_TAINT)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION_KEY: KWOK_ANNOTATION_VALUE},
        },
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources},
    }


def node_manifests(pools: Sequence[NodePool]) -> Iterator[dict[str, Any]]:
    """Every node of every pool, named <pool>-<index>."""
    for pool in pools:
        for index in range(pool.count):
            yield node_manifest(pool, f"{pool.name}-{index}")


def node_ready(node: client.V1Node) -> bool:
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)
