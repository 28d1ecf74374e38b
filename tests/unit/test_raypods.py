"""The Ray pod runner's pure parts: a KubeRay pod and its RayCluster -> the `ray start` it gets."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.raypods import (
    node_env,
    node_request,
    parse_quantity,
    ray_start_argv,
    readiness_paths,
    start_param_flags,
)

RAYCLUSTER = {
    "spec": {
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"}},
        "workerGroupSpecs": [
            {"groupName": "cpu", "rayStartParams": {"resources": '"{\\"x\\": 1}"'}}
        ],
    }
}


def pod(
    role: str, limits: dict[str, str], env: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    labels = {"ray.io/node-type": role, "ray.io/cluster": "tiny-abc"}
    if role == "worker":
        labels["ray.io/group"] = "cpu"
    return {
        "metadata": {"name": f"p-{role}", "namespace": "ns", "uid": f"u-{role}", "labels": labels},
        "spec": {"containers": [{"resources": {"limits": limits}, "env": env or []}]},
    }


@pytest.mark.parametrize(
    ("text", "want"),
    [("2", "2"), ("500m", "0.5"), ("4Gi", str(4 * 2**30)), ("1e3", "1E+3"), ("1k", "1000")],
)
def test_quantities(text: str, want: str) -> None:
    assert parse_quantity(text) == Decimal(want)


def test_start_params_become_flags_the_way_kuberay_writes_them() -> None:
    params = {"disable-usage-stats": "true", "verbose": "false", "num-cpus": "2", "port": "1"}
    # A true boolean is a bare flag, a false one nothing; the runner's own flags stay its own.
    assert start_param_flags(params) == ["--disable-usage-stats", "--num-cpus=2"]
    assert start_param_flags({"include-dashboard": "false"}) == ["--include-dashboard=false"]
    assert start_param_flags({"resources": '"{\\"x\\": 1}"'}) == ['--resources={"x": 1}']


def test_head_keeps_its_num_cpus_0_and_workers_get_their_limits(tmp_path: Path) -> None:
    head = node_request(pod("head", {"cpu": "1", "memory": "2Gi"}), RAYCLUSTER)
    argv = ray_start_argv(head, "10.250.0.2", None, tmp_path)
    assert "--head" in argv and "--num-cpus=0" in argv  # rayStartParams win over the limit
    assert f"--memory={2 * 2**30}" in argv

    worker = node_request(pod("worker", {"cpu": "1500m", "memory": "4Gi"}), RAYCLUSTER)
    argv = ray_start_argv(worker, "10.250.0.3", "10.250.0.2", tmp_path)
    assert "--address=10.250.0.2:6379" in argv and "--node-ip-address=10.250.0.3" in argv
    assert "--num-cpus=2" in argv  # rounded up, as KubeRay's Quantity.Value() does
    assert '--resources={"x": 1}' in argv
    with pytest.raises(ValueError, match="head's address"):
        ray_start_argv(worker, "10.250.0.3", None, tmp_path)


def test_env_points_cluster_dns_names_at_the_head_and_fills_the_pod_ip() -> None:
    env = [
        {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
        {"name": "FQ_RAY_IP", "value": "tiny-abc-head-svc.ns.svc.cluster.local"},
        {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    worker = node_request(pod("worker", {"cpu": "2"}, env), RAYCLUSTER)
    got = node_env(worker, "10.250.0.3", "10.250.0.2", {})
    assert got["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert got["FQ_RAY_IP"] == "10.250.0.2"
    assert (got["MY_POD_IP"], got["MY_NAME"]) == ("10.250.0.3", "p-worker")
    assert not any(k.lower().endswith("_proxy") for k in got)


def test_readiness_comes_from_the_probes_kuberay_wrote() -> None:
    probe = (
        "wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"
        " && wget --tries 1 -T 10 -q -O- http://localhost:8000/-/healthz | grep success"
    )
    worker = pod("worker", {"cpu": "2"})
    worker["spec"]["containers"][0]["readinessProbe"] = {"exec": {"command": ["bash", "-c", probe]}}
    assert readiness_paths(worker) == [(52365, "api/local_raylet_healthz"), (8000, "-/healthz")]
    assert readiness_paths(pod("head", {})) == [(52365, "api/local_raylet_healthz")]
