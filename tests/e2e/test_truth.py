"""Operator promises proven where a user feels them: pods that exist, Serve replicas that answer,
requests that do not fail, and a status that never runs ahead of any of them.

The scenarios share one tiny LLMService (a vLLM replica takes a minute to start on two cores)
and run in file order; each first waits until the service has settled. While a scenario runs,
a load generator streams chat completions through `kubectl proxy` and the serve Service, and a
timeline samples the LLMService status beside Ray Serve's own state once a second.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from llmservice_operator import capacity
from llmservice_operator import constants as c
from llmservice_operator.render.code import CODE_ROOT, packaged
from tests.cluster.ground.nodes import POOL_LABEL, NodePool, node_manifest
from tests.cluster.ground.probes import http_get
from tests.cluster.objects import condition
from tests.e2e.conftest import Ground
from tests.e2e.rollouts import CANARY_RATE, CANARY_ROLLOUT, GOOD_ROLLOUT
from tests.e2e.world import NotYet, Sample, Timeline, on_monotonic
from tests.support import dashboard
from tests.support.loadgen import LoadGenerator, LoadReport
from tests.support.raypods import DEFAULT_SUBNET, parse_quantity

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

CONVERGE_S = 600.0  # one vLLM replica start on a contended 2-core machine, with margin
RATE = 1.0  # requests per second: steady traffic without starving the engines of CPU


def _load(g: Ground) -> LoadGenerator:
    return LoadGenerator(
        g.base_url, g.model, rate_per_s=RATE, max_tokens=8, timeout_s=120, max_duration_s=1500,
        extra_body={"min_tokens": 2},  # random weights could stop at once: an empty stream
    )  # fmt: skip


def _sizes(rc: dict[str, Any]) -> tuple[Any, Any, Any]:
    group = rc["spec"]["workerGroupSpecs"][0]
    return group.get("replicas"), group.get("minReplicas"), group.get("maxReplicas")


def _record(
    g: Ground,
    scenario: str,
    report: LoadReport,
    line: Timeline,
    began: float,
    seen: str,
    settled_at: float,
) -> None:
    g.record(
        scenario,
        sent=report.sent,
        failed=report.failed,
        failed_by_kind=report.failed_by_kind,
        examples={kind: msgs[:1] for kind, msgs in report.examples.items()},
        failed_after_settled=report.failures_between(settled_at, time.monotonic()),
        converge_s=round(time.monotonic() - began, 1),
        status_seen=seen,
        ttft_p50_s=report.ttft_p50_s,
        samples=len(line.samples),
    )


def _healthy_once_settled(report: LoadReport, settled_at: float) -> None:
    """Once status says it is done, nothing fails. Failures during a change are counted in the
    results table (goal 0); on two shared cores they include engine starts starving the one
    that serves, which no real node has."""
    after = report.failures_between(settled_at, time.monotonic())
    assert not after, f"failed after the LLMService settled: {after}; {report.summary()}"
    assert report.succeeded > 0, report.summary()


def _truthful(line: Timeline) -> None:
    over = line.overstated_replicas()
    assert not over, f"readyReplicas above the RUNNING Serve replicas:\n{line.table()}"
    early = line.early_versions()
    assert not early, f"activeVersion before Serve ran it:\n{line.table()}"


def _seen(line: Timeline, what: str, check: Callable[[Sample], bool]) -> bool:
    """The sampler (beside the test, one sample every second or so) has itself seen a state the
    test saw: a state shorter than its period would leave the status of that moment unexplained."""
    if line.first(check) is None:
        raise NotYet(
            f"{len(line.samples)} samples, none with {what} yet; {line.skipped} skipped"
            f" (last: {line.last_error or '-'})"
        )
    return True


def _seen_ready(line: Timeline) -> bool:
    return _seen(line, "Ready=True", lambda s: s.ready == "True")


@pytest.mark.compat
def test_create_is_ready_only_when_a_completion_succeeds(ground_world: Ground) -> None:
    g, w = ground_world, ground_world.world
    began = time.monotonic()
    with w.timeline(interval=0.5) as line:
        g.create()

        def ready() -> dict[str, Any]:
            svc = w.svc()
            if condition(svc, "Ready").get("status") != "True":
                raise NotYet(condition(svc, "Ready").get("message"))
            return svc

        svc = w.wait("Ready=True", ready, CONVERGE_S)
        # The moment status says Ready, a user's request must succeed: no retry, no grace time.
        answer = g.chat()
        svc = w.wait("settled", w.settled, CONVERGE_S)
        # The sampler may have been mid-read when Ready flipped (one sample reads status, Ray and
        # pods; seconds on two busy cores): keep it running until it has seen Ready itself.
        w.wait("the timeline to see Ready=True", lambda: _seen_ready(line), CONVERGE_S)
    serve = w.serve()
    assert serve is not None and serve.running_replicas == 1
    assert svc["status"]["readyReplicas"] == 1 and svc["status"]["activeVersion"] == "v1"
    assert svc["status"].get("pendingVersion") is None
    assert svc["status"]["endpoint"].endswith(".svc:8000/v1")
    _truthful(line)
    first_ready = line.first(lambda s: s.ready == "True")
    assert first_ready is not None and line.samples[0].ready != "True"
    g.record(
        "create",
        sent=1,
        failed=0,
        converge_s=round(time.monotonic() - began, 1),
        status_seen=f"Ready after {first_ready.t:.0f}s, a completion at once: {answer!r}",
    )


def test_every_ray_pod_runs_its_own_ray_node(ground_world: Ground) -> None:
    """The ground itself: pod IPs are the nodes' own, and Ray's resources are the pods' limits."""
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    pods = {p.metadata.name: p for p in w.core.list_namespaced_pod(
        w.namespace, label_selector=f"llmservice.dev/name={w.name}"
    ).items if p.status.phase == "Running" and p.metadata.deletion_timestamp is None}  # fmt: skip
    roles = sorted(p.metadata.labels["ray.io/node-type"] for p in pods.values())
    assert roles == ["head", "worker"], roles
    nodes = {n.pod: n for n in g.runner.nodes()}
    ips = {name: pod.status.pod_ip for name, pod in pods.items()}
    assert ips == {name: nodes[name].ip for name in pods}, (ips, nodes)
    assert len(set(ips.values())) == 2 and all(
        ipaddress.ip_address(ip) in ipaddress.ip_network(DEFAULT_SUBNET) for ip in ips.values()
    ), ips

    head = next(p for p in pods.values() if p.metadata.labels["ray.io/node-type"] == "head")
    resp: Any = w.core.connect_get_namespaced_service_proxy_with_path(
        f"{head.metadata.labels['ray.io/cluster']}-head-svc:dashboard", w.namespace,
        "api/v0/nodes", _preload_content=False,
    )  # fmt: skip
    alive = [n for n in json.loads(resp.data)["data"]["result"]["result"] if n["state"] == "ALIVE"]
    by_ip = {n["node_ip"]: n["resources_total"] for n in alive}
    assert set(by_ip) == set(ips.values()), (by_ip, ips)
    for pod in pods.values():
        cpu = float(parse_quantity(pod.spec.containers[0].resources.limits["cpu"]))
        want = 0.0 if pod.metadata.labels["ray.io/node-type"] == "head" else cpu  # num-cpus 0
        assert by_ip[pod.status.pod_ip].get("CPU", 0.0) == want, (pod.metadata.name, by_ip)


