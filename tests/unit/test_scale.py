"""Worker-group sizes of the RayClusters: the JSON patch the operator sends, and when."""

from __future__ import annotations

import copy
from typing import Any

from llmservice_operator.observe import Replica, ServeApp, parse_serve
from llmservice_operator.scale import GroupTarget, WorkerPod, in_line, replica_patch
from tests.unit.fake_kube import json_patch
from tests.unit.observations import serve


def cluster(*groups: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"workerGroupSpecs": list(groups)}}


def group(name: str = "cpu", replicas: int | None = 1, lo: int = 1, hi: int = 1) -> dict[str, Any]:
    g: dict[str, Any] = {"groupName": name, "minReplicas": lo, "maxReplicas": hi, "template": {}}
    if replicas is not None:
        g["replicas"] = replicas
    return g


FIXED_2 = [GroupTarget("cpu", 2, 2, 2)]
FIXED_1 = [GroupTarget("cpu", 1, 1, 1)]


def test_scale_up_sets_all_three_fields_guarded_by_the_group_name() -> None:
    rc = cluster(group())
    patch = replica_patch(rc, FIXED_2, serve=None, serve_expected=False, serve_replicas=2)
    assert patch is not None and patch.direction == "up"
    assert patch.ops[0] == {
        "op": "test",
        "path": "/spec/workerGroupSpecs/0/groupName",
        "value": "cpu",
    }
    after = json_patch(rc, patch.ops)["spec"]["workerGroupSpecs"][0]
    assert (after["replicas"], after["minReplicas"], after["maxReplicas"]) == (2, 2, 2)
    assert after["template"] == {}  # nothing else touched
    assert "replicas 1->2" in patch.summary


def test_in_line_cluster_needs_no_patch() -> None:
    assert in_line(cluster(group(replicas=2, lo=2, hi=2)), FIXED_2)
    assert (
        replica_patch(cluster(group()), FIXED_1, serve=None, serve_expected=False, serve_replicas=1)
        is None
    )


def test_groups_the_plan_does_not_name_are_left_alone() -> None:
    rc = cluster(group("old-pool", replicas=3, lo=3, hi=3), group())
    patch = replica_patch(rc, FIXED_2, serve=None, serve_expected=False, serve_replicas=2)
    assert patch is not None
    assert all("/workerGroupSpecs/1/" in op["path"] for op in patch.ops)


def test_scale_down_waits_until_serve_has_let_go() -> None:
    rc = cluster(group(replicas=2, lo=2, hi=2))
    still_two = serve(running=2, target=2)
    assert (
        replica_patch(rc, FIXED_1, serve=still_two, serve_expected=True, serve_replicas=1) is None
    )
    draining = serve(running=2, target=1)
    assert replica_patch(rc, FIXED_1, serve=draining, serve_expected=True, serve_replicas=1) is None


def test_scale_down_waits_when_ray_should_answer_but_does_not() -> None:
    rc = cluster(group(replicas=2, lo=2, hi=2))
    assert replica_patch(rc, FIXED_1, serve=None, serve_expected=True, serve_replicas=1) is None
    # No Serve app reported on this cluster at all (nothing to protect): shrink.
    assert replica_patch(rc, FIXED_1, serve=None, serve_expected=False, serve_replicas=1)


def test_scale_down_names_the_worker_without_a_serve_replica() -> None:
    rc = cluster(group(replicas=2, lo=2, hi=2))
    one = serve(running=1, target=1)  # its replica runs on 10.0.0.0
    pods = [WorkerPod("w-busy", "10.0.0.0", "cpu"), WorkerPod("w-idle", "10.0.0.9", "cpu")]
    patch = replica_patch(rc, FIXED_1, serve=one, serve_expected=True, serve_replicas=1, pods=pods)
    assert patch is not None and patch.direction == "down"
    after = json_patch(rc, patch.ops)["spec"]["workerGroupSpecs"][0]
    assert after["replicas"] == 1
    assert after["scaleStrategy"] == {"workersToDelete": ["w-idle"]}


