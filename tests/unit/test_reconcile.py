"""reconcile() against an in-memory Kube: what it applies, scales, reports and raises."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf
import pytest

from llmservice_operator.reconcile import (
    CHILDREN,
    BackedOff,
    _counted,
    forget,
    on_child,
    reconcile,
)
from tests.unit.examples import example_services
from tests.unit.fake_kube import FakeKube
from tests.unit.loops import run_until
from tests.unit.test_scale import SERVE_DETAILS

NS = "ns"


def tiny(replicas: int = 1, **spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(example_services()["tiny"])
    obj["metadata"] = {"name": "tiny", "namespace": NS, "uid": "u1", "generation": 1}
    obj["spec"].update(replicas=replicas, **spec)
    return obj


def kuberay_acts(kube: FakeKube, active: str | None = "tiny-a", pending: str | None = None,
                 upgrading: bool = False, ready: bool = True) -> None:  # fmt: skip
    """What KubeRay would write into the RayService's status."""
    rs = kube.rayservices[(NS, "tiny")]
    rs["status"] = {
        "observedGeneration": rs["metadata"]["generation"],
        "conditions": [
            {"type": "Ready", "status": str(ready), "reason": "NonZeroServeEndpoints"},
            {"type": "UpgradeInProgress", "status": str(upgrading), "reason": "x"},
        ],
        "activeServiceStatus": {"rayClusterName": active, "applicationStatuses": {"llm": {}}}
        if active
        else {},
        "pendingServiceStatus": {"rayClusterName": pending} if pending else {},
    }


def serve_on(kube: FakeKube, cluster: str, running: int, target: int, version: str = "v1",
             direct: bool = False) -> None:  # fmt: skip
    """Serve's details on ``cluster``: the router and version ``a``, or (``direct``, the GPU
    fast path) the model's own application as the ingress."""
    details = copy.deepcopy(SERVE_DETAILS)
    app = details["applications"]["llm-a"]
    if direct:
        details["applications"] = {"llm": app}
    app["deployed_app_config"]["args"]["model_version"] = version
    dep = app["deployments"]["LLMServer:tiny-llama"]
    dep["target_num_replicas"] = target
    dep["replicas"] = [{"state": "RUNNING", "node_ip": f"10.250.0.{i + 2}"} for i in range(running)]
    kube.serve[(NS, f"{cluster}-head-svc")] = details


def cpu_group(replicas: int) -> dict[str, Any]:
    return {"groupName": "cpu", "replicas": replicas, "minReplicas": replicas,
            "maxReplicas": replicas, "template": {}}  # fmt: skip


CANARY_10 = {"strategy": "Canary", "canary": {"steps": [10, 100], "pauseSeconds": 0}}


def serving_v1(kube: FakeKube, counted: bool = False) -> dict[str, Any]:
    """v1 created under CANARY_10 (through ``_counted`` and kept as the live object when
    ``counted``), KubeRay and Serve running it; returns the status written."""
    body = tiny(rollout=CANARY_10)
    if counted:
        kube.llmservices[(NS, "tiny")] = body
        _counted(kube, body, "create")
    else:
        reconcile(kube, body, "create")
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(1)], ready_workers=1)
    kube.serve_runs_config(NS, "tiny", "tiny-a")
    return kube.statuses[-1]


def v2_of(status: dict[str, Any] | None = None) -> dict[str, Any]:
    """The v2 edit of serving_v1's LLMService (generation 2), with the status it had."""
    body = tiny(rollout=CANARY_10, model={"source": "/models/tiny-llama", "version": "v2",
                                          "servedModelName": "tiny-llama"})  # fmt: skip
    body["metadata"]["generation"] = 2
    if status is not None:
        body["status"] = status
    return body


def test_create_applies_the_rayservice_and_reports_creating() -> None:
    kube = FakeKube()
    status = reconcile(kube, tiny(), "create")
    assert (NS, "tiny") in kube.rayservices
    assert status["phase"] == "Pending" and status["readyReplicas"] == 0
    assert kube.events[0][:2] == ("Normal", "Applied")
    # One event for both children (an event is a write: one per reconcile, not per child).
    (applied,) = [e for e in kube.events if e[1] == "Applied"]
    assert applied[2].startswith("RayService tiny created, NetworkPolicy tiny created (create,")


