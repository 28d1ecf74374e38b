"""The operator under stress: no needless writes, no fight with Ray's autoscaler, crashes and
API server restarts, on the real control plane.

"Nothing was written" is asserted only once the operator's own /metrics show that it reconciled
the LLMService again (llmservice_reconciles_total), so each such test waits for evidence, never
for a fixed time. The module's operator is cluster-wide, so those tests first wait until their
namespace holds the only LLMServices in the cluster: then every reconcile it counts is theirs.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from llmservice_operator.render import spec_hash
from llmservice_operator.validate import parse
from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.objects import RAY, get_rs, llmservice, serve_replicas, worker_group
from tests.cluster.operator_process import (
    APPLIES,
    RECONCILES,
    RESYNC_PASSES,
    TIMER_INTERVAL_S,
    Metrics,
    OperatorProcess,
    writes,
)

pytestmark = pytest.mark.cluster


def _create(api: client.CustomObjectsApi, obj: dict[str, Any]) -> None:
    ns = obj["metadata"]["namespace"]
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, obj)


# Two resync intervals, and the time a slow reconcile may take on 2 busy cores.
RECONCILES_TIMEOUT_S = 2 * TIMER_INTERVAL_S + 40


def _only_llmservices_in(api: client.CustomObjectsApi, namespace: str) -> None:
    """Wait until no LLMService exists outside `namespace` (earlier tests' namespaces are deleted
    without waiting): from then on the operator's counters count only this test's objects."""
    others: list[str] = []

    def alone() -> bool:
        listed: Any = api.list_cluster_custom_object(c.GROUP, c.VERSION, c.PLURAL)
        items: list[dict[str, Any]] = listed["items"]
        others[:] = [
            f"{o['metadata']['namespace']}/{o['metadata']['name']}"
            for o in items
            if o["metadata"]["namespace"] != namespace
        ]
        return not others

    try:
        wait_for("no LLMService outside the test's namespace", alone, 120)
    except TimeoutError:
        raise AssertionError(f"other LLMServices would be counted too: {others}") from None


def _wait_reconciles(operator: OperatorProcess, before: Metrics, count: int, what: str) -> Metrics:
    """Until `count` more reconciles ended well than in `before`, and two more completed resync
    passes: the periodic path ran too, not just event-triggered reconciles."""
    ok = before.value(RECONCILES, result="ok")
    passes = before.value(RESYNC_PASSES, outcome="ok") if before.has(RESYNC_PASSES) else 0

    def enough(m: Metrics) -> bool:
        if not m.has(RESYNC_PASSES) or m.value(RESYNC_PASSES, outcome="ok") < passes + 2:
            return False
        return m.value(RECONCILES, result="ok") >= ok + count

    return operator.wait_metrics(what, enough, RECONCILES_TIMEOUT_S)


def _applied_events(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    events = core.list_namespaced_event(namespace).items
    return [
        str(e.message) for e in events
        if e.reason == "Applied" and e.involved_object.name == name
        and str(e.message).startswith("RayService")
    ]  # fmt: skip


def _items(
    api: client.CustomObjectsApi, group: str, version: str, namespace: str, plural: str
) -> list[dict[str, Any]]:
    listed: Any = api.list_namespaced_custom_object(group, version, namespace, plural)
    return list(listed["items"])


def _operator_write_time(rs: dict[str, Any]) -> str | None:
    for entry in rs["metadata"].get("managedFields") or []:
        if entry.get("manager") == c.FIELD_MANAGER and entry.get("operation") == "Apply":
            return str(entry.get("time"))
    return None


def test_unchanged_spec_writes_nothing(
    operator: OperatorProcess,
    api: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    _only_llmservices_in(api, namespace)
    before = operator.metrics()
    _create(api, llmservice(namespace))
    rs = wait_for("RayService", lambda: get_rs(api, namespace, "llama"), 60)
    first = _operator_write_time(rs)
    assert first is not None
    # Every reconcile counted from here is of this LLMService: the first applied (and counts
    # itself after that), the next two had the unchanged spec in hand and the RayService to
    # compare it with. They come from the resync and from KubeRay's writes of the RayService.
    after = _wait_reconciles(operator, before, 3, "two reconciles after the one that applied")
    applies = after.value(APPLIES) - before.value(APPLIES)
    assert applies == 1, f"{applies:g} applies for one create and no change: {after}"
    applied = _applied_events(core, namespace, "llama")
    assert len(applied) == 1, applied
    now = get_rs(api, namespace, "llama")
    assert now is not None and _operator_write_time(now) == first


def test_autoscaled_worker_counts_are_left_to_ray(
    operator: OperatorProcess, api: client.CustomObjectsApi, namespace: str
) -> None:
    _only_llmservices_in(api, namespace)
    start = operator.metrics()
    _create(
        api,
        llmservice(namespace, replicas=None, autoscaling={"minReplicas": 1, "maxReplicas": 3}),
    )
    rs = wait_for("RayService", lambda: get_rs(api, namespace, "llama"), 60)
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    # KubeRay names the RayCluster in its status before it creates it: wait for the object.
    cluster_name = wait_for(
        "RayCluster created by KubeRay",
        lambda: [r["metadata"]["name"] for r in _items(api, *RAY, namespace, "rayclusters")],
        60,
    )[0]
    before = operator.wait_metrics(
        "the create's apply counted", lambda m: m.value(APPLIES) >= start.value(APPLIES) + 1
    )
    # What Ray's autoscaler does under load: raise the RayCluster's worker replicas.
    api.patch_namespaced_custom_object(
        *RAY, namespace, "rayclusters", cluster_name,
        [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}],
        _content_type="application/json-patch+json",
    )  # fmt: skip
    # A resync and an event-triggered reconcile may overlap, so up to two counted from here
    # began before the patch; the third began after it.
    after = _wait_reconciles(operator, before, 3, "three reconciles after the scale-up")
    assert writes(after) == writes(before), "wrote over the autoscaler's scale-up"
    cluster: Any = api.get_namespaced_custom_object(*RAY, namespace, "rayclusters", cluster_name)
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    now = get_rs(api, namespace, "llama")
    assert now is not None
    owned = [e for e in now["metadata"]["managedFields"] if e.get("manager") == c.FIELD_MANAGER]
    assert all("f:replicas" not in str(e.get("fieldsV1")) for e in owned)


def _converged(api: client.CustomObjectsApi, namespace: str) -> bool:
    services = _items(api, c.GROUP, c.VERSION, namespace, c.PLURAL)
    rayservices = _items(api, *RAY, namespace, "rayservices")
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
        # The (re)started operator is up and watching: its counters start from here.
        base = operator.wait_serving().value(RECONCILES)
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
        # Kill after its k-th reconcile from here (resumes and this round's changes): with more
        # on its queue, mostly in the middle of the next one; k=0 as the changes arrive.
        k = rng.randint(0, 2)

        def reached(m: Metrics, target: float = base + k) -> bool:
            return m.value(RECONCILES) >= target

        operator.wait_metrics(
            f"round {round_}: {k} reconciles before the kill", reached, RECONCILES_TIMEOUT_S
        )
        operator.kill()
        kills += 1
        operator.start()
    began = time.monotonic()
    wait_for(
        "every LLMService converged after the crashes", lambda: _converged(api, namespace), 120
    )
    rayservices = _items(api, *RAY, namespace, "rayservices")
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


# Long enough that several resync passes (one every TIMER_INTERVAL_S) meet the outage.
OUTAGE_S = 60.0


def _accepted(what: str, write: Callable[[], object]) -> None:
    """Retry a write the API server answers with a 5xx (etcd still timing out just after an
    outage); a create that went through before its answer was lost comes back as 409."""

    def once() -> bool:
        try:
            write()
        except client.ApiException as exc:
            if exc.status == 409:
                return True
            if exc.status >= 500:
                return False
            raise
        return True

    wait_for(what, once, 120)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_minute_without_the_control_plane_is_survived(
    operator: OperatorProcess,
    api: client.CustomObjectsApi,
    namespace: str,
    cluster: LocalCluster,
    component: str,
) -> None:
    _create(api, llmservice(namespace, name="steady"))
    wait_for("RayService steady", lambda: get_rs(api, namespace, "steady"), 60)
    before = operator.wait_metrics("a resync pass", lambda m: m.has(RESYNC_PASSES))
    cluster.outage(component, OUTAGE_S)

    during = operator.metrics()
    if component == "kube-apiserver":
        # The resync met the outage and counted it (a metric, read from the operator itself).
        # Without etcd the API server still answers reads from its watch cache, so there a
        # steady object's resync may see no failure at all: only what follows is asserted.
        failed = sum(
            during.value(RESYNC_PASSES, outcome=o) - before.value(RESYNC_PASSES, outcome=o)
            for o in ("list_failed", "error")
        )
        assert failed >= 1, during
    # ...and goes on: passes end well again, and changes made now converge. (Writes may still
    # time out for a while after etcd is back, 504 with the write maybe done: a user retries.)
    _accepted(
        "the edit after the outage",
        lambda: api.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, "steady", {"spec": {"replicas": 3}},
            _content_type="application/merge-patch+json",
        ),
    )  # fmt: skip
    _accepted(
        "the create after the outage", lambda: _create(api, llmservice(namespace, name="later"))
    )
    _wait_reconciles(
        operator, during, 2, f"reconciles and resync passes after the {component} outage"
    )
    wait_for("RayService later", lambda: get_rs(api, namespace, "later"), 120)
    wait_for(
        "the edit made after the outage reached the RayService",
        lambda: (rs := get_rs(api, namespace, "steady")) and worker_group(rs)["replicas"] == 3,
        120,
    )
    assert operator.proc is not None and operator.proc.poll() is None  # never restarted


def test_concurrent_spec_edits_end_with_the_last_one_applied(
    operator: OperatorProcess, api: client.CustomObjectsApi, namespace: str
) -> None:
    _create(api, llmservice(namespace, name="edited", replicas=1))
    wait_for("RayService edited", lambda: get_rs(api, namespace, "edited"), 60)

    def edit(values: list[int]) -> None:
        for v in values:
            api.patch_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, "edited", {"spec": {"replicas": v}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip

    # Two clients at once, no pauses: events, the resync and kopf's retries all see a stream of
    # generations and interleave their reconciles.
    clients = [
        threading.Thread(target=edit, args=([2, 3, 4, 5, 6, 7, 8, 9],)),
        threading.Thread(target=edit, args=([9, 8, 7, 6, 5, 4, 3, 2],)),
    ]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    final = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "edited")
    want, generation = final["spec"]["replicas"], final["metadata"]["generation"]

    def settled() -> bool:
        rs = get_rs(api, namespace, "edited")
        svc = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "edited")
        status = svc.get("status") or {}
        return bool(
            rs
            and worker_group(rs)["replicas"] == want
            and serve_replicas(rs) == want
            and status.get("observedGeneration") == generation
            and status.get("replicas") == want
        )

    wait_for(f"the last edit (replicas {want}, generation {generation}) everywhere", settled, 120)


def _gone(api: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, name)
    except client.ApiException as exc:
        return exc.status == 404
    return False


def _controlled_by(api: client.CustomObjectsApi, namespace: str, name: str, uid: str) -> Any:
    rs = get_rs(api, namespace, name)
    owners = (rs or {}).get("metadata", {}).get("ownerReferences") or []
    return rs if [o["uid"] for o in owners] == [uid] else None


def _uid(api: client.CustomObjectsApi, namespace: str, name: str) -> str:
    obj: Any = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, name)
    return str(obj["metadata"]["uid"])


def test_delete_then_create_again_never_waits_for_the_garbage_collector(
    cluster: LocalCluster, operator: OperatorProcess, api: client.CustomObjectsApi, namespace: str
) -> None:
    """`kubectl delete llmsvc x`, then `kubectl apply` of x again, with no garbage collector
    (stopped here; after API server trouble its retries back off for many minutes)."""
    core = client.CoreV1Api(cluster.api_client)
    _create(api, llmservice(namespace, name="again"))
    wait_for("RayService again", lambda: get_rs(api, namespace, "again"), 60)
    with cluster.without_controller_manager():
        # The operator sees the deletion: it removes the children itself.
        api.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "again")
        wait_for("the old LLMService gone", lambda: _gone(api, namespace, "again"), 60)
        wait_for("its RayService gone", lambda: get_rs(api, namespace, "again") is None, 60)

        # The operator was down during the deletion: the new LLMService of that name finds
        # the old one's RayService, and replaces it instead of reporting a Conflict.
        _create(api, llmservice(namespace, name="again"))
        wait_for("RayService again", lambda: get_rs(api, namespace, "again"), 60)
        operator.kill()
        old_uid = _uid(api, namespace, "again")
        api.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "again")
        wait_for("the LLMService gone", lambda: _gone(api, namespace, "again"), 60)
        left = _controlled_by(api, namespace, "again", old_uid)
        assert left is not None  # nothing removed it: the leftover is there
        _create(api, llmservice(namespace, name="again"))
        new_uid = _uid(api, namespace, "again")
        operator.start()
        rs = wait_for(
            "a RayService of the new LLMService",
            lambda: _controlled_by(api, namespace, "again", new_uid),
            120,
        )
    assert rs["metadata"]["uid"] != left["metadata"]["uid"]
    svc = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "again")
    reasons = {cond["type"]: cond["reason"] for cond in svc["status"]["conditions"]}
    assert reasons["Ready"] != "Conflict", svc["status"]
    events = core.list_namespaced_event(namespace).items
    assert [e for e in events if e.reason == "Replacing" and e.involved_object.uid == new_uid]