@pytest.mark.compat
def test_the_serving_code_comes_from_the_operators_configmap(ground_world: Ground) -> None:
    """serve_app reaches the pods as the operator's ConfigMap (render/code.py), mounted and put
    first on PYTHONPATH: the router replica says where it imported serve_app from, and that is
    the mounted copy, not this repository's (also on the Ray nodes' path, after it)."""
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    code = packaged()
    cm = w.core.read_namespaced_config_map(code.configmap_name, w.namespace)
    assert cm.immutable and cm.data == dict(code.files)
    assert not cm.metadata.owner_references  # shared by the namespace's LLMServices
    pods = [p for p in w.core.list_namespaced_pod(
        w.namespace, label_selector=f"llmservice.dev/name={w.name}"
    ).items if p.metadata.deletion_timestamp is None]  # fmt: skip
    for pod in pods:
        volumes = {v.name: v for v in pod.spec.volumes}
        assert volumes["serve-app"].config_map.name == code.configmap_name, pod.metadata.name
        assert pod.metadata.labels["llmservice.dev/serve-app"] == code.digest

    loaded_from = w.wait("the router's log line", g.serve_app_loaded_from, 120)
    assert loaded_from == {f"{CODE_ROOT}/serve_app"}


def test_scale_up_and_down_reaches_pods_and_serve_under_load(ground_world: Ground) -> None:
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    began = time.monotonic()
    with _load(g) as load, w.timeline() as line:
        load.wait_for_successes(3, 120)

        w.patch({"replicas": 2})
        w.wait(
            "Progressing=True while scaling up",
            lambda: condition(w.svc(), "Progressing").get("status") == "True",
            60,
        )
        svc = w.wait("2 replicas settled", w.settled, CONVERGE_S)
        assert svc["status"]["readyReplicas"] == 2
        rc = w.active_cluster()
        assert rc is not None and _sizes(rc) == (2, 2, 2)
        assert len(w.worker_pods(rc["metadata"]["name"])) == 2
        serve = w.serve()
        assert serve is not None and serve.running_replicas == 2
        up_s = time.monotonic() - began
        # Before the scale-down ends it, the timeline must see this state too (status "2 ready"
        # is judged against the Serve replicas the timeline saw running).
        w.wait(
            "the timeline to see 2 running",
            lambda: _seen(line, "2 running", lambda s: s.running == 2),
            120,
        )

        w.scale(1)  # kubectl scale llmsvc/tiny --replicas=1
        w.wait(
            "1 worker pod",
            lambda: len(w.worker_pods()) == 1 and (w.settled()["status"]["readyReplicas"] == 1),
            CONVERGE_S,
        )
        rc = w.active_cluster()
        assert rc is not None and _sizes(rc) == (1, 1, 1)
        settled_at = time.monotonic()
        load.wait_for_successes(3, 120)
    report = load.report
    _record(
        g, "scale 1->2->1", report, line, began,
        f"2 ready after {up_s:.0f}s; Progressing=True until pods and Serve matched", settled_at,
    )  # fmt: skip
    _truthful(line)
    _healthy_once_settled(report, settled_at)