def test_scale_up_reaches_the_raycluster_and_status_waits_for_serve() -> None:
    kube = FakeKube()
    reconcile(kube, tiny(replicas=1), "create")
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(1)], ready_workers=1)
    serve_on(kube, "tiny-a", running=1, target=1)
    status = reconcile(kube, tiny(replicas=2), "update")
    group = kube.rayclusters[(NS, "tiny-a")]["spec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (2, 2, 2)
    assert any(e[1] == "Scaled" and "replicas 1->2" in e[2] for e in kube.events)
    progressing = status["conditions"][1]
    assert (progressing["status"], progressing["reason"]) == ("True", "WaitingForKubeRay")
    kuberay_acts(kube)  # KubeRay took the new serve config; Serve still runs one replica
    status = reconcile(kube, tiny(replicas=2), "resync")
    assert status["readyReplicas"] == 1  # what runs, not what was asked for
    progressing = status["conditions"][1]
    assert (progressing["status"], progressing["reason"]) == ("True", "Scaling")


def test_scale_down_waits_for_serve_then_deletes_the_idle_worker() -> None:
    kube = FakeKube()
    reconcile(kube, tiny(replicas=2), "create")
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(2)], ready_workers=2)
    kube.pods[(NS, "tiny-a")] = [
        {"name": "w1", "ip": "10.250.0.2", "group": "cpu"},
        {"name": "w2", "ip": "10.250.0.3", "group": "cpu"},
    ]
    serve_on(kube, "tiny-a", running=2, target=2)
    reconcile(kube, tiny(replicas=1), "update")
    assert kube.cluster_patches == []  # Serve still runs two replicas: keep both pods
    serve_on(kube, "tiny-a", running=1, target=1)  # Serve let go of the one on 10.250.0.3
    reconcile(kube, tiny(replicas=1), "update")
    group = kube.rayclusters[(NS, "tiny-a")]["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 1
    assert group["scaleStrategy"] == {"workersToDelete": ["w2"]}


def test_during_an_upgrade_only_the_pending_cluster_is_sized() -> None:
    kube = FakeKube()
    reconcile(kube, tiny(replicas=1), "create")
    kuberay_acts(kube, active="tiny-a", pending="tiny-b", upgrading=True)
    kube.add_cluster(NS, "tiny-a", [cpu_group(1)], ready_workers=1)
    kube.add_cluster(NS, "tiny-b", [cpu_group(1)], ready_workers=0)
    reconcile(kube, tiny(replicas=2), "update")
    assert [name for name, _ in kube.cluster_patches] == ["tiny-b"]


def test_an_apply_the_api_server_refuses_is_apply_failed_and_retried() -> None:
    kube = FakeKube()

    def refuse(_: Any) -> None:
        raise kopf.PermanentError("apply RayService ns/tiny: HTTP 403 forbidden")

    kube.apply_hook = refuse
    with pytest.raises(kopf.TemporaryError) as raised:
        reconcile(kube, tiny(), "create", attempt=3)
    assert raised.value.delay is not None and 2.5 <= raised.value.delay <= 40
    ready = kube.statuses[-1]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert "403" in ready["message"]
    assert kube.events[-1][:2] == ("Warning", "ApplyFailed")


def test_a_new_generation_is_not_judged_by_an_older_ones_refusal() -> None:
    """Right after writing a generation KubeRay has not seen, events can only be about an older
    one: not looked up (an events LIST scans the namespace; a burst made that quadratic)."""
    kube = FakeKube()
    reconcile(kube, tiny(), "create")
    assert kube.rejection_lookups == 0
    rs = kube.rayservices[(NS, "tiny")]
    rs["status"] = {"observedGeneration": 0}
    kube.rejections[rs["metadata"]["uid"]] = "InvalidRayServiceSpec: bad"
    reconcile(kube, tiny(), "resync")  # same generation, still not observed: looked up
    assert kube.rejection_lookups == 1
    status = reconcile(kube, tiny(replicas=2), "update")  # a new generation replaces it
    assert kube.rejection_lookups == 1
    assert kube.rayservices[(NS, "tiny")]["metadata"]["generation"] == 2
    reasons = {cond["reason"] for cond in status["conditions"]}
    assert "ValidationFailed" not in reasons, status["conditions"]


def test_kuberay_rejection_becomes_degraded() -> None:
    kube = FakeKube()
    reconcile(kube, tiny(), "create")
    rs = kube.rayservices[(NS, "tiny")]
    rs["status"] = {"observedGeneration": 0}
    kube.rejections[rs["metadata"]["uid"]] = "InvalidRayServiceSpec: bad"
    status = reconcile(kube, tiny(), "resync")
    degraded = status["conditions"][2]
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True", "ValidationFailed", "InvalidRayServiceSpec: bad",
    )  # fmt: skip


def test_an_unchanged_world_writes_nothing() -> None:
    kube = FakeKube()
    reconcile(kube, tiny(), "create")
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(1)], ready_workers=1)
    serve_on(kube, "tiny-a", running=1, target=1)
    body = tiny()
    body["status"] = reconcile(kube, body, "resync")
    writes = len(kube.statuses)
    reconcile(kube, body, "resync")
    assert len(kube.statuses) == writes and kube.cluster_patches == []


def test_a_rayservice_this_llmservice_does_not_control_is_never_adopted() -> None:
    kube = FakeKube()
    foreign = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "tiny", "namespace": NS, "generation": 1, "labels": {"team": "x"}},
        "spec": {"serveConfigV2": "applications: []\n"},
    }
    kube.rayservices[(NS, "tiny")] = copy.deepcopy(foreign)
    with pytest.raises(kopf.PermanentError, match="not adopting"):
        reconcile(kube, tiny(), "create")
    assert kube.rayservices[(NS, "tiny")] == foreign  # untouched: no apply, no owner reference
    ready = kube.statuses[-1]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "Conflict")
    assert kube.events[-1][:2] == ("Warning", "Conflict")

    # An earlier LLMService of the same name (another uid) owns it: still not ours.
    foreign["metadata"]["ownerReferences"] = [
        {"kind": "LLMService", "name": "tiny", "uid": "old-uid", "controller": True}
    ]
    kube.rayservices[(NS, "tiny")] = copy.deepcopy(foreign)
    with pytest.raises(kopf.PermanentError, match="old-uid"):
        reconcile(kube, tiny(), "resync")


