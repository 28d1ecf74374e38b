"""The operator under stress: no needless writes, no fight with Ray's autoscaler, crashes and
API server restarts, on the real control plane."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from llmservice_operator.render import spec_hash
from llmservice_operator.validate import parse
from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.objects import RAY, get_rs, llmservice, worker_group
from tests.cluster.operator_process import (
    TIMER_INTERVAL_S,
    OperatorProcess,
    running_operator,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    with running_operator(cluster, request, "operator-resilience") as proc:
        yield proc


@pytest.fixture
def api(cluster: LocalCluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client)


def _create(api: client.CustomObjectsApi, obj: dict[str, Any]) -> None:
    ns = obj["metadata"]["namespace"]
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, obj)


def _operator_write_time(rs: dict[str, Any]) -> str | None:
    for entry in rs["metadata"].get("managedFields") or []:
        if entry.get("manager") == c.FIELD_MANAGER and entry.get("operation") == "Apply":
            return str(entry.get("time"))
    return None


def test_unchanged_spec_writes_nothing(
    operator: OperatorProcess, api: client.CustomObjectsApi, namespace: str
) -> None:
    _create(api, llmservice(namespace))
    rs = wait_for("RayService", lambda: get_rs(api, namespace, "llama"), 60)
    first = _operator_write_time(rs)
    assert first is not None
    time.sleep(2.5 * TIMER_INTERVAL_S)  # two timer passes and KubeRay status churn
    rs = get_rs(api, namespace, "llama")
    assert rs is not None and _operator_write_time(rs) == first


def test_autoscaled_worker_counts_are_left_to_ray(
    operator: OperatorProcess, api: client.CustomObjectsApi, namespace: str
) -> None:
    _create(
        api,
        llmservice(namespace, replicas=None, autoscaling={"minReplicas": 1, "maxReplicas": 3}),
    )
    rs = wait_for("RayService", lambda: get_rs(api, namespace, "llama"), 60)
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    # KubeRay names the RayCluster in its status before it creates it: wait for the object.
    cluster_name = wait_for(
        "RayCluster created by KubeRay",
        lambda: [
            r["metadata"]["name"]
            for r in api.list_namespaced_custom_object(*RAY, namespace, "rayclusters")["items"]
        ],
        60,
    )[0]
    # What Ray's autoscaler does under load: raise the RayCluster's worker replicas.
    api.patch_namespaced_custom_object(
        *RAY, namespace, "rayclusters", cluster_name,
        [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}],
        _content_type="application/json-patch+json",
    )  # fmt: skip
    time.sleep(2.5 * TIMER_INTERVAL_S)
    cluster = api.get_namespaced_custom_object(*RAY, namespace, "rayclusters", cluster_name)
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    rs = get_rs(api, namespace, "llama")
    assert rs is not None
    owned = [e for e in rs["metadata"]["managedFields"] if e.get("manager") == c.FIELD_MANAGER]
    assert all("f:replicas" not in str(e.get("fieldsV1")) for e in owned)


def _converged(api: client.CustomObjectsApi, namespace: str) -> bool:
    services = api.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)["items"]
    rayservices = api.list_namespaced_custom_object(*RAY, namespace, "rayservices")["items"]
    live = {s["metadata"]["uid"]: s for s in services if not s["metadata"].get("deletionTimestamp")}
    by_name = {r["metadata"]["name"]: r for r in rayservices}
    for svc in live.values():
        rs = by_name.get(svc["metadata"]["name"])
        want = spec_hash(parse({k: v for k, v in svc.items() if k != "status"}).spec)
        if rs is None or rs["metadata"]["annotations"].get(c.ANNOTATION_SPEC_HASH) != want:
            return False
    # No orphans: every RayService belongs to a live LLMService (deleted ones were collected).
    return all(r["metadata"]["ownerReferences"][0]["uid"] in live for r in rayservices) and len(
        rayservices
    ) == len(live)


def test_sigkill_during_a_burst_converges(
    operator: OperatorProcess,
    api: client.CustomObjectsApi,
    namespace: str,
    cluster: LocalCluster,
) -> None:
    rng = random.Random(20261126)
    names = [f"svc-{i}" for i in range(8)]
    kills = 0
    actions = 0
    for round_ in range(20):
        for name in rng.sample(names, 3):
            obj = llmservice(namespace, name=name, replicas=rng.randint(1, 3))
            change = {"spec": {"replicas": rng.randint(1, 3), "model": {"version": f"v{round_}"}}}
            try:
                _create(api, obj)
            except client.exceptions.ApiException as exc:
                if exc.status != 409:
                    raise
                if rng.random() < 0.2:
                    api.delete_namespaced_custom_object(
                        c.GROUP, c.VERSION, namespace, c.PLURAL, name
                    )
                else:
                    api.patch_namespaced_custom_object(
                        c.GROUP, c.VERSION, namespace, c.PLURAL, name,
                        change,
                        _content_type="application/merge-patch+json",
                    )  # fmt: skip
            actions += 1
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere inside a reconcile, or between
        operator.kill()
        kills += 1
        operator.start()
    began = time.monotonic()
    wait_for(
        "every LLMService converged after the crashes", lambda: _converged(api, namespace), 120
    )
    rayservices = api.list_namespaced_custom_object(*RAY, namespace, "rayservices")["items"]
    print(
        f"\ncrash test: {kills} SIGKILLs during {actions} creates/updates/deletes; "
        f"{len(rayservices)} RayServices; converged {time.monotonic() - began:.1f}s "
        "after the last restart"
    )
    assert kills >= 20


def test_api_server_restart_is_survived(
    operator: OperatorProcess,
    api: client.CustomObjectsApi,
    namespace: str,
    cluster: LocalCluster,
) -> None:
    _create(api, llmservice(namespace, name="before"))
    wait_for("RayService before restart", lambda: get_rs(api, namespace, "before"), 60)
    cluster.restart_apiserver()
    _create(api, llmservice(namespace, name="after"))
    api.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "before", {"spec": {"replicas": 3}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_for("RayService after restart", lambda: get_rs(api, namespace, "after"), 120)
    wait_for(
        "update after restart reached the RayService",
        lambda: (rs := get_rs(api, namespace, "before")) and worker_group(rs)["replicas"] == 3,
        120,
    )
    assert operator.proc is not None and operator.proc.poll() is None  # reconnected, not restarted
