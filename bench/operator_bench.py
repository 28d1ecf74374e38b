"""Operator scale benchmark: N LLMServices created at once on the local control plane. Not a test.

    .venv/bin/python -m bench.operator_bench [-n 1000] [--keep-kuberay] [--resync-interval S]

Reports the time until every RayService exists, the p50/p99 latency from an LLMService's
create call returning to its RayService appearing (watched) during the burst, the same latency
once steady (50 more, one at a time, polled every 10 ms, with N live), the operator's peak RSS
(VmHWM), the Kubernetes API requests per reconcile (the operator's own counter,
llmservice_api_requests_total: kopf's watches and retry wake-ups not included), and what
one whole resync pass over the unchanged N costs: its requests per object and its writes (the
goal is none). During the burst it also reports the operator's and the API server's CPU seconds
and the API server's own request time by verb and resource (its /metrics): where the time went.
KubeRay is stopped by default so the measurement is the operator's, not KubeRay
building thousands of Ray clusters on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from llmservice_operator import constants as c
from tests.cluster.harness import LocalCluster
from tests.cluster.objects import llmservice
from tests.cluster.operator_process import (
    APPLIES,
    RECONCILES,
    RESYNC_PASSES,
    Metrics,
    OperatorProcess,
    install_llmservice_crd,
)

NAMESPACE = "bench"
STEADY = 50
CHANGED = 200  # spec edits whose writes are counted
SETTLE_S = 45


def _exists(custom: client.CustomObjectsApi, name: str) -> bool:
    try:
        custom.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices", name)
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


API_REQUESTS = "llmservice_api_requests_total"
WRITE_VERBS = ("apply", "patch", "create", "delete")


def _requests(m: Metrics, verbs: tuple[str, ...] | None = None) -> float:
    """The operator's API requests so far (all verbs, or only `verbs`)."""
    if not m.has(API_REQUESTS):
        return 0.0
    if verbs is None:
        return m.value(API_REQUESTS)
    return sum(m.value(API_REQUESTS, verb=v) for v in verbs)


def _writes(m: Metrics) -> dict[str, float]:
    """The operator's write requests so far by "verb resource"."""
    out: dict[str, float] = {}
    for name, labels, value in m.samples:
        tags = dict(labels)
        if name == API_REQUESTS and tags.get("verb") in WRITE_VERBS:
            key = f"{tags['verb']} {tags.get('resource')}"
            out[key] = out.get(key, 0.0) + value
    return out


def _apiserver(api: client.ApiClient) -> dict[str, float]:
    """The API server's own request time by "VERB resource[/sub]" (seconds, cumulative), and
    its CPU seconds under "cpu": where a burst's time goes on the server side."""
    request = api.param_serialize(
        "GET", "/metrics", header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"]
    )
    text = bytes(api.call_api(*request).read() or b"").decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "process_cpu_seconds":
            out["cpu"] = family.samples[0].value
        if family.name != "apiserver_request_duration_seconds":
            continue
        for sample in family.samples:
            if not sample.name.endswith("_sum"):
                continue
            labels = sample.labels
            if labels.get("verb") in ("WATCH", "CONNECT"):
                continue  # long-running: their duration is how long they stayed open
            key = f"{labels.get('verb')} {labels.get('resource')}"
            if labels.get("subresource"):
                key += f"/{labels['subresource']}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _edit_and_count(
    proc: OperatorProcess,
    custom: client.CustomObjectsApi,
    k: int,
    passes: Any,
    timeout: float,
) -> dict[str, Any]:
    """Edit k specs (one replica more) and count the RayService writes they cost, up to the end
    of the next whole resync pass (a duplicate apply by a later trigger is counted too).

    Called right after a pass ended: the next one starts a whole interval later, after the
    edits were applied, so it reads every edited object."""
    replicas = int(llmservice(NAMESPACE)["spec"]["replicas"]) + 1  # what the burst created, +1
    applies = lambda m: m.value(APPLIES, action="updated")  # noqa: E731
    before = proc.metrics()
    names = [f"svc-{i:05d}" for i in range(k)]
    for name in names:
        custom.patch_namespaced_custom_object(
            c.GROUP, c.VERSION, NAMESPACE, c.PLURAL, name, {"spec": {"replicas": replicas}}
        )
    began = proc.metrics()
    proc.wait_metrics(
        "the edits applied",
        lambda m: applies(m) >= applies(before) + k,
        timeout,
    )
    after = proc.wait_metrics(
        "a whole resync pass after the edits", lambda m: passes(m) >= passes(began) + 1, timeout
    )
    wrong = []
    for name in names:
        rs = custom.get_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayservices", name)
        groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        if sum(g.get("replicas") or 0 for g in groups) != replicas:
            wrong.append(name)
    rs_writes = sum(
        after.value(API_REQUESTS, verb=v, resource="rayservices")
        - before.value(API_REQUESTS, verb=v, resource="rayservices")
        for v in WRITE_VERBS
    )
    return {
        "changed_objects": k,
        "changed_not_applied": len(wrong),
        "rayservice_writes_per_changed_object": round(rs_writes / k, 3),
        "applies_per_changed_object": round((applies(after) - applies(before)) / k, 3),
    }


