"""The surge check: which changes bring up a second Ray cluster, and whether its pods fit."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llmservice_operator import capacity
from llmservice_operator.render import render
from llmservice_operator.validate import parse

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(
    name: str, pool: str, gpus: int = 0, cpu: str = "32", ready: bool = True
) -> dict[str, Any]:
    alloc = {"cpu": cpu, "memory": "128Gi", "pods": "110"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    return {
        "metadata": {"name": name, "labels": {"llmservice.dev/pool": pool}},
        "spec": {"taints": [GPU_TAINT] if gpus else []},
        "status": {
            "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": str(ready)}],
        },
    }


def pod(on: str, gpus: int = 0, cpu: str = "1", phase: str = "Running") -> dict[str, Any]:
    limits = {"cpu": cpu}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {
        "spec": {"nodeName": on, "containers": [{"resources": {"limits": limits}}]},
        "status": {"phase": phase},
    }


def l4_service(replicas: int = 2, version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": "llmservice.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "llama", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "model": {"source": "meta-llama/Llama-3.1-8B-Instruct", "version": version},
            "replicas": replicas,
            "rollout": {"strategy": "BlueGreen"},
            "gpu": {
                "acceleratorType": "L4",
                "gpusPerNode": 1,
                "nodeSelector": {"llmservice.dev/pool": "l4"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            "workerResources": {"cpu": "8", "memory": "32Gi"},
        },
    }


def rendered(body: dict[str, Any]) -> dict[str, Any]:
    return render(parse(body))[0]


def serving(rs: dict[str, Any], pending: str | None = None) -> dict[str, Any]:
    live = copy.deepcopy(rs)
    live["status"] = {
        "activeServiceStatus": {"rayClusterName": "llama-a"},
        "pendingServiceStatus": {"rayClusterName": pending} if pending else {},
    }
    return live


def test_a_version_change_under_bluegreen_surges_a_scale_does_not() -> None:
    live = serving(rendered(l4_service(version="v1")))
    assert capacity.surges(rendered(l4_service(version="v2")), live)
    assert not capacity.surges(rendered(l4_service(replicas=3)), live)  # KubeRay scales in place
    assert not capacity.surges(rendered(l4_service(version="v1")), live)


def test_no_surge_for_the_first_cluster_or_while_one_is_pending() -> None:
    want = rendered(l4_service(version="v2"))
    first = copy.deepcopy(rendered(l4_service()))
    first["status"] = {}
    assert not capacity.surges(want, first)
    assert not capacity.surges(want, serving(rendered(l4_service()), pending="llama-b"))


def test_the_new_clusters_pods_are_placed_on_free_gpus_only() -> None:
    want = rendered(l4_service(replicas=2, version="v2"))
    shapes = capacity.pod_shapes(want)
    assert [(s.group, s.count) for s in shapes] == [("head", 1), ("gpu", 2)]
    nodes = [node("cpu-0", "cpu"), node("l4-0", "l4", gpus=1), node("l4-1", "l4", gpus=1)]
    # The old cluster's two workers hold both L4s.
    busy = [pod("l4-0", gpus=1), pod("l4-1", gpus=1), pod("cpu-0")]
    missing = capacity.shortfall(shapes, capacity.node_rooms(nodes, busy))
    assert [(m.group, m.pods, m.gpus) for m in missing] == [("gpu", 2, 2)]
    assert "worker group gpu (llmservice.dev/pool=l4): 2 more GPUs" in capacity.describe(missing)

    # Two more L4 nodes: it fits; a finished pod holds nothing; a NotReady node offers nothing.
    more = [*nodes, node("l4-2", "l4", gpus=1), node("l4-3", "l4", gpus=1)]
    assert capacity.shortfall(shapes, capacity.node_rooms(more, busy)) == []
    done = [*busy, pod("l4-2", gpus=1, phase="Succeeded")]
    assert capacity.shortfall(shapes, capacity.node_rooms(more, done)) == []
    sick = [*nodes, node("l4-2", "l4", gpus=1), node("l4-3", "l4", gpus=1, ready=False)]
    missing = capacity.shortfall(shapes, capacity.node_rooms(sick, busy))
    assert [(m.pods, m.gpus) for m in missing] == [(1, 1)]


@pytest.mark.parametrize(
    ("toleration", "fits"),
    [
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, True),
        ({"operator": "Exists"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "other"}, False),
        ({"key": "other", "operator": "Exists"}, False),
    ],
)
def test_taints_must_be_tolerated(toleration: dict[str, Any], fits: bool) -> None:
    shape = capacity.PodShape("g", 1, {"nvidia.com/gpu": capacity._qty(1)}, {}, [toleration])
    rooms = capacity.node_rooms([node("l4-0", "l4", gpus=1)], [])
    assert (capacity.shortfall([shape], rooms) == []) is fits
