"""Rendered Ray pods meet the `restricted` Pod Security Standard and hold no API token unasked.

The cluster test (tests/cluster/test_security.py) has the API server's PodSecurity admission
judge the pods KubeRay makes; these pin the rendered fields that make it pass, for every example.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from llmservice_operator.render import SA_TOKEN_PATH, render_rayservice
from llmservice_operator.validate import parse
from llmservice_operator.validate import warnings as validate_warnings
from tests.unit.examples import example_services

EXAMPLES = example_services()


def _pods(rs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rs["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster.get("workerGroupSpecs") or []:
        yield group["groupName"], group["template"]["spec"]


def _restricted_violations(pod: dict[str, Any], extra: list[dict[str, Any]]) -> list[str]:
    """The checks of the restricted profile (v1.30+) that a pod template can fail."""
    found = []
    psc = pod.get("securityContext") or {}
    if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        found.append("pod seccompProfile")
    for ctr in [*pod["containers"], *extra]:
        sc = ctr.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{ctr['name']}: allowPrivilegeEscalation")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            found.append(f"{ctr['name']}: capabilities.drop")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            found.append(f"{ctr['name']}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            found.append(f"{ctr['name']}: runAsUser 0")
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= {"emptyDir", "projected", "configMap", "secret", "persistentVolumeClaim"}:
            found.append(f"volume {vol['name']}: {kinds}")
    return found


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_every_pod_meets_restricted(case: str) -> None:
    rs = render_rayservice(parse(EXAMPLES[case]))
    cluster = rs["spec"]["rayClusterConfig"]
    # KubeRay's autoscaler sidecar takes its securityContext from autoscalerOptions.
    sidecar = []
    if cluster["enableInTreeAutoscaling"]:
        opts = cluster["autoscalerOptions"]
        sidecar = [{"name": "autoscaler", "securityContext": opts["securityContext"]}]
    for name, pod in _pods(rs):
        assert _restricted_violations(pod, sidecar if name == "head" else []) == [], name


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_no_ray_container_gets_a_token_unasked(case: str) -> None:
    rs = render_rayservice(parse(EXAMPLES[case]))
    cluster = rs["spec"]["rayClusterConfig"]
    for name, pod in _pods(rs):
        assert pod["automountServiceAccountToken"] is False, name
        assert "serviceAccountName" not in pod, name
        for ctr in pod["containers"]:
            mounts = [m["mountPath"] for m in ctr.get("volumeMounts") or []]
            assert SA_TOKEN_PATH not in mounts, (name, ctr["name"])
    head = cluster["headGroupSpec"]["template"]["spec"]
    projected = [v for v in head["volumes"] if "projected" in v]
    if cluster["enableInTreeAutoscaling"]:
        # ...but the autoscaler, which patches the RayCluster, mounts the projected token.
        (mount,) = cluster["autoscalerOptions"]["volumeMounts"]
        assert mount["mountPath"] == SA_TOKEN_PATH and mount["readOnly"] is True
        (volume,) = projected
        assert volume["name"] == mount["name"]
        sources = volume["projected"]["sources"]
        assert any("serviceAccountToken" in s for s in sources)
    else:
        assert projected == [] and "autoscalerOptions" not in cluster


@pytest.mark.parametrize("case", sorted(EXAMPLES))
def test_rays_session_directory_is_an_empty_dir(case: str) -> None:
    rs = render_rayservice(parse(EXAMPLES[case]))
    for name, pod in _pods(rs):
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for ctr in pod["containers"]:
            (mount,) = [m for m in ctr["volumeMounts"] if m["mountPath"] == "/tmp/ray"]
            assert mount["name"] in empty, (name, ctr["name"])


@pytest.mark.parametrize("case", ["llama-8b-l4", "autoscaling"])
def test_a_named_service_account_gets_its_token_everywhere(case: str) -> None:
    obj = copy.deepcopy(EXAMPLES[case])
    obj["spec"]["serviceAccountName"] = "model-reader"
    rs = render_rayservice(parse(obj))
    cluster = rs["spec"]["rayClusterConfig"]
    for name, pod in _pods(rs):
        assert pod["serviceAccountName"] == "model-reader", name
        assert pod["automountServiceAccountToken"] is True, name
        assert not [v for v in pod["volumes"] if "projected" in v], name
    assert "volumeMounts" not in cluster.get("autoscalerOptions", {})


def test_credentials_from_a_secret_render_as_references_only() -> None:
    obj = copy.deepcopy(EXAMPLES["llama-8b-s3"])
    rs = render_rayservice(parse(obj))
    for _, pod in _pods(rs):
        (ctr,) = pod["containers"]
        env = {e["name"]: e for e in ctr["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "model-bucket", "key": "secret-access-key"}},
        }
        assert env["AWS_REGION"] == {"name": "AWS_REGION", "value": "us-east-1"}
        assert ctr["envFrom"] == [
            {"configMapRef": {"name": "model-bucket-endpoint", "optional": True}}
        ]
    assert validate_warnings(parse(obj).spec) == []


@pytest.mark.parametrize(
    ("name", "warned"),
    [("AWS_SECRET_ACCESS_KEY", True), ("OPENAI_API_KEY", True), ("DB_PASSWORD", True),
     ("HF_TOKEN", True), ("VLLM_LOGGING_LEVEL", False), ("AWS_REGION", False)],
)  # fmt: skip
def test_a_literal_credential_is_warned_about_not_refused(name: str, warned: bool) -> None:
    obj = copy.deepcopy(EXAMPLES["tiny"])
    obj["spec"]["env"] = [{"name": name, "value": "abc123"}]
    found = validate_warnings(parse(obj).spec)  # parses: a warning never rejects the spec
    assert [w.path for w in found] == (["spec.env[0].value"] if warned else [])
    if warned:
        assert "valueFrom.secretKeyRef" in found[0].reason