def test_autoscaling_moves_bounds_only() -> None:
    rc = cluster(group(replicas=2, lo=0, hi=2))
    patch = replica_patch(
        rc, [GroupTarget("cpu", None, 0, 3)], serve=None, serve_expected=False, serve_replicas=None
    )
    assert patch is not None and patch.direction == "bounds"
    after = json_patch(rc, patch.ops)["spec"]["workerGroupSpecs"][0]
    assert (after["replicas"], after["minReplicas"], after["maxReplicas"]) == (2, 0, 3)


SERVE_DETAILS = {
    "applications": {
        "llm": {
            "name": "llm",
            "status": "RUNNING",
            "message": "",
            "deployed_app_config": {"name": "llm", "args": {"model_id": "tiny-llama"}},
            "deployments": {
                "OpenAIRouter": {"status": "HEALTHY", "replicas": [{"state": "RUNNING"}]},
            },
        },
        "llm-a": {
            "name": "llm-a",
            "status": "RUNNING",
            "message": "",
            "deployed_app_config": {"name": "llm-a", "args": {"model_version": "v2"}},
            "deployments": {
                "LLMServer:tiny-llama": {
                    "status": "HEALTHY",
                    "target_num_replicas": 2,
                    "replicas": [
                        {"state": "RUNNING", "node_ip": "10.250.0.3"},
                        {"state": "STARTING", "node_ip": "10.250.0.4"},
                    ],
                },
            },
        },
    }
}


def test_parse_serve_counts_the_model_deployments_running_replicas() -> None:
    app = parse_serve(SERVE_DETAILS, "llm", "llm-a")
    assert app is not None
    assert (app.status, app.version, app.target_replicas, app.running_replicas) == (
        "RUNNING", "v2", 2, 1,
    )  # fmt: skip
    assert app.replica_ips() == {"10.250.0.3", "10.250.0.4"}
    assert parse_serve(SERVE_DETAILS, "other", "another") is None
    assert parse_serve(None, "llm", "llm-a") is None


def test_parse_serve_reports_the_worse_of_router_and_model() -> None:
    details = copy.deepcopy(SERVE_DETAILS)
    details["applications"]["llm"].update(status="DEPLOY_FAILED", message="router broke")
    app = parse_serve(details, "llm", "llm-a")
    assert app is not None and (app.status, app.message, app.version) == (
        "DEPLOY_FAILED",
        "router broke",
        "v2",
    )
    # The model's application not there (yet): not running, whatever the router says.
    del details["applications"]["llm-a"]
    details["applications"]["llm"].update(status="RUNNING", message="")
    app = parse_serve(details, "llm", "llm-a")
    assert app is not None and app.status == "NOT_STARTED" and app.running_replicas == 0
    assert not app.settled


def test_a_replica_still_stopping_holds_the_scale_down() -> None:
    rc = cluster(group(replicas=2, lo=2, hi=2))
    stopping = ServeApp(
        status="RUNNING", message="", version="v1", deployment_status="DOWNSCALING",
        target_replicas=1,
        replicas=(Replica("RUNNING", "10.0.0.0"), Replica("STOPPING", "10.0.0.9")),
    )  # fmt: skip
    pods = [WorkerPod("w-a", "10.0.0.0", "cpu"), WorkerPod("w-b", "10.0.0.9", "cpu")]
    got = replica_patch(
        rc, FIXED_1, serve=stopping, serve_expected=True, serve_replicas=1, pods=pods
    )
    assert got is None


def test_no_random_deletion_when_every_pod_hosts_a_replica() -> None:
    rc = cluster(group(replicas=2, lo=2, hi=2))
    one = serve(running=1, target=1)  # on 10.0.0.0; the other pod's IP is not known yet
    pods = [WorkerPod("w-a", "10.0.0.0", "cpu"), WorkerPod("w-b", None, "cpu")]
    got = replica_patch(rc, FIXED_1, serve=one, serve_expected=True, serve_replicas=1, pods=pods)
    assert got is None
