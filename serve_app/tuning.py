"""Ray Serve settings that make ``serve_app`` fast on GPUs (measured in docs/performance.md).

They are process-wide switches read by Ray Serve and Ray Serve LLM at import time, so they
travel as environment variables of every Ray container (the renderer puts them in the pod
templates of GPU LLMServices; ``llmservice up`` exports them before it starts Ray). A
``spec.env`` entry of the same name wins, so each one can be turned off per LLMService.
No Ray import here: the operator renders these without Ray installed.
"""

GPU_SERVE_ENV: dict[str, str] = {
    # The vLLM replica itself is the HTTP ingress and serves vLLM's own OpenAI app: no hop
    # through Ray Serve LLM's OpenAI router deployment and no re-batching of streamed chunks
    # (Ray Serve LLM batches them in 50 ms windows, which is most of its time-to-first-token).
    "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
    # Serve's throughput mode: user code on the replica's own event loop, gRPC between
    # handles, buffered access logs, garbage collector frozen after start-up.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # ...minus its direct ingress, which stops the HTTP proxies and moves replicas to ports
    # 30000+: KubeRay's serve Service routes to the proxy on port 8000.
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
}