def test_the_networkpolicy_is_created_repaired_and_removed_when_switched_off() -> None:
    kube = FakeKube()
    reconcile(kube, tiny(), "create")
    policy = copy.deepcopy(kube.networkpolicies[(NS, "tiny")])
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert kube.policy_writes == [("apply", "tiny")]
    reconcile(kube, tiny(), "resync")
    assert kube.policy_writes == [("apply", "tiny")]  # unchanged: no write

    # A hand edit that opens the dashboard to everyone is drift: its event brings a repair.
    edited = kube.networkpolicies[(NS, "tiny")]
    edited["spec"]["ingress"][-1].pop("from")
    edited["metadata"].update(generation=2, resourceVersion="np2-by-hand")
    kube.llmservices[(NS, "tiny")] = tiny()
    asyncio.run(
        on_child(
            body=kopf.Body(copy.deepcopy(edited)),
            memo=kopf.Memo(kube=kube),
            logger=logging.getLogger("test"),
            type="MODIFIED",
        )
    )
    assert kube.networkpolicies[(NS, "tiny")]["spec"] == policy["spec"]

    reconcile(kube, tiny(networkPolicy={"enabled": False}), "update")
    assert (NS, "tiny") not in kube.networkpolicies
    assert kube.policy_writes[-1] == ("delete", "tiny")


def test_a_networkpolicy_this_llmservice_does_not_control_is_left_alone() -> None:
    kube = FakeKube()
    theirs = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "tiny", "namespace": NS, "uid": "np-uid"},
        "spec": {"podSelector": {}},
    }
    kube.networkpolicies[(NS, "tiny")] = copy.deepcopy(theirs)
    with pytest.raises(kopf.PermanentError, match="NetworkPolicy tiny exists"):
        reconcile(kube, tiny(), "create")
    assert kube.networkpolicies[(NS, "tiny")] == theirs and kube.rayservices == {}
    # Switched off, ours would be deleted; theirs is still never touched.
    reconcile(kube, tiny(networkPolicy={"enabled": False}), "update")
    assert kube.networkpolicies[(NS, "tiny")] == theirs


def test_an_older_copy_of_the_spec_never_overwrites_a_newer_one() -> None:
    """A resync pass that listed the object before an edit must not roll the edit back."""
    kube = FakeKube()
    newer = tiny(replicas=2)
    newer["metadata"].update(name="stale-check", generation=2)
    older = copy.deepcopy(newer)
    older["metadata"]["generation"] = 1
    older["spec"]["replicas"] = 1
    _counted(kube, newer, "update")
    applied = copy.deepcopy(kube.rayservices[(NS, "stale-check")]["spec"])
    _counted(kube, older, "resync")  # listed before the edit, reconciled after it
    assert kube.rayservices[(NS, "stale-check")]["spec"] == applied
    # A new object of the same name (another uid, the old one's children collected) starts
    # again at generation 1: not stale.
    older["metadata"]["uid"] = "u2"
    forget(NS, "stale-check")
    kube.rayservices.clear()
    kube.networkpolicies.clear()
    _counted(kube, older, "create")
    assert kube.rayservices[(NS, "stale-check")]["spec"] != applied


