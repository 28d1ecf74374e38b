"""Operations: namespace-scoped mode, liveness probe and Prometheus metrics of the operator."""

from __future__ import annotations

import urllib.request

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from tests.cluster.harness import LocalCluster, free_ports, wait_for
from tests.cluster.objects import get_rs, llmservice
from tests.cluster.operator_process import OperatorProcess, install_llmservice_crd

pytestmark = pytest.mark.cluster


def _get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    with opener.open(url, timeout=5) as resp:
        body: bytes = resp.read()
        return body.decode()


def test_namespaced_operator_with_probes_and_metrics(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    install_llmservice_crd(cluster.api_client)
    other = f"{namespace[:50]}-other"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    metrics_port, live_port = free_ports(2)
    proc = OperatorProcess(
        cluster, "operator-namespaced", "--namespace", namespace,
        "--metrics-port", str(metrics_port), "--liveness", f"http://127.0.0.1:{live_port}/healthz",
    )  # fmt: skip
    proc.start()
    try:
        api = client.CustomObjectsApi(cluster.api_client)
        for ns in (namespace, other):
            api.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, llmservice(ns))
        wait_for("RayService in the watched namespace", lambda: get_rs(api, namespace, "llama"), 60)
        wait_for("liveness probe", lambda: _get(f"http://127.0.0.1:{live_port}/healthz"), 30)

        # The RayService exists once the apply returned; the reconcile counts itself only after it
        # has also written the status, so wait for the counter rather than read it once.
        def counted() -> str | None:
            text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
            return text if 'llmservice_reconciles_total{result="ok"}' in text else None

        metrics = wait_for("reconcile counted in /metrics", counted, 30)
        assert 'llmservice_rayservice_applies_total{action="created"} 1.0' in metrics
        assert "llmservice_reconcile_seconds_bucket" in metrics
        assert get_rs(api, other, "llama") is None  # outside its namespace: not touched
        svc = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "llama")
        assert not svc["metadata"].get("finalizers")  # deletion never waits for the operator
    finally:
        proc.stop()
        core.delete_namespace(other)
