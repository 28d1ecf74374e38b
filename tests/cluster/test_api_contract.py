"""The generated CRD and the rendered RayServices against the real API server and KubeRay CRDs."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmservice_operator import constants as c
from llmservice_operator.render import render
from llmservice_operator.validate import parse
from tests.cluster.harness import LocalCluster
from tests.cluster.operator_process import install_llmservice_crd
from tests.unit.examples import example_services

pytestmark = pytest.mark.cluster
EXAMPLES = example_services()


@pytest.fixture(scope="module")
def custom(cluster: LocalCluster) -> Iterator[client.CustomObjectsApi]:
    install_llmservice_crd(cluster.api_client)
    yield client.CustomObjectsApi(cluster.api_client)


def _in(namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    return obj


def _create_llmservice(
    custom: client.CustomObjectsApi, namespace: str, obj: dict[str, Any], dry_run: bool = False
) -> Any:
    return custom.create_namespaced_custom_object(
        c.GROUP,
        c.VERSION,
        namespace,
        c.PLURAL,
        _in(namespace, obj),
        dry_run="All" if dry_run else None,
        field_validation="Strict",
    )


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_crd_accepts_every_example(
    custom: client.CustomObjectsApi, namespace: str, case: str
) -> None:
    created = _create_llmservice(custom, namespace, EXAMPLES[case])
    # API-server defaults come from the same models: parsing the stored object gives the same spec.
    assert parse(created).spec == parse(_in(namespace, EXAMPLES[case])).spec


def _with(change: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(EXAMPLES["llama-8b-l4"])
    obj["spec"].update(change)
    return obj


def _gpu(**change: Any) -> dict[str, Any]:
    gpu = {**copy.deepcopy(EXAMPLES["llama-8b-l4"]["spec"]["gpu"]), **change}
    return _with({"gpu": gpu})


INVALID = [
    (_with({"autoscaling": {"maxReplicas": 3}}), "replicas and autoscaling are mutually exclusive"),
    (
        _with({"replicas": None, "autoscaling": {"minReplicas": 4, "maxReplicas": 2}}),
        "minReplicas must be <= maxReplicas",
    ),
    (_with({"replicas": -1}), "spec.replicas"),
    (_with({"engine": {"dtype": "int3"}}), 'spec.engine.dtype: Unsupported value: "int3"'),
    (_with({"routePrefix": "no-slash"}), "spec.routePrefix"),
    (_with({"gpu": {"gpusPerNode": 2}}), "spec.gpu.acceleratorType: Required value"),
    (_with({"engine": {"colour": "red"}}), 'unknown field "spec.engine.colour"'),
    (_with({"model": {}}), "spec.model.source: Required value"),
    ({**_with({}), "metadata": {"name": "n" * 48}}, "metadata.name: at most 47 characters"),
    # The bad-input sweep: each of these once passed the schema and failed only when KubeRay
    # created the pods (an endless Progressing). Now the API server refuses them, naming the field.
    (_gpu(nodeSelector={"pool": "gpu-é"}), "spec.gpu.nodeSelector: Invalid value"),
    (_gpu(nodeSelector={"pool": "x" * 64}), "spec.gpu.nodeSelector.pool: Too long"),
    (_gpu(nodeSelector={"gpu pool!": "l4"}), "spec.gpu.nodeSelector: Invalid value"),
    (
        _gpu(pools=[{"name": "a", "nodeSelector": {"a/b/c": "x"}}]),
        "spec.gpu.pools[0].nodeSelector: Invalid value",
    ),
    (_gpu(resourceName="memory"), "spec.gpu.resourceName: Invalid value"),
    (_gpu(resourceName="cpu"), "cpu, memory and kubernetes.io/ names are the pod's own resources"),
    (
        _gpu(tolerations=[{"key": "gpu", "operator": "Exists", "value": "x"}]),
        'spec.gpu.tolerations[0]: Invalid value: "object": value must be empty when operator '
        "is Exists",
    ),
    (_gpu(tolerations=[{"value": "x"}]), "a toleration without a key must use operator Exists"),
    (
        _gpu(tolerations=[{"key": "bad key", "operator": "Exists"}]),
        'spec.gpu.tolerations[0]: Invalid value: "object": key must be a label key',
    ),
    (_with({"image": "ray:2.60 gpu"}), "spec.image: Invalid value"),
    (_with({"image": "régistry/ray:1"}), "spec.image: Invalid value"),
]


@pytest.mark.parametrize(("obj", "message"), INVALID, ids=[m for _, m in INVALID])
def test_crd_rejects_invalid_specs(
    custom: client.CustomObjectsApi, namespace: str, obj: dict[str, Any], message: str
) -> None:
    obj = copy.deepcopy(obj)
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    with pytest.raises(ApiException) as info:
        _create_llmservice(custom, namespace, obj)
    assert info.value.status in (400, 422)
    body = json.loads(info.value.body)
    assert message in body["message"], body["message"]


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_kuberay_accepts_every_rendered_rayservice(
    cluster: LocalCluster, namespace: str, case: str
) -> None:
    custom = client.CustomObjectsApi(cluster.api_client)
    rayservice, policy, code = render(parse(_in(namespace, EXAMPLES[case])))
    # The code ConfigMap and the NetworkPolicy against the real v1 schemas, unknown fields
    # refused (an immutable ConfigMap: created once, as the operator does).
    core = client.CoreV1Api(cluster.api_client)
    made_cm = core.create_namespaced_config_map(
        namespace, code, dry_run="All", field_validation="Strict"
    )
    assert made_cm.immutable and made_cm.data == code["data"]
    net = client.NetworkingV1Api(cluster.api_client)
    for dry_run in ("All", None):
        made = net.create_namespaced_network_policy(
            namespace, policy, dry_run=dry_run, field_validation="Strict"
        )
        assert made.metadata.name == policy["metadata"]["name"]
    group, version = rayservice["apiVersion"].split("/")
    for dry_run in ("All", None):
        created = custom.create_namespaced_custom_object(
            group,
            version,
            namespace,
            "rayservices",
            rayservice,
            dry_run=dry_run,
            field_validation="Strict",
        )
        assert created["metadata"]["name"] == rayservice["metadata"]["name"]
    stored = custom.get_namespaced_custom_object(
        group, version, namespace, "rayservices", rayservice["metadata"]["name"]
    )
    assert stored["spec"]["serveConfigV2"] == rayservice["spec"]["serveConfigV2"]
