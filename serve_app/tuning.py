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

# Ray Serve's fast path, on GPUs by default wherever one version serves (not with Canary, which
# splits traffic in a router application): HAProxy takes port 8000 (where KubeRay's serve Service
# and health checks go) and the model's replica is the HTTP ingress, serving vLLM's own OpenAI
# app, so tokens go replica -> HAProxy -> client with no Serve proxy actor and no router. On one
# H100 (docs/performance.md, 3 interleaved rounds) it kept 0.99-1.06x the vLLM server's output
# tokens/s at 1 to 256 streams, against 0.84x for the proxy + router path at 128. Either name in
# spec.env turns the default off for that LLMService.
HA_PROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"  # Ray Serve's HAProxy mode
# Ray Serve LLM's direct streaming (Ray reads exactly "1"); it needs HAProxy mode.
DIRECT_STREAMING_ENV = "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"
GPU_FAST_PATH_ENV: dict[str, str] = {HA_PROXY_ENV: "1", DIRECT_STREAMING_ENV: "1"}

# Ray Serve LLM re-batches streamed tokens in windows of this many ms (its default: 50). Every
# first token waits for its window: on one H100 the default cost +47 ms of time-to-first-token
# at concurrency 1 and 10 ms still +16 ms; 0 (each token sent as it comes) was +3 ms, at the
# same throughput within noise (docs/performance.md).
GPU_STREAM_BATCHING_INTERVAL_MS = 0.0
