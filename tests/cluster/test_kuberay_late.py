"""KubeRay installed after the operator: status says what is missing, and it heals by itself.

Its own control plane (KubeRay's CRDs are cluster-wide, so the shared one cannot lose them):
started without KubeRay, then given its CRDs while the operator keeps running.
"""

from __future__ import annotations

import datetime as dt
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


def test_a_kuberay_refusal_reaches_status_from_one_watch_not_a_list_per_reconcile(
    bare: LocalCluster, request: pytest.FixtureRequest
) -> None:
    """KubeRay refuses an invalid RayService with a Warning event and writes no status. No
    KubeRay controller runs here, so the RayService's status lags like a refused one's; the
    refusal is the event KubeRay would post (our validation refuses what KubeRay does first, so
    no spec of ours makes the real one refuse). The operator's watch sees it and the LLMService
    says so at once, with no events LIST per reconcile (the API server scans a namespace's
    events for each: quadratic in a burst)."""
    crds = client.ApiextensionsV1Api(bare.api_client).list_custom_resource_definition().items
    if not any(crd.metadata.name == "rayservices.ray.io" for crd in crds):
        bare.install_kuberay_crds()  # run alone, without the test above
    api = client.CustomObjectsApi(bare.api_client)
    core = client.CoreV1Api(bare.api_client)
    name = "refused"
    # A resync far away: only the watch can bring the refusal to status in time.
    resync = ("--timer-interval", "600")
    with running_operator(bare, request, "operator-refusals", *resync, metrics=True) as operator:
        api.create_namespaced_custom_object(
            c.GROUP, c.VERSION, "default", c.PLURAL, llmservice("default", name=name)
        )
        rs = wait_for("the RayService", lambda: get_rs(api, "default", name), WAIT_S)
        wait_for(
            "status written",
            lambda: condition(get_svc(api, "default", name), "Ready").get("reason"),
            WAIT_S,
        )
        lists_before = operator.metrics().value(
            "llmservice_api_requests_total", verb="list", resource="events"
        )
        message = "RayService name should be no more than 48 characters"
        core.create_namespaced_event(
            "default",
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{name}."),
                involved_object=client.V1ObjectReference(
                    api_version="ray.io/v1",
                    kind="RayService",
                    name=name,
                    namespace="default",
                    uid=rs["metadata"]["uid"],
                ),
                type="Warning",
                reason="InvalidRayServiceSpec",
                message=message,
                source=client.V1EventSource(component="rayservice-controller"),
                first_timestamp=dt.datetime.now(dt.UTC),
                last_timestamp=dt.datetime.now(dt.UTC),
                count=1,
            ),
        )

        def refused() -> dict[str, str] | None:
            degraded = condition(get_svc(api, "default", name), "Degraded")
            return degraded if degraded.get("reason") == "ValidationFailed" else None

        # Well within the resync interval: the watch's refusal reconciles the owner itself.
        degraded = wait_for("Degraded reason ValidationFailed", refused, 20)
        assert degraded["status"] == "True" and message in degraded["message"], degraded
        lists_after = operator.metrics().value(
            "llmservice_api_requests_total", verb="list", resource="events"
        )
        assert lists_after == lists_before, (lists_before, lists_after)
