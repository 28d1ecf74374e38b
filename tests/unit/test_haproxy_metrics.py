"""tests/support/haproxy.py against an exposition in the shape Ray Serve's HAProxy writes."""

from __future__ import annotations

from tests.support.haproxy import app_responses_2xx

SCRAPE = """\
# HELP haproxy_backend_http_responses_total Total number of HTTP responses.
# TYPE haproxy_backend_http_responses_total counter
haproxy_backend_http_responses_total{proxy="default_backend",code="2xx"} 7
haproxy_backend_http_responses_total{proxy="http-llm",code="2xx"} 12
haproxy_backend_http_responses_total{proxy="http-llm",code="5xx"} 3
haproxy_backend_http_responses_total{proxy="http-llm-via-ingress-request-router",code="2xx"} 4179
haproxy_backend_http_responses_total{proxy="stats",code="2xx"} 5
haproxy_backend_http_requests_total{proxy="http-llm"} 15
haproxy_frontend_http_requests_total{proxy="http_frontend"} 40
"""


def test_only_the_apps_2xx_answers_count() -> None:
    assert app_responses_2xx(SCRAPE) == 12 + 4179


def test_an_empty_scrape_counts_nothing() -> None:
    assert app_responses_2xx("") == 0