def test_in_place_version_change_flips_active_version_only_when_serve_runs_it(
    ground_world: Ground,
) -> None:
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    began = time.monotonic()
    with _load(g) as load, w.timeline() as line:
        load.wait_for_successes(3, 120)
        w.patch({"model": {"version": "v2"}})
        pending = w.wait(
            "pendingVersion v2 with Progressing=True",
            lambda: (
                (s := w.svc())["status"].get("pendingVersion") == "v2"
                and condition(s, "Progressing").get("status") == "True"
                and s
            ),
            60,
        )
        assert pending["status"]["activeVersion"] == "v1"
        svc = w.wait("v2 settled", w.settled, CONVERGE_S)
        assert svc["status"]["activeVersion"] == "v2"
        assert svc["status"].get("pendingVersion") is None
        serve = w.serve()
        assert serve is not None and serve.version == "v2" and serve.settled
        settled_at = time.monotonic()
        load.wait_for_successes(3, 120)
    report = load.report
    flipped = line.first(lambda s: s.active_version == "v2")
    _record(
        g, "InPlace v1->v2", report, line, began,
        f"pending v2 at once; active v2 after {flipped.t if flipped else -1:.0f}s", settled_at,
    )  # fmt: skip
    _truthful(line)
    # Ray Serve replaces a replica in place by stopping the old one first when no spare
    # resources exist; failures while it does are in the results table, not hidden here.
    _healthy_once_settled(report, settled_at)


def _canary_load(g: Ground) -> LoadGenerator:
    return LoadGenerator(
        g.base_url, g.model, rate_per_s=CANARY_RATE, max_tokens=8, timeout_s=120,
        max_duration_s=1500, extra_body={"min_tokens": 8},
    )  # fmt: skip


def _rollout(w: Any) -> dict[str, Any]:
    return dict(w.svc()["status"].get("rollout") or {})


def _at_weight(w: Any, weight: float) -> Any:
    """Status says the router runs `weight` % on the canary (observed from Serve)."""

    def check() -> dict[str, Any]:
        rollout = _rollout(w)
        if rollout.get("weight") != weight or rollout.get("phase") != "Progressing":
            raise NotYet(f"rollout: {rollout.get('phase')} {rollout.get('weight')} "
                         f"({rollout.get('message')})")  # fmt: skip
        return rollout

    return check