def test_a_literal_credential_is_an_event_and_a_status_warning_once() -> None:
    kube = FakeKube()
    body = tiny(env=[{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc123"}])
    body["status"] = reconcile(kube, body, "create")
    assert body["status"]["warnings"] == [
        "spec.env[0].value: AWS_SECRET_ACCESS_KEY looks like a credential but is a literal "
        "value, stored in the LLMService, its history and Git: use valueFrom.secretKeyRef"
    ]
    assert next(e for e in kube.events if e[1] == "UnsafeSpec")[0] == "Warning"
    assert (NS, "tiny") in kube.rayservices  # applied all the same
    reconcile(kube, body, "resync")
    assert len([e for e in kube.events if e[1] == "UnsafeSpec"]) == 1  # not on every resync

    secret = {"secretKeyRef": {"name": "s3", "key": "secret"}}
    fixed = tiny(env=[{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret}])
    fixed["status"] = body["status"]
    assert reconcile(kube, fixed, "update")["warnings"] is None


def test_kuberay_missing_says_so_applies_nothing_and_recovers_once_installed() -> None:
    kube = FakeKube()
    kube.kuberay_installed = False
    body = tiny()
    with pytest.raises(BackedOff) as info:
        reconcile(kube, body, "create", attempt=6)
    assert info.value.delay is not None and info.value.delay <= 60  # soon, whatever the attempt
    status = kube.statuses[-1]
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "KubeRayMissing")
    assert "CRDs are not installed" in ready["message"] and status["phase"] == "Pending"
    assert kube.rayservices == {} and kube.policy_writes == []
    assert kube.events[-1][:2] == ("Warning", "KubeRayMissing")

    body["status"] = status
    kube.kuberay_installed = True
    reasons = {c["type"]: c["reason"] for c in reconcile(kube, body, "resync")["conditions"]}
    assert reasons == {"Ready": "NotServing", "Progressing": "Creating", "Degraded": "Healthy"}
    assert (NS, "tiny") in kube.rayservices


def test_status_goes_only_over_the_version_it_is_due_for() -> None:
    kube = FakeKube()
    body = tiny()
    body["metadata"]["resourceVersion"] = "7"
    kube.llmservice_version = "7"
    reconcile(kube, body, "create")
    assert len(kube.statuses) == 1

    # Written since by another trigger, same spec: the fresh observation goes over the fresh copy.
    fresh = copy.deepcopy(body)
    fresh["metadata"]["resourceVersion"] = "9"
    kube.llmservices[(NS, "tiny")] = fresh
    kube.llmservice_version = "9"
    kube_acts = kube.rayservices[(NS, "tiny")]
    kube_acts["status"] = {"observedGeneration": 1}  # something new to report
    kuberay_acts(kube)
    reconcile(kube, body, "resync")
    assert len(kube.statuses) == 2

    # The spec moved on meanwhile (generation 2): this older reconcile writes nothing, quietly.
    newer = copy.deepcopy(fresh)
    newer["metadata"].update(resourceVersion="12", generation=2)
    kube.llmservices[(NS, "tiny")] = newer
    kube.llmservice_version = "12"
    kube.rayservices[(NS, "tiny")]["status"] = {}
    reconcile(kube, body, "resync")
    assert len(kube.statuses) == 2


def test_the_echo_of_our_own_apply_is_not_reconciled_again() -> None:
    kube = FakeKube()
    body = tiny()
    body["metadata"]["name"] = "echo"
    kube.llmservices[(NS, "echo")] = copy.deepcopy(body)
    reconcile(kube, body, "create")
    ours = copy.deepcopy(kube.rayservices[(NS, "echo")])
    memo = kopf.Memo(kube=kube)
    log = logging.getLogger("test")
    calls: list[str] = []
    kube.apply_hook = lambda obj: calls.append(obj["kind"])

    writes = len(kube.statuses)
    asyncio.run(
        on_child(body=kopf.Body(ours), memo=memo, logger=log, type="MODIFIED")
    )  # our write's echo
    assert len(kube.statuses) == writes and calls == []

    changed = copy.deepcopy(ours)
    changed["metadata"]["resourceVersion"] = "99"  # KubeRay wrote status since
    changed["status"] = {"serviceStatus": "Running"}
    asyncio.run(on_child(body=kopf.Body(changed), memo=memo, logger=log, type="MODIFIED"))
    assert len(kube.statuses) > writes  # reconciled, and status followed KubeRay's

    kube.rayservices.clear()  # deleted by hand: a DELETED event is never skipped
    asyncio.run(on_child(body=kopf.Body(ours), memo=memo, logger=log, type="DELETED"))
    assert (NS, "echo") in kube.rayservices


def test_a_deleted_llmservice_leaves_no_bookkeeping_and_no_children_behind() -> None:
    from llmservice_operator import reconcile as r

    kube = FakeKube()
    body = tiny()
    body["metadata"]["name"] = "churn"
    kube.llmservices[(NS, "churn")] = copy.deepcopy(body)
    _counted(kube, body, "create")
    key = (NS, "churn")
    assert key in r._LOCKS and key in r._RECONCILED
    assert r.CHILDREN.in_line(("RayService", *key), kube.rayservices[key]["spec"]) is not None
    memo = kopf.Memo(kube=kube)

    asyncio.run(r.on_llmservice_event(body=kopf.Body(body), memo=memo, type="MODIFIED"))
    assert key in r._LOCKS and key in kube.rayservices  # only a deletion forgets
    asyncio.run(r.on_llmservice_event(body=kopf.Body(body), memo=memo, type="DELETED"))
    assert key not in r._LOCKS and key not in r._RECONCILED
    assert r.CHILDREN.in_line(("RayService", *key), {}) is None
    assert kube.deleted == [("RayService", "churn")] and key not in kube.networkpolicies


def test_children_not_controlled_by_the_deleted_llmservice_are_left_alone() -> None:
    from llmservice_operator import reconcile as r

    kube = FakeKube()
    body = tiny()
    reconcile(kube, body, "create")
    for child in (kube.rayservices[(NS, "tiny")], kube.networkpolicies[(NS, "tiny")]):
        child["metadata"]["ownerReferences"] = []  # orphaned on purpose (--cascade=orphan)
    asyncio.run(
        r.on_llmservice_event(body=kopf.Body(body), memo=kopf.Memo(kube=kube), type="DELETED")
    )
    assert kube.deleted == [] and (NS, "tiny") in kube.networkpolicies


def test_an_event_brought_reconcile_reads_no_child_the_watch_already_delivered() -> None:
    kube = FakeKube()
    body = tiny()
    kube.llmservices[(NS, "tiny")] = copy.deepcopy(body)
    reconcile(kube, body, "create")
    memo = kopf.Memo(kube=kube)
    log = logging.getLogger("test")

    # KubeRay writes status (a new resourceVersion, same generation): the event carries it.
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(1)], ready_workers=1)
    serve_on(kube, "tiny-a", running=1, target=1)
    event = copy.deepcopy(kube.rayservices[(NS, "tiny")])
    event["metadata"]["resourceVersion"] = "100"
    kube.reads.clear()
    asyncio.run(on_child(body=kopf.Body(event), memo=memo, logger=log, type="MODIFIED"))
    assert kube.reads == []  # neither the RayService nor the NetworkPolicy was read
    assert kube.statuses[-1]["readyReplicas"] == 1  # status followed the event's content

    # A hand edit of the spec bumps the generation: the spec is read and repaired.
    edited = copy.deepcopy(kube.rayservices[(NS, "tiny")])
    edited["spec"]["serveConfigV2"] = "applications: []"
    edited["metadata"]["generation"] += 1
    edited["metadata"]["resourceVersion"] = "101"
    kube.rayservices[(NS, "tiny")] = copy.deepcopy(edited)
    applies: list[str] = []
    kube.apply_hook = lambda obj: applies.append(obj["kind"])
    asyncio.run(on_child(body=kopf.Body(edited), memo=memo, logger=log, type="MODIFIED"))
    assert kube.reads == ["RayService"] and applies == ["RayService"]
    assert kube.rayservices[(NS, "tiny")]["spec"]["serveConfigV2"] != "applications: []"

    # The resync, the safety net for whatever a watch missed, reads every child.
    kube.reads.clear()
    reconcile(kube, kube.llmservices[(NS, "tiny")], "resync")
    assert kube.reads == ["RayService", "NetworkPolicy"]


