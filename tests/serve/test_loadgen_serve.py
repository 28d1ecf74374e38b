"""The load generator against our serve_app on real Ray + vLLM: steady traffic, no failures.

This is the baseline the operator-promise tests build on: if a quiet, healthy deployment at
2 req/s already showed failures, failures during a rollout or scale event would prove nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.loadgen import LoadGenerator

if TYPE_CHECKING:
    from tests.serve.conftest import ServeEndpoint

pytestmark = pytest.mark.serve

# Random weights may emit EOS first; min_tokens (a vLLM extension) keeps every stream non-empty.
EXTRA_BODY = {"min_tokens": 4}
# 10 successes at 2 req/s take ~5 s when healthy; the bound is for a slow shared 2-core host.
SUCCESS_TIMEOUT_S = 180.0


def test_steady_traffic_has_no_failures(app_endpoint: ServeEndpoint) -> None:
    gen = LoadGenerator(
        app_endpoint.base_url,
        app_endpoint.model,
        rate_per_s=2.0,
        max_tokens=16,
        timeout_s=60,
        extra_body=EXTRA_BODY,
        max_duration_s=SUCCESS_TIMEOUT_S + 60,
    )
    with gen:
        gen.wait_for_successes(10, timeout=SUCCESS_TIMEOUT_S)
    report = gen.report
    print(report.summary())  # the closing note: rate, counts, TTFT and latency percentiles
    assert report.failed == 0, f"{report.summary()}\nexamples: {report.examples}"
    assert report.cancelled == 0, report.summary()  # the drain let every request finish
    assert report.succeeded >= 10 and report.sent == report.succeeded
    assert report.ttft_p50_s is not None and report.ttft_p95_s is not None
    assert report.latency_p50_s is not None and report.latency_p95_s is not None
    assert 0 < report.ttft_p50_s <= report.ttft_p95_s <= report.latency_p95_s