def _rolled_back(w: Any) -> Any:
    """The LLMService once status says the gate rolled its canary back."""

    def check() -> dict[str, Any]:
        svc: dict[str, Any] = w.svc()
        degraded = condition(svc, "Degraded")
        if degraded.get("reason") != "CanaryRolledBack" or degraded.get("status") != "True":
            raise NotYet(f"Degraded: {degraded}; rollout: {_rollout(w).get('message')}")
        return svc

    return check


def test_a_good_canary_steps_to_100_is_promoted_and_no_request_fails(
    ground_world: Ground,
) -> None:
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    w.patch({"rollout": {"strategy": "InPlace"}})
    stable = w.wait("settled", w.settled, CONVERGE_S)["status"]["activeVersion"]
    new = f"{stable}-c1"
    began = time.monotonic()
    shares: dict[int, str] = {}
    with _canary_load(g) as load, w.timeline() as line:
        load.wait_for_successes(3, 120)
        w.patch({"rollout": GOOD_ROLLOUT, "model": {"version": new}})
        rollout = w.wait("the canary at 10 %", _at_weight(w, 10.0), CONVERGE_S)
        assert rollout["stableVersion"] == stable and rollout["canaryVersion"] == new
        assert w.svc()["status"]["activeVersion"] == stable
        # Each step's share is counted over the time the router ran its weight: from when the
        # operator saw the router run it (stepStarted) to the CanaryStep event of the next
        # weight, posted as it was applied (times are whole seconds: one trimmed at the start).
        began_step = on_monotonic(rollout["stepStarted"]) + 1
        for index, (weight, nxt) in enumerate(((10, 50), (50, 100)), start=2):
            rollout = w.wait(f"the canary at {nxt} %", _at_weight(w, float(nxt)), 300)
            ended_step = on_monotonic(w.step_event(f"step {index}/").first_timestamp)
            seen = load.snapshot().versions_between(began_step, ended_step)
            n = sum(seen.values())
            share = 100.0 * seen.get(new, 0) / max(n, 1)
            shares[weight] = f"{share:.1f} % of {n}"
            assert set(seen) <= {stable, new}, seen
            assert n >= 40 and abs(share - weight) <= 5.0, (weight, seen)
            began_step = on_monotonic(rollout["stepStarted"]) + 1
        svc = w.wait(f"{new} promoted and settled", w.settled, 300)
        seen = load.snapshot().versions_between(began_step + 5, time.monotonic())
        shares[100] = (
            f"{100.0 * seen.get(new, 0) / max(sum(seen.values()), 1):.1f} % of {sum(seen.values())}"
        )
        assert svc["status"]["rollout"]["phase"] == "Promoted"
        assert svc["status"]["activeVersion"] == new

        def old_app_gone() -> bool:
            apps = set((w.serve_details() or {}).get("applications") or {})
            if apps != {"llm", w.stable_app()}:
                raise NotYet(f"Serve applications: {sorted(apps)}")
            return True

        w.wait("the old version's app gone", old_app_gone, 120)
        settled_at = time.monotonic()
        load.wait_for_successes(5, 120)
        assert set(load.snapshot().versions_between(settled_at, time.monotonic())) == {new}
    report = load.report
    _record(
        g, f"Canary {stable}->{new} (10, 50, 100)", report, line, began,
        f"canary share at 10 %: {shares[10]}; at 50 %: {shares[50]}; at 100 %: {shares[100]}; "
        "promoted", settled_at,
    )  # fmt: skip
    _truthful(line)
    assert report.failed == 0, f"{report.summary()}\nexamples: {report.examples}"