def test_children_a_deleted_llmservice_of_the_name_left_behind_are_replaced() -> None:
    """`kubectl delete` then `apply` while the garbage collector has not come yet."""
    kube = FakeKube()
    old = tiny()
    old["metadata"]["uid"] = "old-uid"
    reconcile(kube, old, "create")
    forget(NS, "tiny")  # the operator saw the old one's deletion, but not in time to collect
    kube.rayservices[(NS, "tiny")]["metadata"]["uid"] = "rs-of-old"  # still there

    new = tiny()  # uid u1
    with pytest.raises(BackedOff):
        reconcile(kube, new, "create")
    assert kube.deleted == [("RayService", "tiny")]
    assert (NS, "tiny") not in kube.networkpolicies  # the old policy went too
    assert any(e[1] == "Replacing" and "old-uid" in e[2] for e in kube.events)
    assert kube.statuses[-1]["conditions"][0]["reason"] == "Creating"  # not Conflict
    reconcile(kube, new, "create")  # the deletion's event (or the retry) brings this
    assert kube.rayservices[(NS, "tiny")]["metadata"]["ownerReferences"][0]["uid"] == "u1"


def test_a_rayservice_made_by_hand_is_never_deleted() -> None:
    kube = FakeKube()
    kube.rayservices[(NS, "tiny")] = {
        "kind": "RayService",
        "metadata": {"name": "tiny", "namespace": NS, "uid": "x", "generation": 1},
        "spec": {},
    }
    with pytest.raises(kopf.PermanentError, match="no LLMService controls it"):
        reconcile(kube, tiny(), "create")
    assert kube.deleted == [] and (NS, "tiny") in kube.rayservices


def test_a_child_whose_llmservice_was_deleted_unseen_is_removed_on_its_next_event() -> None:
    """A restart lists every child: those of LLMServices deleted meanwhile go at once."""
    kube = FakeKube()
    reconcile(kube, tiny(), "create")
    rs = copy.deepcopy(kube.rayservices[(NS, "tiny")])  # no LLMService "tiny" in kube now
    CHILDREN.clear()  # a new operator process: it knows nothing yet
    memo, log = kopf.Memo(kube=kube), logging.getLogger("test")
    asyncio.run(on_child(body=kopf.Body(rs), memo=memo, logger=log, type="ADDED"))
    assert kube.deleted == [("RayService", "tiny")] and (NS, "tiny") not in kube.networkpolicies


def test_a_bluegreen_change_that_does_not_fit_is_held_until_it_does() -> None:
    from tests.unit.test_capacity import l4_service, node, pod

    kube = FakeKube()
    body = l4_service(version="v1")
    body["metadata"]["name"] = "tiny"  # the helpers' RayService name
    reconcile(kube, body, "create")
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(2)], ready_workers=2)
    serve_on(kube, "tiny-a", running=2, target=2, version="v1", direct=True)
    applied = copy.deepcopy(kube.rayservices[(NS, "tiny")]["spec"])
    nodes = [node("cpu-0", "cpu"), node("l4-0", "l4", gpus=1), node("l4-1", "l4", gpus=1)]
    kube.room = (nodes, [pod("l4-0", gpus=1), pod("l4-1", gpus=1)])

    v2 = l4_service(version="v2")
    v2["metadata"].update(name="tiny", generation=2)
    with pytest.raises(BackedOff, match="2 more GPUs"):
        reconcile(kube, v2, "update")
    assert kube.rayservices[(NS, "tiny")]["spec"] == applied  # nothing of v2 applied
    status = kube.statuses[-1]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "True"  # v1 keeps serving
    assert conds["Progressing"]["status"] == "False"
    assert conds["Progressing"]["reason"] == "InsufficientCapacity"
    assert status["activeVersion"] == "v1" and status["pendingVersion"] == "v2"
    assert any(e[1] == "InsufficientCapacity" for e in kube.events)

    # Two more L4 nodes join the pool: the retry applies v2.
    kube.room = ([*nodes, node("l4-2", "l4", gpus=1), node("l4-3", "l4", gpus=1)], kube.room[1])
    reconcile(kube, v2, "update")
    assert kube.rayservices[(NS, "tiny")]["spec"] != applied


