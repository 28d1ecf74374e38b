"""Reading Ray Serve's HAProxy (its Prometheus exporter, `frontend prometheus` on port 9101):
how many answers its Serve-app backends gave, the proof that requests went through it."""

from __future__ import annotations

from serve_app.tuning import GPU_FAST_PATH_ENV

# The fast path's switches: the GPU default, and what a CPU LLMService puts in spec.env for it
# (README, "Serving fast path").
FAST_PATH_ENV = GPU_FAST_PATH_ENV
METRICS_PORT = 9101
# Ray Serve names each application's backend `http-<app>` (`default_backend` and `stats` are not
# applications).
APP_BACKEND = 'proxy="http-'


def app_responses_2xx(metrics_text: str) -> int:
    """Sum of `haproxy_backend_http_responses_total{code="2xx"}` over the app backends."""
    total = 0
    for line in metrics_text.splitlines():
        if (
            line.startswith("haproxy_backend_http_responses_total{")
            and APP_BACKEND in line
            and 'code="2xx"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total
