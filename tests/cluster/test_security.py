"""What the operator creates is secure by default, judged by the real API server.

The `restricted` Pod Security Standard is enforced by kube-apiserver's PodSecurity admission
when KubeRay creates the pods: a pod it rejects never exists, and KubeRay says so in a Warning
event on the RayCluster. So these tests look at the pods KubeRay really made (KWOK runs them),
and show the rejection a RayService without the rendered securityContext gets in the same
namespace.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from llmservice_operator.render import SA_TOKEN_PATH, render_rayservice
from llmservice_operator.validate import parse
from tests.cluster.harness import wait_for
from tests.cluster.objects import RAY, WAIT_S, llmservice, raycluster
from tests.cluster.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def _restrict(core: client.CoreV1Api, ns: str) -> None:
    core.patch_namespace(ns, {"metadata": {"labels": RESTRICTED}})


def _pods(core: client.CoreV1Api, ns: str, cluster: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(ns, label_selector=f"ray.io/cluster={cluster}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def _running(core: client.CoreV1Api, ns: str, cluster: str, kinds: set[str]) -> list[Any]:
    """The cluster's pods once one of each node type in `kinds` is Running."""

    def ready() -> list[Any] | None:
        pods = _pods(core, ns, cluster)
        running = {
            p.metadata.labels["ray.io/node-type"] for p in pods if p.status.phase == "Running"
        }
        return pods if kinds <= running else None

    return wait_for(f"{sorted(kinds)} pods of {cluster} Running", ready, WAIT_S)


def _token_mounts(pod: client.V1Pod) -> dict[str, bool]:
    """Container name -> whether it mounts an API token (the kubelet's or a projected one)."""
    return {
        ctr.name: any(m.mount_path == SA_TOKEN_PATH for m in ctr.volume_mounts or [])
        for ctr in [*pod.spec.containers, *(pod.spec.init_containers or [])]
    }


def _cluster_name(api: client.CustomObjectsApi, ns: str, name: str) -> str:
    rc = wait_for(f"RayCluster of {name}", lambda: raycluster(api, ns, name), WAIT_S)
    return str(rc["metadata"]["name"])


def test_ray_pods_are_admitted_where_restricted_is_enforced(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    _restrict(core, namespace)
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace, replicas=1)
    )
    pods = _running(core, namespace, _cluster_name(api, namespace, "llama"), {"head", "worker"})
    for pod in pods:
        # Admitted means PodSecurity found nothing; the fields say why, and that KubeRay's
        # injected wait-gcs-ready init container inherited the worker's securityContext.
        assert pod.spec.security_context.run_as_non_root is True
        for ctr in [*pod.spec.containers, *(pod.spec.init_containers or [])]:
            assert ctr.security_context.allow_privilege_escalation is False, ctr.name
            assert ctr.security_context.capabilities.drop == ["ALL"], ctr.name
        # No Ray container holds an API token: the ServiceAccount admission plugin added none.
        assert pod.spec.automount_service_account_token is False
        assert not any(_token_mounts(pod).values()), pod.metadata.name
    assert {p.metadata.labels["ray.io/node-type"] for p in pods} == {"head", "worker"}


def test_only_the_autoscaler_sidecar_gets_a_token(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    _restrict(core, namespace)
    auto = {"minReplicas": 1, "maxReplicas": 2}
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL,
        llmservice(namespace, replicas=None, autoscaling=auto),
    )  # fmt: skip
    pods = _running(core, namespace, _cluster_name(api, namespace, "llama"), {"head"})
    (head,) = [p for p in pods if p.metadata.labels["ray.io/node-type"] == "head"]
    assert _token_mounts(head) == {"ray-head": False, "autoscaler": True}
    # The sidecar runs as KubeRay's autoscaler ServiceAccount, which KubeRay binds to its Role.
    assert head.spec.service_account_name == head.metadata.labels["ray.io/cluster"]


def test_without_the_rendered_security_context_the_pods_are_rejected(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    """The before: what this change fixed, on the same API server (so the test above can fail)."""
    _restrict(core, namespace)
    rs = render_rayservice(parse(llmservice(namespace, name="plain", replicas=1)))
    bare = copy.deepcopy(rs)
    cluster = bare["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        pod.pop("securityContext")
        for ctr in pod["containers"]:
            ctr.pop("securityContext")
    api.create_namespaced_custom_object(*RAY, namespace, "rayservices", bare)
    rc_name = _cluster_name(api, namespace, "plain")

    def rejected() -> list[str]:
        events = core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={rc_name}"
        ).items
        return [
            e.message for e in events
            if e.reason == "FailedToCreateHeadPod" and "violates PodSecurity" in e.message
        ]  # fmt: skip

    (message, *_) = wait_for("KubeRay's FailedToCreateHeadPod event", rejected, WAIT_S)
    assert "restricted:latest" in message and "allowPrivilegeEscalation" in message
    assert _pods(core, namespace, rc_name) == []