def test_without_permission_to_look_the_change_goes_ahead() -> None:
    from tests.unit.test_capacity import l4_service

    kube = FakeKube()
    body = l4_service(version="v1")
    body["metadata"]["name"] = "tiny"
    reconcile(kube, body, "create")
    kuberay_acts(kube)
    applied = copy.deepcopy(kube.rayservices[(NS, "tiny")]["spec"])
    v2 = l4_service(version="v2")
    v2["metadata"].update(name="tiny", generation=2)
    kube.room = None  # RBAC without nodes/pods: KubeRay decides as it always did
    reconcile(kube, v2, "update")
    assert kube.rayservices[(NS, "tiny")]["spec"] != applied


def test_an_echo_that_overtakes_the_writes_bookkeeping_reconciles_nothing() -> None:
    """The watch delivers our apply's ADDED event before the applying thread records it."""
    kube = FakeKube()
    body = tiny()
    kube.llmservices[(NS, "tiny")] = copy.deepcopy(body)
    reconcile(kube, body, "create")
    echo = copy.deepcopy(kube.rayservices[(NS, "tiny")])
    CHILDREN.clear()  # as if the event came in first ...
    CHILDREN.observed(echo, "ADDED")
    CHILDREN.written(echo, echo["spec"])  # ... and the write was recorded just after
    kube.reads.clear()
    parents = kube.parent_reads
    # The event's reconcile runs once the object's lock is free: it sees the echo and stops.
    from llmservice_operator.children import key_of
    from llmservice_operator.reconcile import _reconcile_owner

    log = logging.getLogger("test")
    version = echo["metadata"]["resourceVersion"]
    _reconcile_owner(kube, NS, "tiny", None, "rayservice-event", log, (key_of(echo), version))
    assert kube.parent_reads == parents and kube.reads == []
    # Any other version (KubeRay's status write) is reconciled: its parent is read.
    _reconcile_owner(kube, NS, "tiny", None, "rayservice-event", log, (key_of(echo), "later"))
    assert kube.parent_reads == parents + 1


def _apps(kube: FakeKube) -> dict[str, Any]:
    import yaml

    text = kube.rayservices[(NS, "tiny")]["spec"]["serveConfigV2"]
    return {a["name"]: a for a in yaml.safe_load(text)["applications"]}


def _router_weights(kube: FakeKube) -> dict[str, float]:
    (router,) = _apps(kube)["llm"]["deployments"]
    return {a["app"]: a["weight"] for a in router["user_config"]["arms"]}


def test_a_canary_runs_beside_the_stable_version_and_steps_when_serve_runs_it() -> None:
    kube = FakeKube()
    serving_v1(kube)
    v2 = v2_of()
    status = reconcile(kube, v2, "update")
    assert set(_apps(kube)) == {"llm", "llm-a", "llm-b"}
    assert _router_weights(kube) == {"llm-a": 100.0, "llm-b": 0.0}
    assert _apps(kube)["llm-a"]["args"]["model_version"] == "v1"  # the stable one untouched
    assert _apps(kube)["llm-b"]["args"]["model_version"] == "v2"
    # A worker for the canary's replica: one replica's worth of surge.
    rs_group = kube.rayservices[(NS, "tiny")]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert rs_group["minReplicas"] == 2
    assert status["rollout"]["phase"] == "Progressing" and status["rollout"]["step"] == 0
    progressing = status["conditions"][1]
    assert (progressing["status"], progressing["reason"]) == ("True", "CanaryProgressing")
    assert status["activeVersion"] == "v1" and status["pendingVersion"] == "v2"
    assert any(e[1] == "CanaryStarted" for e in kube.events)
    # Serve runs both versions and the router runs 0 %: step 1 moves 10 % to the canary.
    kuberay_acts(kube)
    kube.serve_runs_config(NS, "tiny", "tiny-a")
    v2["status"] = status
    status = reconcile(kube, v2, "rollout-tick")
    assert _router_weights(kube) == {"llm-a": 90.0, "llm-b": 10.0}
    assert status["rollout"]["step"] == 1
    assert any(e[1] == "CanaryStep" for e in kube.events)


def test_a_canary_removal_whose_status_write_failed_is_reported_done_by_the_next_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube()
    v2 = v2_of(serving_v1(kube))
    for _ in range(2):  # the canary starts at 0 %, then steps to 10 %
        v2["status"] = reconcile(kube, v2, "rollout-tick")
        kuberay_acts(kube)
        kube.serve_runs_config(NS, "tiny", "tiny-a")
    assert _router_weights(kube) == {"llm-a": 90.0, "llm-b": 10.0}
    back = tiny(rollout=CANARY_10)
    back["metadata"]["generation"] = 3
    back["status"] = reconcile(kube, {**back, "status": v2["status"]}, "update")
    assert back["status"]["rollout"]["canaryApp"] == "llm-b"  # its share goes first
    kuberay_acts(kube)
    kube.serve_runs_config(NS, "tiny", "tiny-a")

    def lost(*_: Any, **__: Any) -> bool:
        raise kopf.TemporaryError("status write timed out", delay=1)

    with monkeypatch.context() as m:
        m.setattr(kube, "patch_llmservice_status", lost)
        with pytest.raises(kopf.TemporaryError):
            reconcile(kube, back, "rollout-tick")  # the canary's app removed, status not written
    assert set(_apps(kube)) == {"llm", "llm-a"}
    kuberay_acts(kube)
    kube.serve_runs_config(NS, "tiny", "tiny-a")
    event = copy.deepcopy(kube.rayservices[(NS, "tiny")])  # KubeRay's status write, watched
    event["metadata"]["resourceVersion"] = "100"
    CHILDREN.observed(event, "MODIFIED")
    for trigger in ("rayservice-event", "resync"):  # from the cache (slim) and read fresh
        status = reconcile(kube, back, trigger)
        assert status["rollout"]["phase"] == "Aborted" and not status["rollout"]["canaryApp"]
        progressing = status["conditions"][1]
        assert (progressing["status"], progressing["reason"]) == ("False", "Reconciled")