def test_a_canary_that_fails_requests_is_rolled_back_by_the_gate(ground_world: Ground) -> None:
    """A real breaking change: a context too short for the load's prompts, so the canary
    answers 400. The gate rolls it back within one analysis window; stable traffic never fails."""
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    svc = w.svc()
    stable = svc["status"]["activeVersion"]
    engine = dict(svc["spec"].get("engine") or {})
    bad = f"{stable}-bad"
    began = time.monotonic()
    with _canary_load(g) as load, w.timeline() as line:
        load.wait_for_successes(3, 120)
        w.patch({"rollout": CANARY_ROLLOUT, "model": {"version": bad},
                 "engine": {**engine, "maxModelLen": 16}})  # fmt: skip
        w.wait("the canary at 50 %", _at_weight(w, 50.0), CONVERGE_S)
        t50 = time.monotonic()

        svc = w.wait("rolled back by the gate", _rolled_back(w), 300)
        detected = time.monotonic() - t50
        analysis = svc["status"]["rollout"]["lastAnalysis"]
        assert analysis["verdict"] == "Fail" and analysis["canary"]["errors"] > 0, analysis
        assert condition(svc, "Ready").get("status") == "True"
        assert svc["status"]["activeVersion"] == stable
        w.wait("the canary's app removed", lambda: not _rollout(w).get("canaryApp"), 120)
        events = w.core.list_namespaced_event(
            w.namespace, field_selector=f"involvedObject.name={w.name},reason=CanaryRolledBack"
        ).items
        assert events and "answers" in events[-1].message, [e.message for e in events]
        t_back = time.monotonic()
        load.wait_for_successes(5, 120)
        after = load.snapshot().versions_between(t_back, time.monotonic())
        assert set(after) == {stable}, after
        # Back to a good spec: Degraded clears (a revert to the stable version's config).
        w.patch({"model": {"version": stable}, "engine": engine})
        w.wait("settled on the stable version", w.settled, 300)
        settled_at = time.monotonic()
    report = load.report
    failed = report.failures_between(began, settled_at)
    # Only the canary's 400s fail, and no more than its share of the traffic until detection.
    assert set(failed) <= {"http_400"}, f"{report.summary()}\nexamples: {report.examples}"
    bound = 0.5 * CANARY_RATE * (detected + 30)
    assert failed.get("http_400", 0) <= bound, (failed, bound)
    _record(
        g, f"Canary {stable}->{bad} (maxModelLen 16): rolled back", report, line, began,
        f"rolled back {detected:.0f}s after 50 %: {analysis['reason']}; "
        f"{failed.get('http_400', 0)} canary 400s (bound {bound:.0f})", settled_at,
    )  # fmt: skip
    _healthy_once_settled(report, settled_at)


def test_every_dashboard_query_names_metrics_a_real_scrape_has(ground_world: Ground) -> None:
    """The chart's Grafana dashboard against what this ground exports: the Ray pods' metrics port
    (Ray Serve, vLLM, the router; after the canaries above, errors included) and the operator's
    /metrics. A metric family the exporter declares without samples yet counts as present."""
    from openai import NotFoundError, OpenAI

    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    # A streamed answer (inter-token times) and a refused request (the error counters): every
    # panel's metric then has samples, whichever scenarios ran before.
    api = OpenAI(base_url=g.base_url, api_key="unused", max_retries=0, timeout=60)
    with api:
        # Long enough to stream in several chunks (Serve batches a stream's tokens into chunks).
        stream = api.chat.completions.create(
            model=g.model, messages=[{"role": "user", "content": "Count."}], max_tokens=256,
            stream=True, extra_body={"min_tokens": 256},
        )  # fmt: skip
        # Read to the end: a client that leaves early cuts the stream, and its gaps go unmeasured.
        texts = sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
        assert texts >= 2, f"{texts} chunk(s) of text: no inter-token gap to measure"
        with pytest.raises(NotFoundError):
            api.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
    rc = w.active_cluster()
    assert rc is not None
    wanted = dashboard.metric_names(dashboard.load())
    ray_wanted = {name for name in wanted if name.startswith("ray_")}

    def scraped() -> set[str]:
        exported: set[str] = set()
        for text in w.kube.ray_pod_metrics(w.namespace, rc["metadata"]["name"]):
            exported |= dashboard.names_in_scrape(text)
        missing = sorted(ray_wanted - exported)
        if missing:
            raise NotYet(f"not in the Ray pods' metrics yet: {missing}")
        return exported

    # Ray's metrics agent exports what workers recorded every few seconds, vLLM's engine its
    # stats on its own period: each name must show up within a bounded time.
    exported = w.wait("every dashboard metric in the Ray pods' metrics", scraped, 120)
    status, operator_text = http_get(f"http://127.0.0.1:{g.operator.metrics_port}/metrics")
    assert status == 200
    exported |= dashboard.names_in_scrape(operator_text)
    assert wanted <= exported, sorted(wanted - exported)


