"""Ray Serve settings that make ``serve_app`` fast on GPUs (measured in docs/performance.md).

They are process-wide switches read by Ray Serve and Ray Serve LLM at import time, so they
travel as environment variables of every Ray container (the renderer puts them in the pod
templates of GPU LLMServices; ``llmservice up`` exports them before it starts Ray). A
``spec.env`` entry of the same name wins, so each one can be turned off per LLMService.
No Ray import here: the operator renders these without Ray installed.
"""

GPU_SERVE_ENV: dict[str, str] = {
    # Serve's throughput mode: user code on the replica's own event loop, gRPC between
    # handles, buffered access logs, garbage collector frozen after start-up.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # ...minus its direct ingress, which stops the HTTP proxies and moves replicas to ports
    # 30000+: KubeRay's serve Service routes to the proxy on port 8000.
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}

# Ray Serve LLM re-batches streamed tokens in windows of this many ms (its default: 50). Every
# first token waits for its window: on one H100 the default cost +47 ms of time-to-first-token
# at concurrency 1 and 10 ms still +16 ms; 0 (each token sent as it comes) was +3 ms, at the
# same throughput within noise (docs/performance.md).
GPU_STREAM_BATCHING_INTERVAL_MS = 0.0