def test_the_rollout_ticker_steps_a_canary_and_lets_a_steady_service_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The canary's clock is one operator-wide ticker (no kopf timer: kopf would keep every
    object's body and put a finalizer on it): it reconciles only what a rollout is under way for."""
    from llmservice_operator import canary as canary_mod
    from llmservice_operator.reconcile import _tick_rollouts_forever, rolling_out
    from llmservice_operator.settings import OperatorConfig

    kube = FakeKube()
    v2 = v2_of(serving_v1(kube, counted=True))
    assert (NS, "tiny") not in rolling_out()  # nothing under way: never ticked
    _counted(kube, v2, "update")
    assert (NS, "tiny") in rolling_out()
    assert _router_weights(kube) == {"llm-a": 100.0, "llm-b": 0.0}
    kube.llmservices[(NS, "tiny")] = {**v2, "status": kube.statuses[-1]}
    kuberay_acts(kube)
    kube.serve_runs_config(NS, "tiny", "tiny-a")  # Serve runs both versions, 0 % on the canary
    monkeypatch.setattr(canary_mod, "TICK_S", 0.01)
    config = OperatorConfig(standalone=True, metrics_port=0)

    run_until(
        _tick_rollouts_forever(kube, config),  # type: ignore[arg-type]
        lambda: _router_weights(kube) == {"llm-a": 90.0, "llm-b": 10.0},
    )
    assert _router_weights(kube) == {"llm-a": 90.0, "llm-b": 10.0}  # step 1, on a tick
    assert any(e[1] == "CanaryStep" for e in kube.events)
    forget(NS, "tiny")
    assert (NS, "tiny") not in rolling_out()


def test_a_canary_whose_replica_does_not_fit_waits_for_room_and_starts_nothing() -> None:
    from tests.unit.test_capacity import l4_service, node, pod

    def canary(version: str, generation: int) -> dict[str, Any]:
        body = l4_service(version=version)
        body["metadata"].update(name="tiny", generation=generation)
        body["spec"]["rollout"] = {"strategy": "Canary"}
        return body

    kube = FakeKube()
    reconcile(kube, canary("v1", 1), "create")
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(2)], ready_workers=2)
    kube.serve_runs_config(NS, "tiny", "tiny-a")
    applied = copy.deepcopy(kube.rayservices[(NS, "tiny")]["spec"])
    nodes = [node("cpu-0", "cpu"), node("l4-0", "l4", gpus=1), node("l4-1", "l4", gpus=1)]
    kube.room = (nodes, [pod("l4-0", gpus=1), pod("l4-1", gpus=1)])
    with pytest.raises(BackedOff, match="1 more GPU"):
        reconcile(kube, canary("v2", 2), "update")
    assert kube.rayservices[(NS, "tiny")]["spec"] == applied  # no canary, no extra worker
    status = kube.statuses[-1]
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"]) == (
        "False", "InsufficientCapacity",
    )  # fmt: skip
    assert conds["Ready"]["status"] == "True" and status.get("rollout") is None
    assert not any(e[1] == "CanaryStarted" for e in kube.events)
    # A third L4 node joins the pool: the canary starts, with one more worker.
    kube.room = ([*nodes, node("l4-2", "l4", gpus=1)], kube.room[1])
    status = reconcile(kube, canary("v2", 2), "update")
    assert status["rollout"]["phase"] == "Progressing"
    group = kube.rayservices[(NS, "tiny")]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["replicas"] == 3


# --- serve_app's ConfigMap (render/code.py) ------------------------------------------------


def test_the_code_configmap_is_created_before_the_rayservice_once_per_namespace() -> None:
    kube = FakeKube()
    order: list[str] = []
    kube.apply_hook = lambda obj: order.append(obj["kind"])
    reconcile(kube, tiny(), "create")
    assert order == ["ConfigMap", "RayService", "NetworkPolicy"]
    ((ns, name),) = kube.configmaps
    rs = kube.rayservices[(NS, "tiny")]
    volumes = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert ns == NS and {"name": "serve-app", "configMap": {"name": name}} in volumes
    other = tiny()
    other["metadata"].update(name="other", uid="u2")
    reconcile(kube, other, "create")
    reconcile(kube, tiny(replicas=2), "update")
    assert kube.configmap_creates == 1  # one namespace, one code: one write in all