# The slow canary's load: prompts of ~400 tokens that share no prefix (so the prefix cache
# cannot hide a prefill), still inside the tiny model's 512-token context with 8 out.
LONG_PROMPT = "Count from one to twenty. " * 24


def test_a_slow_canary_is_rolled_back_on_the_latency_gate(ground_world: Ground) -> None:
    """A real engine setting that raises latency: a token budget of 2 per engine step
    (`max_num_batched_tokens`), so vLLM prefills a prompt in chunks of two tokens. Answers stay
    correct, only slow: the TTFT gate rolls it back, and no request fails."""
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    svc = w.svc()
    stable = svc["status"]["activeVersion"]
    engine = dict(svc["spec"].get("engine") or {})
    slow = f"{stable}-slow"
    slow_engine = {**engine, "maxNumSeqs": 2, "extraArgs": {"max_num_batched_tokens": 2}}
    # The ratio gate alone (the shared gate's 10x is wide for two engines on two cores) plus an
    # absolute cap a prefill of ~400 tokens at two per step cannot meet.
    gate = {**CANARY_ROLLOUT["canary"]["analysis"], "maxTtftP95Seconds": 0.25}
    rollout = {**CANARY_ROLLOUT, "canary": {**CANARY_ROLLOUT["canary"], "analysis": gate}}
    began = time.monotonic()
    load = LoadGenerator(
        g.base_url, g.model, rate_per_s=CANARY_RATE, max_tokens=8, timeout_s=120,
        prompt=LONG_PROMPT, unique_prompts=True, max_duration_s=1500,
        extra_body={"min_tokens": 8},
    )  # fmt: skip
    with load, w.timeline() as line:
        load.wait_for_successes(3, 120)
        w.patch({"rollout": rollout, "model": {"version": slow}, "engine": slow_engine})
        w.wait("the canary at 50 %", _at_weight(w, 50.0), CONVERGE_S)
        t50 = time.monotonic()

        svc = w.wait("rolled back on latency", _rolled_back(w), 300)
        detected = time.monotonic() - t50
        analysis = svc["status"]["rollout"]["lastAnalysis"]
        assert analysis["verdict"] == "Fail" and "TTFT" in analysis["reason"], analysis
        # The breach is the setting's doing, not noise: the canary's TTFT p95 several times the
        # stable's, measured over the same window (that no request failed: asserted below).
        canary, stable_stats = analysis["canary"], analysis["stable"]
        assert canary["ttftP95Seconds"] >= 3 * stable_stats["ttftP95Seconds"], analysis
        assert svc["status"]["activeVersion"] == stable
        w.wait("the canary's app removed", lambda: not _rollout(w).get("canaryApp"), 120)
        # A merge patch: what the slow engine added must be removed by name (null), not just
        # left out, or the next scenario would inherit a slow engine.
        restore = {
            **engine,
            "maxNumSeqs": engine.get("maxNumSeqs"),
            "extraArgs": {**engine.get("extraArgs", {}), "max_num_batched_tokens": None},
        }
        w.patch({"model": {"version": stable}, "engine": restore})
        w.wait("settled on the stable version", w.settled, 300)
        assert w.svc()["spec"]["engine"] == engine
        settled_at = time.monotonic()
        load.wait_for_successes(5, 120)
    report = load.report
    _record(
        g, f"Canary {stable}->{slow} (2 tokens per engine step): rolled back", report, line,
        began, f"rolled back {detected:.0f}s after 50 %: {analysis['reason']}", settled_at,
    )  # fmt: skip
    _truthful(line)
    assert report.failed == 0, f"{report.summary()}\nexamples: {report.examples}"


