"""Status from the RayService: truthful conditions, transitions timed, nothing written twice."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from llmservice_operator import status as st
from llmservice_operator.observe import Observation
from llmservice_operator.reconcile import _needs_apply, is_subset
from tests.unit.observations import cluster, observation, rayservice, serve, status

DESIRED = st.Desired(
    generation=3, version="v2", replicas=2, rayservice_name="m", namespace="ns", workers=2
)
T = st.ConditionType
R = st.Reason


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_no_rayservice_yet_is_pending() -> None:
    s = status(DESIRED, Observation(rayservice=None))
    assert s["phase"] == st.Phase.PENDING
    assert conditions(s)[T.READY] == ("False", R.CREATING)
    assert all(c["observedGeneration"] == 3 for c in s["conditions"])


def test_ready_when_serve_runs_the_wanted_version_and_replicas() -> None:
    s = status(DESIRED, observation(app=serve(running=2)), {"activeVersion": "v1"})
    assert (s["phase"], s["activeVersion"], s["pendingVersion"]) == ("Ready", "v2", None)
    assert s["endpoint"] == "http://m-serve-svc.ns.svc:8000/v1"
    assert s["readyReplicas"] == 2
    assert conditions(s)[T.READY] == ("True", R.SERVING)
    assert conditions(s)[T.PROGRESSING] == ("False", R.RECONCILED)


def test_ready_replicas_are_the_running_ones_never_the_desired_count() -> None:
    s = status(DESIRED, observation(app=serve(running=1, starting=1)), {"activeVersion": "v2"})
    assert s["readyReplicas"] == 1
    assert conditions(s)[T.READY] == ("True", R.SERVING)  # one replica answers
    assert conditions(s)[T.PROGRESSING][0] == "True"


def test_kuberay_ready_without_a_running_replica_is_not_ready() -> None:
    s = status(DESIRED, observation(app=serve(status="DEPLOYING", running=0, starting=2)))
    assert s["readyReplicas"] == 0 and s["endpoint"] is None
    assert conditions(s)[T.READY] == ("False", R.NOT_SERVING)
    assert conditions(s)[T.PROGRESSING] == ("True", R.DEPLOYING)


def test_serve_not_answering_counts_nothing() -> None:
    s = status(DESIRED, observation(app=None), {"activeVersion": "v1", "readyReplicas": 2})
    assert s["readyReplicas"] == 0 and s["activeVersion"] == "v1"
    assert conditions(s)[T.READY][0] == "False"


def test_in_place_update_keeps_the_old_version_active_until_serve_settles() -> None:
    deploying = serve(status="DEPLOYING", deployment="UPDATING", version="v2")
    s = status(DESIRED, observation(app=deploying), {"activeVersion": "v1"})
    assert (s["activeVersion"], s["pendingVersion"]) == ("v1", "v2")
    assert conditions(s)[T.PROGRESSING] == ("True", R.DEPLOYING)
    assert conditions(s)[T.READY] == ("True", R.SERVING)  # old replicas still answer
    settled = status(DESIRED, observation(app=serve(version="v2")), {"activeVersion": "v1"})
    assert (settled["activeVersion"], settled["pendingVersion"]) == ("v2", None)


def test_blue_green_keeps_the_old_version_active() -> None:
    rs = rayservice(upgrading="True", pending="m-new")
    obs = observation(rs, app=serve(version="v1"), pending=cluster("m-new", app=None))
    s = status(DESIRED, obs, {"activeVersion": "v1"})
    assert (s["activeVersion"], s["pendingVersion"]) == ("v1", "v2")
    assert conditions(s)[T.PROGRESSING] == ("True", R.UPGRADING)
    assert "version v2 on m-new" in s["conditions"][1]["message"]
    assert conditions(s)[T.READY][0] == "True"  # the old cluster still serves


def test_kuberay_not_caught_up_is_progressing() -> None:
    obs = observation(rayservice(caught_up=False), app=serve())
    s = status(DESIRED, obs, {"activeVersion": "v1"})
    assert s["phase"] == st.Phase.PROGRESSING
    assert conditions(s)[T.PROGRESSING] == ("True", R.WAITING_FOR_KUBERAY)


def test_worker_pods_short_of_the_plan_is_scaling() -> None:
    obs = observation(active=cluster(app=serve(running=2), ready_workers=1))
    s = status(DESIRED, obs, {"activeVersion": "v2"})
    assert conditions(s)[T.PROGRESSING] == ("True", R.SCALING)
    assert "1/2 worker pods" in s["conditions"][1]["message"]


def test_failed_app_is_degraded_with_rays_message() -> None:
    failed = serve(status="DEPLOY_FAILED", running=0, message="vLLM engine failed to start")
    s = status(DESIRED, observation(rayservice(ready="False"), app=failed))
    assert s["phase"] == st.Phase.FAILED
    assert conditions(s)[T.DEGRADED] == ("True", R.DEPLOY_FAILED)
    assert "vLLM engine failed to start" in s["conditions"][2]["message"]
    assert s["endpoint"] is None


def test_failing_pending_cluster_is_degraded_while_the_old_one_serves() -> None:
    rs = rayservice(upgrading="True", pending="m-new")
    bad = cluster("m-new", app=None, failure="FailedCreateWorkerPod: quota exceeded")
    s = status(DESIRED, observation(rs, app=serve(version="v1"), pending=bad))
    assert conditions(s)[T.DEGRADED] == ("True", R.RAY_CLUSTER_FAILED)
    assert "pending RayCluster m-new: FailedCreateWorkerPod" in s["conditions"][2]["message"]
    assert conditions(s)[T.READY][0] == "True"


def test_kuberay_rejection_is_degraded() -> None:
    obs = observation(
        rayservice(caught_up=False), app=None, kuberay_rejection="InvalidRayServiceSpec: x"
    )
    s = status(DESIRED, obs)
    assert conditions(s)[T.DEGRADED] == ("True", R.VALIDATION_FAILED)
    assert s["conditions"][2]["message"] == "InvalidRayServiceSpec: x"


def test_apply_failure_is_not_ready_and_degraded() -> None:
    obs = Observation(rayservice=None, apply_error="apply RayService: HTTP 403 forbidden")
    s = status(DESIRED, obs)
    assert conditions(s)[T.READY] == ("False", R.APPLY_FAILED)
    assert conditions(s)[T.DEGRADED] == ("True", R.APPLY_FAILED)
    assert "403" in s["conditions"][0]["message"]


def test_autoscaled_replicas_are_serves_target() -> None:
    auto = dataclasses.replace(DESIRED, replicas=None, workers=None)
    s = status(auto, observation(app=serve(running=3)), {"activeVersion": "v2"})
    assert (s["replicas"], s["readyReplicas"]) == (3, 3)
    assert conditions(s)[T.PROGRESSING] == ("False", R.RECONCILED)


def test_invalid_spec_keeps_what_was_known() -> None:
    prev = {"activeVersion": "v1", "endpoint": "http://x", "conditions": []}
    s = st.to_wire(st.invalid_status(4, "spec.replicas: bad", prev))
    assert s["activeVersion"] == "v1" and s["observedGeneration"] == 4
    assert conditions(s)[T.READY] == ("False", R.INVALID_SPEC)
    assert "spec.replicas" in s["conditions"][0]["message"]


def test_every_reason_and_condition_type_has_a_set_when_doc() -> None:
    for enum in (st.ConditionType, st.Reason, st.Phase):
        lines = inspect.getsource(enum).splitlines()
        for member in enum:
            at = next(i for i, line in enumerate(lines) if line.strip().startswith(member.name))
            assert lines[at - 1].strip().startswith("#: "), member


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


def test_scaling_the_same_version_is_scaling_not_a_pending_version() -> None:
    upscaling = serve(running=1, starting=1, deployment="UPSCALING", version="v2")
    s = status(DESIRED, observation(app=upscaling), {"activeVersion": "v2"})
    assert (s["activeVersion"], s["pendingVersion"]) == ("v2", None)
    assert conditions(s)[T.PROGRESSING] == ("True", R.SCALING)
    assert s["readyReplicas"] == 1


def test_a_canary_is_under_way_until_its_app_is_gone_and_a_rollback_degrades() -> None:
    from llmservice_operator.api.models import RolloutStatus

    running = observation(app=serve(running=2, version="v1"))
    aborting = RolloutStatus(
        strategy="Canary", phase="Aborted", canary_app="llm-b", message="taking traffic back"
    )
    s = status(DESIRED, dataclasses.replace(running, rollout=aborting), {"activeVersion": "v1"})
    assert conditions(s)[T.PROGRESSING] == ("True", R.CANARY)
    done = aborting.model_copy(update={"canary_app": None})
    back = dataclasses.replace(observation(app=serve(running=2, version="v2")), rollout=done)
    assert conditions(status(DESIRED, back))[T.PROGRESSING] == ("False", R.RECONCILED)
    rolled_back = RolloutStatus(strategy="Canary", phase="RolledBack", message="rolled back: x")
    s = status(
        DESIRED,
        dataclasses.replace(running, rollout=rolled_back, canary_rolled_back=True),
        {"activeVersion": "v1"},
    )
    assert conditions(s)[T.DEGRADED] == ("True", R.CANARY_ROLLED_BACK)
    assert conditions(s)[T.READY] == ("True", R.SERVING)  # the stable version serves
    assert conditions(s)[T.PROGRESSING] == ("False", R.RECONCILED)
    assert s["pendingVersion"] is None and s["rollout"]["phase"] == "RolledBack"
