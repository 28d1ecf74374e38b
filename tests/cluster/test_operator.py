"""The operator on the real control plane with the real KubeRay operator and KWOK GPU nodes.

What "Ready" means here: KubeRay marks a RayService Ready only once its Serve app answers on the
Ray head's dashboard. KWOK pods run no Ray, so KubeRay reports the RayService as Initializing and
the LLMService truthfully stays Ready=False (NotServing) and Progressing=True. Serving for real is
covered by the serve tests and `make demo`.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from tests.cluster.harness import wait_for
from tests.cluster.objects import (
    RAY,
    WAIT_S,
    condition,
    get_rs,
    get_svc,
    llmservice,
    patch_spec,
    serve_args,
    serve_replicas,
    wait_ready_reason,
    wait_rs,
    warned,
    worker_group,
)
from tests.cluster.operator_process import (
    TIMER_INTERVAL_S,
    OperatorProcess,
)

pytestmark = pytest.mark.cluster


@pytest.mark.compat
def test_create_schedules_on_the_gpu_pool_and_reports_truthfully(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )
    rs = wait_rs(api, namespace, "llama", lambda rs: True, "RayService created by the operator")
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("LLMService", "llama", True)
    assert "argocd.argoproj.io/instance" not in rs["metadata"].get("labels", {})

    def workers_running() -> list[Any]:
        pods = core.list_namespaced_pod(namespace, label_selector="ray.io/node-type=worker").items
        return pods if len(pods) == 2 and all(p.status.phase == "Running" for p in pods) else []

    pods = wait_for("2 worker pods Running", workers_running, WAIT_S)
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["llmservice.dev/pool"] == "l4"
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"

    svc = wait_for(
        "LLMService status observed",
        lambda: (
            (s := get_svc(api, namespace, "llama")).get("status", {}).get("observedGeneration")
            and s
        ),
        WAIT_S,
    )
    status = svc["status"]
    assert status["rayServiceName"] == "llama" and status["replicas"] == 2
    assert status["selector"] == "llmservice.dev/name=llama"
    # No Ray runs in KWOK pods, so KubeRay never sees Serve running: not Ready, and saying so.
    assert condition(svc, "Ready")["status"] == "False"
    assert condition(svc, "Progressing")["status"] == "True"
    assert all(
        cond["observedGeneration"] == svc["metadata"]["generation"] for cond in status["conditions"]
    )
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=llama").items
    assert any(e.reason == "Applied" for e in events)


@pytest.mark.compat
def test_replicas_scale_and_versions_reach_the_rayservice(
    operator: OperatorProcess, api: client.CustomObjectsApi, namespace: str
) -> None:
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )
    wait_rs(api, namespace, "llama", lambda rs: True, "RayService created")

    patch_spec(api, namespace, "llama", {"replicas": 3})
    rs = wait_rs(
        api, namespace, "llama",
        lambda rs: serve_replicas(rs) == 3,
        "num_replicas 3",
    )  # fmt: skip
    assert worker_group(rs)["replicas"] == 3

    # The scale subresource (kubectl scale, or an HPA) drives the same field.
    api.patch_namespaced_custom_object_scale(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "llama", {"spec": {"replicas": 1}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_rs(
        api, namespace, "llama",
        lambda rs: worker_group(rs)["replicas"] == 1,
        "worker group scaled to 1 via the scale subresource",
    )  # fmt: skip

    # InPlace: a new version changes only the Serve config.
    before = get_rs(api, namespace, "llama")
    assert before is not None
    patch_spec(api, namespace, "llama", {"model": {"version": "v2"}})
    rs = wait_rs(
        api, namespace, "llama", lambda rs: serve_args(rs)["model_version"] == "v2", "version v2"
    )
    assert rs["spec"]["rayClusterConfig"] == before["spec"]["rayClusterConfig"]
    # No Ray runs on KWOK: Serve never runs v2, so v2 stays pending and nothing is active.
    svc = wait_for(
        "pendingVersion v2",
        lambda: (
            (s := get_svc(api, namespace, "llama"))["status"].get("pendingVersion") == "v2" and s
        ),
        WAIT_S,
    )
    assert svc["status"].get("activeVersion") is None
    assert condition(svc, "Progressing")["status"] == "True"

    # BlueGreen: a new version changes the cluster spec, so KubeRay upgrades to a new cluster.
    patch_spec(
        api, namespace, "llama", {"rollout": {"strategy": "BlueGreen"}, "model": {"version": "v3"}}
    )
    rs = wait_rs(
        api, namespace, "llama", lambda rs: serve_args(rs)["model_version"] == "v3", "version v3"
    )
    labels = worker_group(rs)["template"]["metadata"]["labels"]
    assert labels[c.LABEL_MODEL_VERSION] == "v3"

    # Change of GPU pool: the worker group follows the profile.
    a100 = {"llmservice.dev/pool": "a100"}
    patch_spec(
        api,
        namespace,
        "llama",
        {"gpu": {"acceleratorType": "A100", "gpusPerNode": 8, "nodeSelector": a100}},
    )
    rs = wait_rs(
        api, namespace, "llama",
        lambda rs: worker_group(rs)["template"]["spec"]["nodeSelector"] == a100,
        "worker group on the a100 pool",
    )  # fmt: skip
    assert serve_args(rs)["accelerator_type"] == "A100"


def test_hand_edits_and_deletes_are_repaired(
    operator: OperatorProcess, api: client.CustomObjectsApi, namespace: str
) -> None:
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )
    rs = wait_rs(api, namespace, "llama", lambda rs: True, "RayService created")
    original = rs["spec"]["serveConfigV2"]

    api.patch_namespaced_custom_object(
        *RAY, namespace, "rayservices", "llama", {"spec": {"serveConfigV2": "applications: []\n"}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_rs(
        api, namespace, "llama", lambda rs: rs["spec"]["serveConfigV2"] == original,
        "hand edit reverted",
    )  # fmt: skip

    api.delete_namespaced_custom_object(*RAY, namespace, "rayservices", "llama")
    wait_for(
        "deleted RayService re-created",
        lambda: (
            (rs := get_rs(api, namespace, "llama")) is not None
            and not rs["metadata"].get("deletionTimestamp")
        ),
        WAIT_S + 2 * TIMER_INTERVAL_S,
    )


def test_an_apply_the_api_server_refuses_is_apply_failed_and_retried(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    # A quota of zero RayServices: the API server itself refuses the create (403).
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-rayservices"),
        spec=client.V1ResourceQuotaSpec(hard={"count/rayservices.ray.io": "0"}),
    )
    core.create_namespaced_resource_quota(namespace, quota)
    wait_for(
        "quota status",
        lambda: core.read_namespaced_resource_quota("no-rayservices", namespace).status or {},
        WAIT_S,
    )
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )
    svc = wait_ready_reason(api, namespace, "llama", "ApplyFailed")
    assert "403" in condition(svc, "Ready")["message"]
    assert condition(svc, "Degraded")["status"] == "True"
    assert get_rs(api, namespace, "llama") is None
    wait_for(
        "ApplyFailed Warning event", lambda: warned(core, namespace, "llama", "ApplyFailed"), WAIT_S
    )

    # The refusal is lifted: the retry (with back-off) applies, nobody touches the spec.
    core.delete_namespaced_resource_quota("no-rayservices", namespace)
    wait_for("RayService applied on retry", lambda: get_rs(api, namespace, "llama"), 120)
    wait_for(
        "ApplyFailed cleared",
        lambda: condition(get_svc(api, namespace, "llama"), "Ready").get("reason") != "ApplyFailed",
        WAIT_S,
    )


def test_a_foreign_rayservice_of_the_same_name_is_left_alone(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    theirs = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "llama", "labels": {"team": "someone-else"}},
        "spec": {
            "serveConfigV2": "applications: []\n",
            "rayClusterConfig": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
                "containers": [{"name": "ray-head", "image": "rayproject/ray:2.60.0"}]
            }}}},
        },
    }  # fmt: skip
    api.create_namespaced_custom_object(*RAY, namespace, "rayservices", theirs)
    before = get_rs(api, namespace, "llama")
    assert before is not None
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )
    svc = wait_ready_reason(api, namespace, "llama", "Conflict")
    assert "no LLMService controls it" in condition(svc, "Ready")["message"]
    assert condition(svc, "Degraded")["status"] == "True"
    wait_for("Conflict Warning event", lambda: warned(core, namespace, "llama", "Conflict"), WAIT_S)
    after = get_rs(api, namespace, "llama")
    assert after is not None and after["spec"] == before["spec"]
    assert not after["metadata"].get("ownerReferences")
    managers = {m["manager"] for m in after["metadata"].get("managedFields") or []}
    assert c.FIELD_MANAGER not in managers, managers  # KubeRay writes its status; we write nothing

    # Its owner removes it: the LLMService gets its own on the next resync.
    api.delete_namespaced_custom_object(*RAY, namespace, "rayservices", "llama")
    rs = wait_rs(
        api, namespace, "llama",
        lambda rs: (rs["metadata"].get("ownerReferences") or [{}])[0].get("kind") == "LLMService",
        "the operator's own RayService",
    )  # fmt: skip
    assert (
        rs["metadata"]["ownerReferences"][0]["uid"]
        == get_svc(api, namespace, "llama")["metadata"]["uid"]
    )


def test_invalid_spec_is_reported_and_nothing_is_applied(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )
    before = wait_rs(api, namespace, "llama", lambda rs: True, "RayService created")

    # Passes the CRD schema, fails the semantic rules: TP 4 cannot fit a 1-GPU node.
    patch_spec(api, namespace, "llama", {"engine": {"tensorParallelSize": 4}})
    svc = wait_ready_reason(api, namespace, "llama", "InvalidSpec")
    assert "spec.engine.tensorParallelSize" in condition(svc, "Ready")["message"]
    wait_for(
        "InvalidSpec Warning event", lambda: warned(core, namespace, "llama", "InvalidSpec"), WAIT_S
    )
    after = get_rs(api, namespace, "llama")
    assert after is not None and after["spec"] == before["spec"]

    patch_spec(api, namespace, "llama", {"engine": {"tensorParallelSize": 1}, "replicas": 1})

    def recovered() -> bool:
        rs = get_rs(api, namespace, "llama")
        reason = condition(get_svc(api, namespace, "llama"), "Ready").get("reason")
        return rs is not None and reason != "InvalidSpec" and worker_group(rs)["replicas"] == 1

    wait_for("recovery after the fix", recovered, WAIT_S)


def test_delete_removes_every_child(
    operator: OperatorProcess, api: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )
    wait_for(
        "RayCluster created by KubeRay",
        lambda: api.list_namespaced_custom_object(*RAY, namespace, "rayclusters")["items"],
        WAIT_S,
    )
    api.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "llama")

    def all_gone() -> bool:
        return not (
            api.list_namespaced_custom_object(*RAY, namespace, "rayservices")["items"]
            or api.list_namespaced_custom_object(*RAY, namespace, "rayclusters")["items"]
            or core.list_namespaced_pod(namespace).items
        )

    wait_for("RayService, RayCluster and pods garbage-collected", all_gone, 90)