def test_reverting_the_spec_mid_canary_goes_back_to_stable_without_a_failed_request(
    ground_world: Ground,
) -> None:
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    stable = w.svc()["status"]["activeVersion"]
    began = time.monotonic()
    held = {**CANARY_ROLLOUT, "canary": {**CANARY_ROLLOUT["canary"], "pauseSeconds": 3600}}
    with _canary_load(g) as load, w.timeline() as line:
        load.wait_for_successes(3, 120)
        w.patch({"rollout": held, "model": {"version": f"{stable}-c2"}})
        w.wait("the canary at 50 %", _at_weight(w, 50.0), CONVERGE_S)
        load.wait_for_successes(10, 120)
        w.patch({"model": {"version": stable}})
        svc = w.wait("back on the stable version", w.settled, 300)
        assert svc["status"]["rollout"]["phase"] == "Aborted"
        assert not svc["status"]["rollout"].get("canaryApp")
        settled_at = time.monotonic()
        load.wait_for_successes(5, 120)
        assert set(load.snapshot().versions_between(settled_at, time.monotonic())) == {stable}
    report = load.report
    _record(
        g, f"Canary {stable}-c2 reverted at 50 %", report, line, began,
        "traffic back to stable, canary app removed", settled_at,
    )  # fmt: skip
    _truthful(line)
    assert report.failed == 0, f"{report.summary()}\nexamples: {report.examples}"


def test_blue_green_switches_traffic_only_when_the_new_cluster_answers(
    ground_world: Ground,
) -> None:
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    old = w.active_cluster()
    assert old is not None
    serving = w.svc()["status"]["activeVersion"]
    began = time.monotonic()
    with _load(g) as load, w.timeline() as line:
        load.wait_for_successes(3, 120)
        w.patch({"rollout": {"strategy": "BlueGreen"}, "model": {"version": "v3"}})
        w.wait("a second RayCluster", lambda: len(w.rayclusters()) == 2, 120)
        svc = w.wait(
            "Upgrading while the new cluster comes up",
            lambda: condition(s := w.svc(), "Progressing").get("reason") == "Upgrading" and s,
            120,
        )
        assert svc["status"]["activeVersion"] == serving  # the old cluster still serves it
        svc = w.wait("v3 settled on the new cluster", w.settled, CONVERGE_S)
        new = w.active_cluster()
        assert new is not None and new["metadata"]["name"] != old["metadata"]["name"]
        labels = new["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
        assert labels[c.LABEL_MODEL_VERSION] == "v3"
        assert svc["status"]["activeVersion"] == "v3"
        load.wait_for_successes(3, 120)
        # KubeRay deletes the old cluster after its deletion delay (60 s by default).
        w.wait("the old RayCluster gone", lambda: len(w.rayclusters()) == 1, 300)
        settled_at = time.monotonic()
        load.wait_for_successes(3, 120)
    report = load.report
    switched = line.first(lambda s: s.active_version == "v3")
    _record(
        g, f"BlueGreen {serving}->v3", report, line, began,
        f"Upgrading, active v3 after {switched.t if switched else -1:.0f}s, old cluster gone",
        settled_at,
    )  # fmt: skip
    _truthful(line)
    _healthy_once_settled(report, settled_at)


def _fill_the_cpu_pool(core: client.CoreV1Api, namespace: str) -> list[str]:
    """Ballast pods (bound to each CPU node, run by KWOK, never by Ray) that take what the
    pool's nodes have left: a second Ray cluster then has no room anywhere."""
    nodes = core.api_client.sanitize_for_serialization(core.list_node().items)
    pods = core.api_client.sanitize_for_serialization(core.list_pod_for_all_namespaces().items)
    rooms = capacity.node_rooms(nodes, pods)
    names = []
    for room in rooms:
        if room.labels.get(POOL_LABEL) != "cpu":
            continue
        cpu, memory = room.free.get("cpu", 0), room.free.get("memory", 0)
        take = {"cpu": f"{int(cpu * 1000)}m", "memory": str(int(memory))}
        name = f"ballast-{room.name}"
        core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "nodeName": room.name,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "ballast", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": take, "limits": take},
                    "securityContext": {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
            },
        })  # fmt: skip
        names.append(name)
    return names