def test_a_resync_puts_back_a_deleted_code_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmservice_operator import reconcile as module

    kube = FakeKube()
    reconcile(kube, tiny(), "create")
    kube.configmaps.clear()  # someone deleted it; the RayService is in line
    reconcile(kube, tiny(), "resync")
    assert not kube.configmaps  # rechecked only every RECHECK_S
    monkeypatch.setattr(module.CodeConfigMaps, "RECHECK_S", 0.0)
    reconcile(kube, tiny(), "resync")
    assert len(kube.configmaps) == 1


def test_an_unchanged_resync_only_reads_the_code_configmap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmservice_operator import reconcile as module

    kube = FakeKube()
    reconcile(kube, tiny(), "create")
    assert (kube.configmap_gets, kube.configmap_creates) == (1, 1)  # looked, missing: created
    monkeypatch.setattr(module.CodeConfigMaps, "RECHECK_S", 0.0)
    reconcile(kube, tiny(), "resync")
    assert (kube.configmap_gets, kube.configmap_creates) == (2, 1)  # a look, no write
    # RBAC grants the look for one name: an operator of another version is refused it.
    kube.configmap_get_forbidden = True
    reconcile(kube, tiny(), "resync")
    assert (kube.configmap_gets, kube.configmap_creates) == (3, 2)  # then it creates, as before
    assert len(kube.configmaps) == 1


def test_a_refused_code_configmap_is_an_apply_error_and_nothing_else_is_written() -> None:
    kube = FakeKube()

    def refuse(obj: Any) -> None:
        if obj["kind"] == "ConfigMap":
            raise kopf.PermanentError("configmaps is forbidden: cannot create")

    kube.apply_hook = refuse
    with pytest.raises(BackedOff, match="forbidden"):
        reconcile(kube, tiny(), "create")
    assert not kube.rayservices  # pods that mount missing code would never start
    assert kube.statuses and "forbidden" in str(kube.statuses[-1])


def _env_names(kube: FakeKube) -> set[str]:
    spec = kube.rayservices[(NS, "tiny")]["spec"]["rayClusterConfig"]
    return {e["name"] for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}


def test_a_canary_asked_on_the_gpu_fast_path_first_moves_the_live_version_onto_the_router() -> None:
    """The fast path (the GPU default) has no router to split traffic: the live version moves
    onto it unchanged first (a Ray cluster roll), and only then does the canary start."""
    from tests.unit.test_capacity import l4_service

    def gpu(version: str, generation: int, strategy: str) -> dict[str, Any]:
        body = l4_service(version=version)
        body["metadata"].update(name="tiny", generation=generation)
        body["spec"]["rollout"] = {"strategy": strategy}
        return body

    kube = FakeKube()
    reconcile(kube, gpu("v1", 1, "InPlace"), "create")
    assert set(_apps(kube)) == {"llm"}  # the fast path: the model's app is the ingress
    assert _apps(kube)["llm"]["import_path"] == "serve_app.app:build"
    assert {"RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"} <= _env_names(
        kube
    )
    kuberay_acts(kube)
    kube.add_cluster(NS, "tiny-a", [cpu_group(2)], ready_workers=2)
    kube.serve_runs_config(NS, "tiny", "tiny-a")

    # Canary and a new version in one edit: v1 moves onto the router first, v2 waits.
    status = reconcile(kube, gpu("v2", 2, "Canary"), "update")
    assert set(_apps(kube)) == {"llm", "llm-a"}
    assert _apps(kube)["llm-a"]["args"]["model_version"] == "v1"
    assert _router_weights(kube) == {"llm-a": 100.0}
    assert not {"RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"} & (
        _env_names(kube)
    )  # no HAProxy, no direct streaming: the pods change, so KubeRay rolls the cluster
    assert status["rollout"]["phase"] == "Progressing"
    assert "moving v1 onto the router" in status["rollout"]["message"]
    assert not any(e[1] == "CanaryStarted" for e in kube.events)

    # KubeRay's second cluster is starting; the old one still serves the fast path: the
    # canary waits (the config stays v1 behind the router).
    kuberay_acts(kube, pending="tiny-b", upgrading=True)
    onto_router = copy.deepcopy(kube.rayservices[(NS, "tiny")]["spec"])
    v2 = gpu("v2", 2, "Canary")
    v2["status"] = status
    status = reconcile(kube, v2, "update")
    assert kube.rayservices[(NS, "tiny")]["spec"] == onto_router
    assert "moving v1 onto the router" in status["rollout"]["message"]
    assert not any(e[1] == "CanaryStarted" for e in kube.events)

    # The new cluster serves v1 behind the router: now the canary starts beside it.
    kuberay_acts(kube, active="tiny-b")
    kube.add_cluster(NS, "tiny-b", [cpu_group(2)], ready_workers=2)
    kube.serve_runs_config(NS, "tiny", "tiny-b")
    v2 = gpu("v2", 2, "Canary")
    v2["status"] = status
    status = reconcile(kube, v2, "update")
    assert set(_apps(kube)) == {"llm", "llm-a", "llm-b"}
    assert _router_weights(kube) == {"llm-a": 100.0, "llm-b": 0.0}
    assert _apps(kube)["llm-b"]["args"]["model_version"] == "v2"
    assert any(e[1] == "CanaryStarted" for e in kube.events)
