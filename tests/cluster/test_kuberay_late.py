"""KubeRay installed after the operator: status says what is missing, and it heals by itself.

Its own control plane (KubeRay's CRDs are cluster-wide, so the shared one cannot lose them):
started without KubeRay, then given its CRDs while the operator keeps running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from llmservice_operator import constants as c
from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.objects import WAIT_S, condition, get_rs, get_svc, llmservice, warned
from tests.cluster.operator_process import install_llmservice_crd, running_operator

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def bare(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    cluster = LocalCluster(with_kuberay=False)
    cluster.start()
    failed_before = request.session.testsfailed
    try:
        install_llmservice_crd(cluster.api_client)
        yield cluster
    finally:
        cluster.stop()
        if request.session.testsfailed > failed_before:
            print(f"\nthe KubeRay-less cluster's logs (operator included): {cluster.log_dir}")
        else:
            cluster.remove_workdir()


def test_kuberay_installed_late_is_picked_up_without_a_restart(
    bare: LocalCluster, request: pytest.FixtureRequest
) -> None:
    api = client.CustomObjectsApi(bare.api_client)
    core = client.CoreV1Api(bare.api_client)
    with running_operator(bare, request, "operator-kuberay-late") as operator:
        api.create_namespaced_custom_object(
            c.GROUP, c.VERSION, "default", c.PLURAL, llmservice("default")
        )

        def missing() -> dict[str, str] | None:
            ready = condition(get_svc(api, "default", "llama"), "Ready")
            return ready if ready.get("reason") == "KubeRayMissing" else None

        ready = wait_for("Ready reason KubeRayMissing", missing, WAIT_S)
        assert ready["status"] == "False" and "CRDs are not installed" in ready["message"]
        wait_for(
            "KubeRayMissing Warning event",
            lambda: warned(core, "default", "llama", "KubeRayMissing"),
            WAIT_S,
        )

        bare.install_kuberay_crds()
        # The same process, no restart: its retry (at most a minute apart) applies the child.
        rs = wait_for("the RayService", lambda: get_rs(api, "default", "llama"), 90)
        assert rs["metadata"]["ownerReferences"][0]["name"] == "llama"
        wait_for(
            "Ready reason no longer KubeRayMissing",
            lambda: (
                condition(get_svc(api, "default", "llama"), "Ready").get("reason")
                not in (None, "KubeRayMissing")
            ),
            WAIT_S,
        )
        assert operator.proc is not None and operator.proc.poll() is None  # never restarted