def test_a_change_that_needs_a_second_cluster_waits_for_room_and_keeps_serving(
    ground_world: Ground,
) -> None:
    """BlueGreen onto a full pool: held (nothing applied, the old version serving, Argo CD
    Progressing) until a node joins the pool, then carried out."""
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    serving = w.svc()["status"]["activeVersion"]
    new_version = "v4" if serving != "v4" else "v5"
    old = w.active_cluster()
    assert old is not None
    ballast = _fill_the_cpu_pool(w.core, w.namespace)
    assert ballast, "no CPU node to fill"
    extra = f"cpu-extra-{w.namespace}"
    began = time.monotonic()
    try:
        with _load(g) as load, w.timeline() as line:
            load.wait_for_successes(3, 120)
            w.patch({"rollout": {"strategy": "BlueGreen"}, "model": {"version": new_version}})

            def held() -> dict[str, Any]:
                svc = w.svc()
                progressing = condition(svc, "Progressing")
                if progressing.get("reason") != "InsufficientCapacity":
                    raise NotYet(f"Progressing: {progressing}")
                return svc

            svc = w.wait("the change held for capacity", held, 180)
            assert condition(svc, "Ready").get("status") == "True", svc["status"]
            assert condition(svc, "Progressing").get("status") == "False"
            assert "do not fit" in condition(svc, "Progressing")["message"]
            assert svc["status"]["activeVersion"] == serving
            assert svc["status"]["pendingVersion"] == new_version
            assert [rc["metadata"]["name"] for rc in w.rayclusters()] == [old["metadata"]["name"]]
            load.wait_for_successes(3, 120)  # still served while held
            held_for = time.monotonic() - began

            # A node joins the pool: nothing else changes, and the upgrade goes ahead.
            w.core.create_node(node_manifest(NodePool("cpu", 1, cpu="32", memory="128Gi"), extra))
            svc = w.wait(f"{new_version} settled on a new cluster", w.settled, CONVERGE_S)
            assert svc["status"]["activeVersion"] == new_version
            new = w.active_cluster()
            assert new is not None and new["metadata"]["name"] != old["metadata"]["name"]
            w.wait("the old RayCluster gone", lambda: len(w.rayclusters()) == 1, 300)
            settled_at = time.monotonic()
            load.wait_for_successes(3, 120)
    finally:
        for name in ballast:
            w.core.delete_namespaced_pod(name, w.namespace, grace_period_seconds=0)
    report = load.report
    _record(
        g, "BlueGreen onto a full pool, then a node added", report, line, began,
        f"held (InsufficientCapacity) {held_for:.0f}s after the change, {serving} serving; "
        f"{new_version} active once a node joined",
        settled_at,
    )  # fmt: skip
    _truthful(line)
    # Held is not a failure window: nothing may fail at any time in this scenario's first part.
    assert not report.failures_between(0, began + held_for), report.summary()
    _healthy_once_settled(report, settled_at)


def test_autoscaling_switch_and_bounds_reach_the_raycluster(ground_world: Ground) -> None:
    g, w = ground_world, ground_world.world
    g.ensure_created(CONVERGE_S)
    began = time.monotonic()
    with _load(g) as load, w.timeline() as line:
        load.wait_for_successes(3, 120)
        # Fixed -> autoscaling: the autoscaler is part of the cluster spec: a new cluster.
        w.patch({"replicas": None, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}})
        w.wait(
            "an autoscaling RayCluster serving",
            lambda: (
                (rc := w.active_cluster()) is not None
                and rc["spec"].get("enableInTreeAutoscaling") is True
                and w.settled()
            ),
            CONVERGE_S,
        )
        rc = w.active_cluster()
        assert rc is not None
        auto_name = rc["metadata"]["name"]
        assert _sizes(rc)[1:] == (1, 2)

        w.patch({"autoscaling": {"maxReplicas": 3}})

        def bounded_cluster() -> dict[str, Any] | None:
            rc = w.active_cluster()
            return rc if rc is not None and _sizes(rc)[1:] == (1, 3) else None

        bounded = w.wait("maxReplicas 3 on the same RayCluster", bounded_cluster, 120)
        assert bounded["metadata"]["name"] == auto_name

        # ... and back to a fixed count.
        w.patch({"autoscaling": None, "replicas": 1})
        w.wait(
            "a fixed-size RayCluster serving",
            lambda: (
                (rc := w.active_cluster()) is not None
                and not rc["spec"].get("enableInTreeAutoscaling")
                and _sizes(rc) == (1, 1, 1)
                and w.settled()
            ),
            CONVERGE_S,
        )
        settled_at = time.monotonic()
        load.wait_for_successes(3, 120)
    report = load.report
    _record(
        g, "fixed->autoscaling->fixed, max 2->3", report, line, began,
        "bounds on the same cluster; each switch a new cluster", settled_at,
    )  # fmt: skip
    _truthful(line)
    _healthy_once_settled(report, settled_at)
