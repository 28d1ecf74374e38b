"""The chart's guardrails: a ValidatingAdmissionPolicy the API server enforces on LLMServices.

The policy comes from `helm template` of the chart with guardrails on, bound to this test's
namespace only (the policy is cluster-wide; other tests' LLMServices must not meet it). Each
refusal is a real `kubectl apply` answered by kube-apiserver, and its message must name the field.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import REPO_ROOT, LocalCluster, wait_for
from tests.cluster.objects import llmservice
from tests.cluster.test_install import CHART, HELM, kubectl

pytestmark = pytest.mark.cluster

ALLOWED_POOLS = {"llmservice.dev/pool": ["l4", "a100"]}


@pytest.fixture
def guardrails(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[str]:
    values = {
        "guardrails": {
            "enabled": True,
            "allowedImagePrefixes": ["registry.example.com/ray/"],
            "allowedTolerationKeys": ["nvidia.com/gpu"],
            "allowedNodeSelectors": ALLOWED_POOLS,
            "allowedSecretNames": ["hf-token", "model-bucket"],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        }
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    rendered = subprocess.run(
        [str(HELM), "template", f"g-{namespace[-6:]}", str(CHART),
         "-f", str(tmp_path / "values.yaml"), "--show-only", "templates/guardrails.yaml"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    kubectl(cluster, "apply", "-f", "-", stdin=rendered)
    try:
        # The API server compiles the policy and picks up the binding asynchronously: wait until
        # a forbidden object is refused before testing anything.
        probe = _manifest(namespace, "probe", image="evil.example.com/ray:1")
        wait_for(
            "the admission policy to take effect",
            lambda: _apply(cluster, probe, dry_run=True).returncode != 0,
            60,
        )
        yield namespace
    finally:
        kubectl(cluster, "delete", "-f", "-", "--ignore-not-found", stdin=rendered, check=False)


def _manifest(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    obj = llmservice(namespace, name=name, **spec)
    obj["apiVersion"], obj["kind"] = "llmservice.dev/v1alpha1", "LLMService"
    return obj


def _apply(
    cluster: LocalCluster, obj: dict[str, Any], dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    args = ["apply", "-f", "-", *(["--dry-run=server"] if dry_run else [])]
    return kubectl(cluster, *args, stdin=json.dumps(obj), check=False)


def _gpu(**changes: Any) -> dict[str, Any]:
    gpu = copy.deepcopy(llmservice("x")["spec"]["gpu"])
    gpu.update(changes)
    return gpu


REFUSED = [
    ({"image": "evil.example.com/ray:2.60.0"},
     "spec.image: evil.example.com/ray:2.60.0 is not from an allowed registry"),
    ({"gpu": _gpu(tolerations=[{"operator": "Exists"}])},
     "spec.gpu.tolerations: only tolerations with a key in [nvidia.com/gpu]"),
    ({"gpu": _gpu(pools=[{"name": "spot", "tolerations": [{"key": "team-b"}]}])},
     "spec.gpu.pools[].tolerations: only tolerations with a key in [nvidia.com/gpu]"),
    ({"gpu": _gpu(nodeSelector={"node-role.kubernetes.io/control-plane": ""})},
     "spec.gpu.nodeSelector: only these node labels and values are allowed"),
    ({"gpu": _gpu(pools=[{"name": "h100", "nodeSelector": {"llmservice.dev/pool": "h100"}}])},
     "spec.gpu.pools[].nodeSelector: only these node labels and values are allowed"),
    ({"model": {"source": "org/m", "hfTokenSecretRef": {"name": "db-admin"}}},
     "spec.model.hfTokenSecretRef.name: only these Secrets may be used: [hf-token, model-bucket]"),
    ({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db-admin", "key": "p"}}}]},
     "spec.env[].valueFrom.secretKeyRef.name: only these Secrets may be used"),
    ({"envFrom": [{"secretRef": {"name": "db-admin"}}]},
     "spec.envFrom[].secretRef.name: only these Secrets may be used"),
    ({"engine": {"extraArgs": {"trust_remote_code": True}}},
     "spec.engine.extraArgs.trust_remote_code: running a model's own code is not allowed"),
]  # fmt: skip


def test_disallowed_fields_are_refused_by_kubectl_apply_naming_the_field(
    cluster: LocalCluster, guardrails: str
) -> None:
    for i, (spec, message) in enumerate(REFUSED):
        result = _apply(cluster, _manifest(guardrails, f"bad-{i}", **spec))
        assert result.returncode != 0, f"{spec} was admitted"
        assert message in result.stderr, result.stderr
        assert "denied request" in result.stderr and "guardrails" in result.stderr
    listed = kubectl(cluster, "get", "llmsvc", "-n", guardrails, "-o", "name").stdout
    assert listed.strip() == ""  # nothing refused was half-created


def test_allowed_fields_pass(cluster: LocalCluster, guardrails: str) -> None:
    allowed = _manifest(
        guardrails, "good",
        image="registry.example.com/ray/llmservice-ray:2.60.0-gpu",
        gpu=_gpu(
            nodeSelector={"llmservice.dev/pool": "l4"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            pools=[{"name": "a100", "nodeSelector": {"llmservice.dev/pool": "a100"}}],
        ),
        engine={"extraArgs": {"trust_remote_code": False, "swap_space": 4}},
        env=[{"name": "AWS_SECRET_ACCESS_KEY",
              "valueFrom": {"secretKeyRef": {"name": "model-bucket", "key": "k"}}}],
        envFrom=[{"secretRef": {"name": "model-bucket"}}, {"configMapRef": {"name": "any"}}],
    )  # fmt: skip
    result = _apply(cluster, allowed)
    assert result.returncode == 0, result.stderr
    # Without an image of its own the LLMService is not refused either (the default is the
    # operator's; the policy bounds what users choose).
    result = _apply(cluster, _manifest(guardrails, "default-image"))
    assert result.returncode == 0, result.stderr
