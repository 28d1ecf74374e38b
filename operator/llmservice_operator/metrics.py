"""Prometheus metrics of the operator (served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter(
    "llmservice_reconciles_total", "Reconciles of LLMServices by result.", ["result"]
)
APPLIES = Counter(
    "llmservice_rayservice_applies_total", "Server-side applies of RayServices.", ["action"]
)
CLUSTER_SCALES = Counter(
    "llmservice_raycluster_scales_total",
    "Patches of RayCluster worker-group sizes (KubeRay does not pass them on).",
    ["direction"],
)
RESYNC_PASSES = Counter(
    "llmservice_resync_passes_total",
    "Completed passes of the periodic resync (ok, standby: a higher peer acts, list_failed).",
    ["outcome"],
)
API_REQUESTS = Counter(
    "llmservice_api_requests_total",
    "Kubernetes API requests made by reconciles and the resync (kopf's own watches and "
    "bookkeeping patches not included), by verb and resource.",
    ["verb", "resource"],
)
ERRORS = Counter("llmservice_reconcile_errors_total", "Reconciles that raised.", ["kind"])
LATENCY = Histogram(
    "llmservice_reconcile_seconds",
    "Time of one reconcile, from reading the spec to writing status.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

_started: set[int] = set()


def serve(port: int) -> None:
    """Start the /metrics HTTP server once per port (startup handlers may rerun in tests)."""
    if port not in _started:
        start_http_server(port)
        _started.add(port)