def run(n: int, keep_kuberay: bool, resync_interval: float) -> dict[str, Any]:
    with LocalCluster() as cluster, contextlib.ExitStack() as cleanup:
        if not keep_kuberay:
            cluster.stop_component("kuberay-operator")
        install_llmservice_crd(cluster.api_client)
        core = client.CoreV1Api(cluster.api_client)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        proc = OperatorProcess(
            cluster, "operator-bench", "--timer-interval", str(resync_interval), metrics=True
        )
        proc.start()
        cleanup.callback(proc.stop)  # a failed run must not leave the operator behind
        proc.wait_serving()
        time.sleep(5)  # kopf login, CRD discovery, watches: no metric says when they are up
        custom = client.CustomObjectsApi(cluster.api_client)

        burst_timeout = max(600, int(n * 0.2))  # 10,000: 2,000 s at the most
        created: dict[str, float] = {}
        appeared: dict[str, float] = {}
        done = threading.Event()

        def watch_rayservices() -> None:
            w = watch.Watch()
            for event in w.stream(
                custom.list_namespaced_custom_object, "ray.io", "v1", NAMESPACE, "rayservices",
                timeout_seconds=burst_timeout,
            ):  # fmt: skip
                name = event["object"]["metadata"]["name"]
                appeared.setdefault(name, time.monotonic())
                if len(appeared) >= n:
                    w.stop()
            done.set()

        watcher = threading.Thread(target=watch_rayservices, daemon=True)
        watcher.start()
        time.sleep(1)

        def create(i: int) -> None:
            name = f"svc-{i:05d}"
            custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.PLURAL, llmservice(NAMESPACE, name=name)
            )
            created[name] = time.monotonic()

        assert proc.proc is not None
        server_before, cpu_before = _apiserver(cluster.api_client), _cpu_s(proc.proc.pid)
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(create, range(n)))
        create_s = time.monotonic() - began
        done.wait(timeout=burst_timeout)
        server_after, cpu_after = _apiserver(cluster.api_client), _cpu_s(proc.proc.pid)
        server = {k: v - server_before.get(k, 0.0) for k, v in server_after.items()}
        all_s = max(appeared.values()) - began if appeared else float("nan")
        latencies = [appeared[k] - created[k] for k in created if k in appeared]

        # Steady state: once the burst's follow-up work (RayService events, status writes)
        # has drained, one more LLMService at a time.
        time.sleep(SETTLE_S)
        steady: list[float] = []
        for i in range(STEADY):
            name = f"steady-{i:03d}"
            custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, NAMESPACE, c.PLURAL, llmservice(NAMESPACE, name=name)
            )
            t0 = time.monotonic()
            while not _exists(custom, name):
                time.sleep(0.01)
            steady.append(time.monotonic() - t0)
        # The burst's cost per reconcile, then one whole resync pass over the unchanged N: the
        # counters are read when one pass has ended (the steady phase's trailing writes are
        # done by then) and again when the next has, so exactly one pass lies in between.
        after_steady = proc.metrics()
        reconciles = after_steady.value(RECONCILES)

        def passes(m: Metrics) -> float:
            return m.value(RESYNC_PASSES, outcome="ok") if m.has(RESYNC_PASSES) else 0.0

        timeout = 3 * resync_interval + 1200
        settled = proc.wait_metrics(
            "a resync pass ended", lambda m: passes(m) >= passes(after_steady) + 1, timeout
        )
        resynced = proc.wait_metrics(
            "one more whole resync pass", lambda m: passes(m) >= passes(settled) + 1, timeout
        )
        total = n + STEADY
        changed = _edit_and_count(proc, custom, min(CHANGED, n), passes, timeout)
        pass_requests = _requests(resynced) - _requests(settled)
        w0 = _writes(settled)
        pass_writes = {k: v - w0.get(k, 0.0) for k, v in _writes(resynced).items()}
        result = {
            "llmservices": n,
            "rayservices_seen": len(appeared),
            "create_calls_s": round(create_s, 2),
            "all_rayservices_s": round(all_s, 2),
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_p99_s": round(_pct(latencies, 0.99), 3),
            "steady_latency_p50_s": round(statistics.median(steady), 3),
            "steady_latency_p99_s": round(_pct(steady, 0.99), 3),
            "operator_peak_rss_mib": round(_peak_rss_mib(proc.proc.pid), 1),
            "reconciles": int(reconciles),
            "api_requests_per_reconcile": round(_requests(after_steady) / max(reconciles, 1), 2),
            "resync_requests_per_object": round(pass_requests / total, 2),
            "resync_writes_unchanged": sum(pass_writes.values()),
            # Which, if any (the serve_app ConfigMap's recheck is a read since it looks first).
            "resync_writes_unchanged_by_request": {k: v for k, v in pass_writes.items() if v},
            **changed,
            "burst_operator_cpu_s": round(cpu_after - cpu_before, 1),
            "burst_apiserver_cpu_s": round(server.pop("cpu", float("nan")), 1),
            # The API server's request time during the burst, largest first.
            "burst_apiserver_request_s": {
                k: round(v, 1) for k, v in sorted(server.items(), key=lambda kv: -kv[1])[:8]
            },
            "resync_interval_s": resync_interval,
            "kuberay_running": keep_kuberay,
        }
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--keep-kuberay", action="store_true")
    parser.add_argument(
        "--resync-interval", type=float, default=120.0, help="operator --timer-interval (s)"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.keep_kuberay, args.resync_interval), indent=2))


if __name__ == "__main__":
    main()
