"""Status from the RayService: truthful conditions, transitions timed, nothing written twice."""

from __future__ import annotations

from typing import Any

from llmservice_operator import status as st
from llmservice_operator.reconcile import _needs_apply, is_subset

DESIRED = st.Desired(generation=3, version="v2", replicas=2, rayservice_name="m", namespace="ns")


def rayservice(
    ready: str | None, upgrading: str = "False", caught_up: bool = True, app: str = "RUNNING"
) -> dict[str, Any]:
    conds = [{"type": "UpgradeInProgress", "status": upgrading, "reason": "NoPendingCluster"}]
    if ready is not None:
        conds.append({"type": "Ready", "status": ready, "reason": "NonZeroServeEndpoints"})
    return {
        "metadata": {"generation": 5},
        "status": {
            "observedGeneration": 5 if caught_up else 4,
            "conditions": conds,
            "activeServiceStatus": {"applicationStatuses": {"llm": {"status": app}}},
        },
    }


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_no_rayservice_yet_is_pending() -> None:
    s = st.compute_status(DESIRED, None, None)
    assert s["phase"] == st.PHASE_PENDING
    assert conditions(s)[st.READY] == ("False", st.REASON_CREATING)
    assert all(c["observedGeneration"] == 3 for c in s["conditions"])


def test_ready_only_when_kuberay_says_serving() -> None:
    s = st.compute_status(DESIRED, rayservice(ready="True"), {"activeVersion": "v1"})
    assert (
        s["phase"] == st.PHASE_READY and s["activeVersion"] == "v2" and s["pendingVersion"] is None
    )
    assert s["endpoint"] == "http://m-serve-svc.ns.svc:8000/v1"
    assert s["readyReplicas"] == 2
    assert conditions(s)[st.READY] == ("True", st.REASON_SERVING)
    assert conditions(s)[st.PROGRESSING][0] == "False"


def test_upgrade_keeps_the_old_version_active() -> None:
    s = st.compute_status(
        DESIRED, rayservice(ready="True", upgrading="True"), {"activeVersion": "v1"}
    )
    assert (s["activeVersion"], s["pendingVersion"]) == ("v1", "v2")
    assert conditions(s)[st.PROGRESSING] == ("True", st.REASON_UPGRADING)
    assert conditions(s)[st.READY][0] == "True"  # the old cluster still serves


def test_kuberay_not_caught_up_is_progressing() -> None:
    s = st.compute_status(
        DESIRED, rayservice(ready="True", caught_up=False), {"activeVersion": "v1"}
    )
    assert s["phase"] == st.PHASE_PROGRESSING and s["activeVersion"] == "v1"


def test_failed_app_is_degraded() -> None:
    s = st.compute_status(DESIRED, rayservice(ready="False", app="DEPLOY_FAILED"), None)
    assert s["phase"] == st.PHASE_FAILED
    assert conditions(s)[st.DEGRADED] == ("True", st.REASON_DEPLOY_FAILED)
    assert s["endpoint"] is None


def test_invalid_spec_keeps_what_was_known() -> None:
    prev = {"activeVersion": "v1", "endpoint": "http://x", "conditions": []}
    s = st.invalid_status(4, "spec.replicas: bad", prev)
    assert s["activeVersion"] == "v1" and s["observedGeneration"] == 4
    assert conditions(s)[st.READY] == ("False", st.REASON_INVALID_SPEC)
    assert "spec.replicas" in s["conditions"][0]["message"]


def test_transition_time_kept_while_status_unchanged() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "T0"}]
    same = st.merge_conditions([{"type": "Ready", "status": "True"}], old, "T1")
    flipped = st.merge_conditions([{"type": "Ready", "status": "False"}], old, "T1")
    assert same[0]["lastTransitionTime"] == "T0" and flipped[0]["lastTransitionTime"] == "T1"


def test_subset_ignores_server_defaults_but_not_changes() -> None:
    want = {"a": 1, "b": [{"x": 1}]}
    assert is_subset(want, {"a": 1, "b": [{"x": 1, "default": 0}], "extra": True})
    assert not is_subset(want, {"a": 2, "b": [{"x": 1}]})
    assert not is_subset(want, {"a": 1, "b": [{"x": 1}, {"x": 2}]})


def test_needs_apply_on_hand_edit_only() -> None:
    want = {
        "metadata": {
            "labels": {"l": "1"},
            "annotations": {"h": "1"},
            "ownerReferences": [{"uid": "u"}],
        },
        "spec": {"replicas": 2},
    }
    live = {
        "metadata": {
            "labels": {"l": "1", "ray.io/x": "y"},
            "annotations": {"h": "1"},
            "ownerReferences": [{"uid": "u"}],
        },
        "spec": {"replicas": 2, "defaulted": 1},
    }
    assert not _needs_apply(want, live)
    assert _needs_apply(want, {**live, "spec": {"replicas": 3}})
    assert _needs_apply(want, None)
