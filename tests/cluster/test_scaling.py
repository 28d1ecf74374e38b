"""Replica counts reach the RayCluster and the pods, on the real KubeRay with KWOK GPU nodes.

KubeRay v1.5 never passes worker-group sizes from a RayService to an existing RayCluster, so
checking the RayService proves nothing a user feels: these tests look at the RayCluster KubeRay
made, its worker pods and the GPUs they hold on the right pool. KWOK pods run no Ray, so the
status must say so (no Serve replica observed, readyReplicas 0) however many pods exist; the
real-Ray ground checks Serve replicas that answer.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from tests.cluster.harness import wait_for
from tests.cluster.objects import (
    WAIT_S,
    condition,
    get_svc,
    llmservice,
    patch_spec,
    raycluster,
    wait_rs,
)
from tests.cluster.operator_process import OperatorProcess
from tests.unit.examples import example_services

pytestmark = pytest.mark.cluster


def sizes(rc: dict[str, Any]) -> tuple[Any, Any, Any]:
    group = rc["spec"]["workerGroupSpecs"][0]
    return group.get("replicas"), group.get("minReplicas"), group.get("maxReplicas")


def wait_cluster(
    api: client.CustomObjectsApi, ns: str, name: str, want: tuple[Any, Any, Any]
) -> dict[str, Any]:
    return wait_for(
        f"RayCluster worker group (replicas, min, max) == {want}",
        lambda: (rc := raycluster(api, ns, name)) is not None and sizes(rc) == want and rc,
        WAIT_S,
    )


def running_workers(core: client.CoreV1Api, ns: str, cluster: str, n: int) -> list[Any]:
    def ready() -> list[Any]:
        pods = core.list_namespaced_pod(
            ns, label_selector=f"ray.io/cluster={cluster},ray.io/node-type=worker"
        ).items
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        ok = len(live) == n and all(p.status.phase == "Running" for p in live)
        return live if ok and len(pods) == n else []

    if n == 0:
        wait_for(f"no worker pods of {cluster}", lambda: not _pods(core, ns, cluster), WAIT_S)
        return []
    return wait_for(f"{n} worker pod(s) of {cluster} Running", ready, WAIT_S)


def _pods(core: client.CoreV1Api, ns: str, cluster: str) -> list[Any]:
    return core.list_namespaced_pod(
        ns, label_selector=f"ray.io/cluster={cluster},ray.io/node-type=worker"
    ).items


def gpus_on_pool(core: client.CoreV1Api, pods: list[Any], pool: str) -> int:
    total = 0
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["llmservice.dev/pool"] == pool, pod.metadata.name
        total += int(pod.spec.containers[0].resources.limits["nvidia.com/gpu"])
    return total


@pytest.mark.compat
def test_fixed_replicas_reach_the_raycluster_and_the_pods(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace, replicas=1)
    )
    rc = wait_cluster(api, namespace, "llama", (1, 1, 1))
    name = rc["metadata"]["name"]
    running_workers(core, namespace, name, 1)

    patch_spec(api, namespace, "llama", {"replicas": 2})
    rc = wait_cluster(api, namespace, "llama", (2, 2, 2))
    assert rc["metadata"]["name"] == name  # the same cluster, resized: no new cluster for a scale
    pods = running_workers(core, namespace, name, 2)
    assert gpus_on_pool(core, pods, "l4") == 2  # replicas x TP x PP, on the profile's pool
    managers = {m["manager"] for m in rc["metadata"].get("managedFields") or []}
    assert c.REPLICAS_FIELD_MANAGER in managers

    svc = get_svc(api, namespace, "llama")
    # KWOK pods run no Ray: two pods, but no Serve replica answers, and status says so.
    assert svc["status"]["readyReplicas"] == 0
    assert condition(svc, "Ready")["status"] == "False"
    assert condition(svc, "Progressing")["status"] == "True"

    # The scale subresource (kubectl scale, an HPA) reaches the pods the same way.
    api.patch_namespaced_custom_object_scale(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "llama", {"spec": {"replicas": 1}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_cluster(api, namespace, "llama", (1, 1, 1))
    running_workers(core, namespace, name, 1)
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=llama").items
    scaled = [e.message for e in events if e.reason == "Scaled"]
    assert any("replicas 1->2" in m for m in scaled) and any("replicas 2->1" in m for m in scaled)


def test_tensor_parallel_replicas_hold_their_gpus_on_the_a100_pool(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    svc = example_services()["llama-70b-a100-tp4"]
    svc["metadata"] = {"name": "big", "namespace": namespace}
    svc["spec"]["model"].pop("hfTokenSecretRef", None)
    svc["spec"]["replicas"] = 1
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, svc)
    rc = wait_cluster(api, namespace, "big", (1, 1, 1))
    pods = running_workers(core, namespace, rc["metadata"]["name"], 1)
    assert gpus_on_pool(core, pods, "a100") >= 4  # one TP=4 replica

    # 3 replicas x TP 4 = 12 GPUs: two 8-GPU workers (one replica-pair per node, one spare half).
    patch_spec(api, namespace, "big", {"replicas": 3})
    rc = wait_cluster(api, namespace, "big", (2, 2, 2))
    pods = running_workers(core, namespace, rc["metadata"]["name"], 2)
    held = gpus_on_pool(core, pods, "a100")
    assert 12 <= held < 12 + 8, held


@pytest.mark.compat
def test_autoscaling_bounds_reach_the_raycluster(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    auto = {"minReplicas": 1, "maxReplicas": 2}
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL,
        llmservice(namespace, replicas=None, autoscaling=auto),
    )  # fmt: skip
    rc = wait_for(
        "autoscaling RayCluster",
        lambda: (
            (rc := raycluster(api, namespace, "llama")) is not None
            and rc["spec"].get("enableInTreeAutoscaling") is True
            and sizes(rc)[1:] == (1, 2)
            and rc
        ),
        WAIT_S,
    )
    name = rc["metadata"]["name"]

    patch_spec(api, namespace, "llama", {"autoscaling": {"maxReplicas": 3}})
    rc = wait_for(
        "maxReplicas 3 on the RayCluster",
        lambda: (
            (rc := raycluster(api, namespace, "llama")) is not None
            and sizes(rc)[1:] == (1, 3)
            and rc
        ),
        WAIT_S,
    )
    assert rc["metadata"]["name"] == name  # a bounds change never needs a new cluster
    ours = [
        m for m in rc["metadata"].get("managedFields") or []
        if m["manager"] == c.REPLICAS_FIELD_MANAGER
    ]  # fmt: skip
    assert ours, "the bounds were set by the operator's replicas field manager"

    # Autoscaling -> fixed: the autoscaler is part of the cluster spec, so KubeRay must bring up a
    # new cluster (it does once the old one serves; KWOK pods never do). Until then the operator
    # must not write a fixed count into the autoscaled cluster: that would fight Ray's autoscaler.
    patch_spec(api, namespace, "llama", {"autoscaling": None, "replicas": 2})
    wait_rs(
        api, namespace, "llama",
        lambda rs: rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is False,
        "RayService rendered without the autoscaler",
    )  # fmt: skip
    svc = wait_for(
        "status of the fixed-size generation",
        lambda: (
            (s := get_svc(api, namespace, "llama"))["status"].get("observedGeneration")
            == s["metadata"]["generation"]
            and s
        ),
        WAIT_S,
    )
    assert svc["status"]["replicas"] == 2
    rc = raycluster(api, namespace, "llama")
    assert rc is not None and rc["metadata"]["name"] == name
    assert sizes(rc)[1:] == (1, 3), "the autoscaled cluster keeps its bounds"
