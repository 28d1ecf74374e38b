"""Semantic validation: each bad spec names the field path and the reason."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llmservice_operator.errors import InvalidSpecError
from llmservice_operator.validate import parse
from tests.unit.examples import example_services

BASE: dict[str, Any] = {
    "apiVersion": "llmservice.dev/v1alpha1",
    "kind": "LLMService",
    "metadata": {"name": "m", "namespace": "ns"},
    "spec": {
        "model": {"source": "org/model"},
        "gpu": {"acceleratorType": "A100", "gpusPerNode": 8},
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    obj["spec"].update(changes)
    return obj


def errors_of(obj: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidSpecError) as info:
        parse(obj)
    return [(e.path, e.reason) for e in info.value.errors]


@pytest.mark.parametrize("case", sorted(example_services()))
def test_examples_are_valid(case: str) -> None:
    parse(example_services()[case])


BAD = [
    (with_spec(replicas=2, autoscaling={"maxReplicas": 3}), "spec.replicas", "mutually exclusive"),
    (
        with_spec(autoscaling={"minReplicas": 5, "maxReplicas": 3}),
        "spec.autoscaling.minReplicas",
        "must be <= maxReplicas",
    ),
    (
        with_spec(autoscaling={"maxReplicas": 3, "targetOngoingRequests": 500}),
        "spec.autoscaling.targetOngoingRequests",
        "exceeds maxOngoingRequests",
    ),
    (
        with_spec(engine={"tensorParallelSize": 16}),
        "spec.engine.tensorParallelSize",
        "do not fit one node of 8",
    ),
    (
        with_spec(engine={"tensorParallelSize": 3, "pipelineParallelSize": 4}),
        "spec.engine.tensorParallelSize",
        "does not divide gpusPerNode",
    ),
    (
        with_spec(engine={"extraArgs": {"tensor_parallel_size": 2}}),
        "spec.engine.extraArgs.tensor_parallel_size",
        "set by a typed field",
    ),
    (
        with_spec(engine={"extraArgs": {"SwapSpace": 2}}),
        "spec.engine.extraArgs.SwapSpace",
        "snake_case",
    ),
    (with_spec(engine={"dtype": "int3"}), "spec.engine.dtype", "Input should be"),
    (with_spec(engine={"quantization": "magic"}), "spec.engine.quantization", "Input should be"),
    (with_spec(engine={"bogus": 1}), "spec.engine.bogus", "unknown field"),
    (with_spec(model={"source": "not a model"}), "spec.model.source", "not a Hugging Face"),
    (
        with_spec(gpu={"acceleratorType": "Z100"}),
        "spec.gpu.acceleratorType",
        "unknown accelerator type",
    ),
    (
        with_spec(
            replicas=5,
            gpu={"acceleratorType": "L4", "pools": [{"name": "a", "maxWorkers": 2}]},
        ),
        "spec.gpu.pools",
        "need 5 worker pods",
    ),
    (with_spec(routePrefix="llama"), "spec.routePrefix", "String should match"),
    (with_spec(replicas=-1), "spec.replicas", "greater than or equal to 0"),
    ({**BASE, "metadata": {"name": "x" * 48}}, "metadata.name", "at most 47"),
    (
        {**BASE, "spec": {"model": {"source": "/m"}, "workerResources": {"cpu": "1500m"}}},
        "spec.workerResources.cpu",
        "needs 2 CPUs",
    ),
    ({**BASE, "metadata": {"name": "9lives"}}, "metadata.name", "DNS-1035"),
    (
        with_spec(networkPolicy={"dashboardFrom": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}),
        "spec.networkPolicy.dashboardFrom[0].ipBlock.cidr",
        "not a CIDR",
    ),
    (
        with_spec(
            networkPolicy={
                "servingFrom": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]
            }
        ),
        "spec.networkPolicy.servingFrom[0].ipBlock.except[0]",
        "not inside cidr",
    ),
    (
        with_spec(
            networkPolicy={"servingFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}
        ),
        "spec.networkPolicy.servingFrom[0]",
        "not both",
    ),
    (
        with_spec(
            env=[
                {
                    "name": "A",
                    "value": "x",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ]
        ),
        "spec.env[0]",
        "not both",
    ),
    (
        with_spec(env=[{"name": "A", "valueFrom": {}}]),
        "spec.env[0].valueFrom",
        "exactly one of secretKeyRef and configMapKeyRef",
    ),
    # The bad-input sweep: each of these used to pass and fail only when KubeRay made the pods.
    (
        with_spec(gpu={"acceleratorType": "L4", "nodeSelector": {"pool": "gpu-é"}}),
        "spec.gpu.nodeSelector['pool']",
        "not a label value",
    ),
    (
        with_spec(gpu={"acceleratorType": "L4", "nodeSelector": {"pool": "x" * 64}}),
        "spec.gpu.nodeSelector.pool",
        "at most 63 characters",
    ),
    (
        with_spec(gpu={"acceleratorType": "L4", "nodeSelector": {"gpu pool!": "l4"}}),
        "spec.gpu.nodeSelector['gpu pool!']",
        "not a label key",
    ),
    (
        with_spec(
            gpu={"acceleratorType": "L4", "pools": [{"name": "a", "nodeSelector": {"a/b/c": "x"}}]}
        ),
        "spec.gpu.pools[0].nodeSelector['a/b/c']",
        "not a label key",
    ),
    (
        with_spec(gpu={"acceleratorType": "L4", "resourceName": "memory"}),
        "spec.gpu.resourceName",
        "cpu, memory and kubernetes.io/ names are the pod's own resources",
    ),
    (
        with_spec(gpu={"acceleratorType": "L4", "resourceName": "kubernetes.io/gpu"}),
        "spec.gpu.resourceName",
        "not an extended resource name",
    ),
    (
        with_spec(
            gpu={
                "acceleratorType": "L4",
                "tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}],
            }
        ),
        "spec.gpu.tolerations[0].value",
        "must be empty when operator is Exists",
    ),
    (
        with_spec(gpu={"acceleratorType": "L4", "tolerations": [{"value": "x"}]}),
        "spec.gpu.tolerations[0].operator",
        "without a key must use Exists",
    ),
    (with_spec(image="ray:2.60 gpu"), "spec.image", "not an image reference"),
    (with_spec(image="régistry/ray:1"), "spec.image", "not an image reference"),
    (
        with_spec(envFrom=[{"prefix": "S3_"}]),
        "spec.envFrom[0]",
        "exactly one of secretRef and configMapRef",
    ),
]


@pytest.mark.parametrize(("obj", "path", "reason"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_spec_names_path_and_reason(obj: dict[str, Any], path: str, reason: str) -> None:
    found = errors_of(obj)
    assert any(p == path and reason in r for p, r in found), found


def test_every_problem_is_reported_at_once() -> None:
    obj = with_spec(
        replicas=2,
        autoscaling={"minReplicas": 3, "maxReplicas": 2},
        gpu={"acceleratorType": "Z100"},
    )
    paths = {p for p, _ in errors_of(obj)}
    assert {"spec.replicas", "spec.autoscaling.minReplicas", "spec.gpu.acceleratorType"} <= paths


def test_a_spec_too_big_for_the_annotations_is_refused_naming_the_largest_fields() -> None:
    env = [{"name": f"V{i}", "value": "x" * 30_000} for i in range(4)]
    found = errors_of(with_spec(env=env))
    assert found[0][0] == "spec" and "at most 100 KiB" in found[0][1]
    assert "largest: spec.env 117 KiB" in found[0][1]
    parse(with_spec(env=env[:3]))  # 88 KiB: fine


def test_canary_steps_are_checked_and_kept_under_another_strategy() -> None:
    obj = copy.deepcopy(example_services()["tiny"])
    obj["spec"]["rollout"] = {"strategy": "Canary", "canary": {"steps": [50, 20, 90]}}
    with pytest.raises(InvalidSpecError) as info:
        parse(obj)
    assert "spec.rollout.canary.steps[1]: steps must rise" in str(info.value)
    assert "spec.rollout.canary.steps[2]: the last step must be 100" in str(info.value)
    # `kubectl patch` of the strategy alone leaves the canary block: kept, not refused.
    obj["spec"]["rollout"] = {"strategy": "BlueGreen", "canary": {"steps": [10, 100]}}
    assert parse(obj).spec.rollout.canary is not None
    env = [{"name": "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "value": "1"}]
    obj["spec"].update(rollout={"strategy": "Canary"}, env=env)
    with pytest.raises(InvalidSpecError, match=r"spec\.rollout\.strategy: Canary splits traffic"):
        parse(obj)


def test_pythonpath_from_a_reference_is_refused() -> None:
    obj = copy.deepcopy(example_services()["tiny"])
    ref = {"configMapKeyRef": {"name": "paths", "key": "pythonpath"}}
    obj["spec"]["env"] = [{"name": "PYTHONPATH", "valueFrom": ref}]
    with pytest.raises(InvalidSpecError) as info:
        parse(obj)
    assert "spec.env[0].valueFrom: PYTHONPATH must be a literal value" in str(info.value)


def test_direct_streaming_without_haproxy_is_refused_with_its_env_index() -> None:
    obj = copy.deepcopy(example_services()["tiny"])
    direct = {"name": "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "value": "1"}
    obj["spec"]["env"] = [*obj["spec"]["env"], direct]
    with pytest.raises(InvalidSpecError) as info:
        parse(obj)
    needs = "spec.env[1]: RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 needs RAY_SERVE_ENABLE_HA_PROXY=1"
    assert needs in str(info.value)
    obj["spec"]["env"].append({"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"})
    assert parse(obj).spec.env[1].value == "1"
