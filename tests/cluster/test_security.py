"""What the operator creates is secure by default, judged by the real API server.

The `restricted` Pod Security Standard is enforced by kube-apiserver's PodSecurity admission
when KubeRay creates the pods: a pod it rejects never exists, and KubeRay says so in a Warning
event on the RayCluster. So these tests look at the pods KubeRay really made (KWOK runs them),
and show the rejection a RayService without the rendered securityContext gets in the same
namespace.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from llmservice_operator.render import SA_TOKEN_PATH, render_rayservice
from llmservice_operator.validate import parse
from tests.cluster.harness import REPO_ROOT, LocalCluster, wait_for
from tests.cluster.objects import RAY, WAIT_S, get_svc, llmservice, patch_spec, raycluster
from tests.cluster.operator_process import OperatorProcess
from tests.unit.examples import example_services

pytestmark = pytest.mark.cluster
EXAMPLES = example_services()

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
        # Ray's session directory is an emptyDir, writable whatever the image's filesystem.
        (tmp,) = [m for m in pod.spec.containers[0].volume_mounts if m.mount_path == "/tmp/ray"]
        volume = next(v for v in pod.spec.volumes if v.name == tmp.name)
        assert volume.empty_dir is not None
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
    # KubeRay reused the rendered /tmp/ray emptyDir for its sidecar instead of adding another.
    assert [v.name for v in head.spec.volumes].count("ray-logs") == 1
    for ctr in head.spec.containers:
        assert ("ray-logs", "/tmp/ray") in {(m.name, m.mount_path) for m in ctr.volume_mounts}
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


def kuberay_ports() -> dict[str, int]:
    """KubeRay's Default*Port constants, from the very module the test ground's KubeRay runs."""
    module = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "github.com/ray-project/kuberay/ray-operator"],
        cwd=REPO_ROOT / "hack" / "tools" / "kuberay",
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    source = (Path(module) / "controllers" / "ray" / "utils" / "constant.go").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"\bDefault(\w+)Port\s*=\s*(\d+)", source)}


def _policy(net: client.NetworkingV1Api, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj = net.read_namespaced_network_policy(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(client.ApiClient().sanitize_for_serialization(obj))


def test_the_networkpolicy_closes_rays_ports_and_is_owned_and_repaired(
    operator: OperatorProcess,
    api: client.CustomObjectsApi,
    core: client.CoreV1Api,
    cluster: LocalCluster,
    namespace: str,
) -> None:
    net = client.NetworkingV1Api(cluster.api_client)
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace, replicas=1)
    )
    policy = wait_for("NetworkPolicy llama", lambda: _policy(net, namespace, "llama"), WAIT_S)
    svc = get_svc(api, namespace, "llama")
    (owner,) = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "LLMService",
        svc["metadata"]["uid"],
        True,
    )

    ports = kuberay_ports()
    rules = policy["spec"]["ingress"]
    open_to_all = {p["port"] for r in rules if "from" not in r for p in r["ports"]}
    assert open_to_all == {ports["Serving"], ports["Metrics"]}
    (dashboard,) = [r for r in rules if r.get("ports") and "from" in r]
    assert [p["port"] for p in dashboard["ports"]] == [ports["Dashboard"]]
    callers = {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in dashboard["from"]}
    assert callers == {"kuberay-operator", "llmservice-operator"}
    (internal,) = [r for r in rules if "ports" not in r]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert internal["from"] == [{"podSelector": {"matchLabels": selector}}]

    # The policy selects every pod KubeRay made, and every port those pods declare that is not
    # open to all is one KubeRay knows as a Ray-internal or dashboard port.
    pods = _running(core, namespace, _cluster_name(api, namespace, "llama"), {"head", "worker"})
    declared = set()
    for pod in pods:
        assert selector.items() <= pod.metadata.labels.items(), pod.metadata.name
        declared |= {p.container_port for ctr in pod.spec.containers for p in ctr.ports or []}
    closed = {ports[k] for k in ("GcsServer", "Dashboard", "Client", "DashboardAgentListen")}
    assert declared - open_to_all <= closed and not closed & open_to_all
    assert {ports["GcsServer"], ports["Dashboard"], ports["Client"]} <= declared

    # A hand edit that opens everything (one allow-all rule) is drift: the operator repairs it.
    net.patch_namespaced_network_policy(
        "llama", namespace, {"spec": {"ingress": [{}]}}, field_manager="someone"
    )
    wait_for(
        "the operator to repair the NetworkPolicy",
        lambda: (p := _policy(net, namespace, "llama")) and p["spec"] == policy["spec"],
        WAIT_S,
    )

    # Switched off: the operator deletes its policy (users who bring their own keep only theirs).
    patch_spec(api, namespace, "llama", {"networkPolicy": {"enabled": False}})
    wait_for("NetworkPolicy gone", lambda: _policy(net, namespace, "llama") is None, WAIT_S)


def test_s3_credentials_from_a_secret_are_never_copied_anywhere(
    operator: OperatorProcess,
    api: client.CustomObjectsApi,
    core: client.CoreV1Api,
    cluster: LocalCluster,
    namespace: str,
) -> None:
    secret_value = f"s3cr3t-{namespace}"  # distinctive: any copy of it anywhere is found
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="model-bucket"),
            string_data={"access-key-id": "AKIA-test", "secret-access-key": secret_value},
        ),
    )
    svc = copy.deepcopy(EXAMPLES["llama-8b-s3"])
    svc["metadata"] = {"name": "s3", "namespace": namespace}
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, svc)
    pods = _running(core, namespace, _cluster_name(api, namespace, "s3"), {"head", "worker"})
    for pod in pods:
        env = {e.name: e for e in pod.spec.containers[0].env}
        ref = env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref
        assert (ref.name, ref.key) == ("model-bucket", "secret-access-key")
        assert env["AWS_SECRET_ACCESS_KEY"].value is None

    wait_for(
        "the operator's status on the LLMService",
        lambda: (get_svc(api, namespace, "s3").get("status") or {}).get("observedGeneration"),
        WAIT_S,
    )
    # Everything the operator and KubeRay wrote: the LLMService (spec, status; kopf keeps its
    # copy of the spec in the operator's memory), RayService, RayCluster, pods, NetworkPolicy,
    # events, the serve_app ConfigMap.
    serialize = client.ApiClient().sanitize_for_serialization
    written = [
        api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "s3"),
        *api.list_namespaced_custom_object(*RAY, namespace, "rayservices")["items"],
        *api.list_namespaced_custom_object(*RAY, namespace, "rayclusters")["items"],
        serialize(core.list_namespaced_pod(namespace)),
        serialize(
            client.NetworkingV1Api(cluster.api_client).list_namespaced_network_policy(namespace)
        ),
        serialize(core.list_namespaced_event(namespace)),
        serialize(core.list_namespaced_config_map(namespace)),
    ]
    text = json.dumps(written)
    assert "secretKeyRef" in text
    assert secret_value not in text
