"""Two operator replicas with kopf peering: one acts, the other stands by, and takes over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from llmservice_operator import constants as c
from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.objects import get_rs, llmservice
from tests.cluster.operator_process import OperatorProcess, install_llmservice_crd

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]
PEERING = "llmservice-peering-test"


def _install_peering(api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    crds_file = ROOT / "charts" / "llmservice-operator" / "crds" / "kopf-peerings.yaml"
    for doc in yaml.safe_load_all(crds_file.read_text()):
        if doc:
            ext.patch_custom_resource_definition(
                doc["metadata"]["name"], doc, field_manager="llmservice-tests", force=True,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip
    custom = client.CustomObjectsApi(api_client)
    body = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": PEERING},
    }
    wait_for(
        "ClusterKopfPeering created",
        lambda: custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body),
        30,
    )


def test_only_the_leader_acts_and_the_standby_takes_over(
    cluster: LocalCluster, namespace: str
) -> None:
    install_llmservice_crd(cluster.api_client)
    _install_peering(cluster.api_client)
    peering = ["--peering", PEERING]
    leader = OperatorProcess(
        cluster, "peer-leader", *peering, "--priority", "200", standalone=False
    )
    standby = OperatorProcess(
        cluster, "peer-standby", *peering, "--priority", "100", standalone=False
    )
    custom = client.CustomObjectsApi(cluster.api_client)
    leader.start()
    standby.start()
    try:
        # Both announced in the peering object, and the standby has paused (kopf pauses a peer
        # once it sees a higher priority; an object created before that could be handled twice).
        wait_for(
            "two peers in the peering object",
            lambda: (
                len(
                    custom.get_cluster_custom_object(
                        "kopf.dev", "v1", "clusterkopfpeerings", PEERING
                    ).get("status", {})
                )
                == 2
            ),
            90,
        )
        wait_for("standby paused", lambda: "Pausing operations" in standby.log.read_text(), 30)
        # Objects left by earlier tests may be handled by both peers while they start up;
        # from here on the standby must do nothing.
        standby_log_start = len(standby.log.read_text(errors="replace"))
        custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace, name="first")
        )
        wait_for("RayService by the leader", lambda: get_rs(custom, namespace, "first"), 60)
        time.sleep(12)  # two resync intervals: a standby that acted would have done so by now
        events = client.CoreV1Api(cluster.api_client).list_namespaced_event(namespace).items
        applied = [e for e in events if e.reason == "Applied" and e.involved_object.name == "first"]
        assert len(applied) == 1, [e.message for e in applied]
        since = standby.log.read_text(errors="replace")[standby_log_start:]
        assert "Handler 'on_llmservice' is invoked" not in since
        assert "resync of" not in since

        leader.kill()
        custom.create_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace, name="second")
        )
        # kopf's default peer lifetime is 60 s: the standby resumes once the leader expires.
        wait_for("the standby takes over", lambda: get_rs(custom, namespace, "second"), 150)
    finally:
        leader.stop()
        standby.stop()
