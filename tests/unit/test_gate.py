"""The canary gate: the router's metrics as Ray exports them, windows, percentiles, verdicts."""

from __future__ import annotations

import pytest

from llmservice_operator.api.models import AnalysisSpec
from llmservice_operator.gate import (
    History,
    Totals,
    Verdict,
    above,
    parse_metrics,
    quantile,
    stats,
    verdict,
)


def _exposition(app: str, version: str, ok: int, failed: int, ttft: dict[str, int]) -> str:
    """Prometheus text as Ray's metrics agent writes the router's metrics (names and tags)."""
    tags = f'app="{app}",version="{version}"'
    lines = [
        "# HELP ray_llmservice_router_requests_total Answers by model version and outcome.",
        "# TYPE ray_llmservice_router_requests_total counter",
        f'ray_llmservice_router_requests_total{{{tags},outcome="ok"}} {ok}',
        f'ray_llmservice_router_requests_total{{{tags},outcome="client_error"}} {failed}',
        "# HELP ray_llmservice_router_ttft_seconds Time to the first streamed chunk.",
        "# TYPE ray_llmservice_router_ttft_seconds histogram",
    ]
    for le, n in ttft.items():
        lines.append(f'ray_llmservice_router_ttft_seconds_bucket{{{tags},le="{le}"}} {n}')
    lines.append(f"ray_llmservice_router_ttft_seconds_count{{{tags}}} {ok + failed}")
    lines.append("# TYPE ray_node_cpu_utilization gauge")
    lines.append('ray_node_cpu_utilization{ip="10.0.0.1"} 12.5')
    return "\n".join(lines) + "\n"


def test_metrics_of_every_pod_are_summed_per_version() -> None:
    pod1 = _exposition("llm-a", "v1", 90, 0, {"0.1": 80, "0.2": 90, "+Inf": 90})
    pod2 = _exposition("llm-b", "v2", 5, 5, {"0.1": 2, "0.2": 10, "+Inf": 10})
    pod3 = _exposition("llm-a", "v1", 10, 0, {"0.1": 10, "0.2": 10, "+Inf": 10})
    totals = parse_metrics([pod1, pod2, pod3])
    a, b = totals[("llm-a", "v1")], totals[("llm-b", "v2")]
    assert (a.requests, a.errors) == (100, 0)
    assert (b.requests, b.errors) == (10, 5)
    assert a.ttft[0.1] == 90 and a.ttft[float("inf")] == 100


def test_quantile_interpolates_within_the_bucket_as_promql_does() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.95) == pytest.approx(0.19)
    assert quantile({0.1: 0.0, float("inf"): 0.0}, 0.95) is None
    assert quantile({0.1: 0.0, float("inf"): 10.0}, 0.95) == 0.1  # beyond the last bound


def test_a_window_is_the_difference_of_two_scrapes_and_survives_a_restart() -> None:
    h = History()
    h.add(0.0, {("llm-b", "v2"): Totals({"ok": 10.0})}, keep_s=100)
    h.add(30.0, {("llm-b", "v2"): Totals({"ok": 40.0})}, keep_s=100)
    h.add(60.0, {("llm-b", "v2"): Totals({"ok": 70.0, "server_error": 3.0})}, keep_s=100)
    covered, window = h.window(60.0, window_s=30, since=0.0)
    assert covered == 30.0 and window[("llm-b", "v2")].outcomes == {"ok": 30.0, "server_error": 3.0}
    # Nothing from before the step began.
    covered, window = h.window(60.0, window_s=60, since=20.0)
    assert covered == 30.0 and window[("llm-b", "v2")].requests == 33.0
    # A router replica restarted: its counters start over, and the window with them.
    h.add(90.0, {("llm-b", "v2"): Totals({"ok": 5.0})}, keep_s=100)
    _, window = h.window(90.0, window_s=30, since=0.0)
    assert window[("llm-b", "v2")].outcomes == {"ok": 5.0}


INF = float("inf")
SPEC = AnalysisSpec(min_requests=20, max_error_rate=0.01, max_ttft_p95_ratio=1.5)


def _totals(requests: int, errors: int = 0, ttft: float = 0.1) -> Totals:
    """Answers whose TTFTs all fall in the bucket ending at `ttft` (p95 = 0.95 * ttft)."""
    n = float(requests)
    return Totals({"ok": n - errors, "server_error": float(errors)}, {ttft: n, INF: n})


def _gaps(answers: int, slow_answers: int, per_answer: int = 7) -> Totals:
    """`answers` streams of `per_answer` inter-token gaps each: 10 ms, or 200 ms in slow ones."""
    gaps = float(answers * per_answer)
    fast = gaps - slow_answers * per_answer
    return Totals(
        {"ok": float(answers)},
        {0.05: float(answers), INF: float(answers)},
        {0.01: fast, 0.15: fast, 0.2: gaps, INF: gaps},
    )


def test_failing_requests_roll_back_at_once_even_before_min_requests() -> None:
    result, reason = verdict(SPEC, _totals(200, 0), _totals(6, 6), full_window=False)
    assert result is Verdict.FAIL and "6/6" in reason


def test_errors_are_judged_above_the_stable_versions_own_rate() -> None:
    # Clients' bad requests fail on both versions alike: not the canary's fault.
    result, _ = verdict(SPEC, _totals(200, 10), _totals(40, 2), full_window=True)
    assert result is Verdict.PASS


def test_latency_needs_enough_answers_then_fails_on_the_ratio() -> None:
    assert verdict(SPEC, _totals(200), _totals(5, 0, 9.0), True)[0] is Verdict.INCONCLUSIVE
    result, reason = verdict(SPEC, _totals(200, 0, 0.1), _totals(30, 0, 0.4), True)
    assert result is Verdict.FAIL and "TTFT p95" in reason and "1.5x" in reason


def test_one_cold_answer_waits_for_more_and_enough_slow_answers_fail() -> None:
    spec = AnalysisSpec(min_requests=5, max_itl_p95_ratio=10)
    # 9 canary answers, one of them cold: 7 of 63 gaps slow puts the p95 at 20x stable's,
    # but one answer is no verdict; the step waits (the window slides past it).
    result, reason = verdict(spec, _gaps(200, 0), _gaps(9, 1), full_window=True)
    assert result is Verdict.INCONCLUSIVE, reason
    assert "inter-token latency p95" in reason and "about 1 of 9" in reason
    # Half of them slow: a slow version, rolled back.
    result, reason = verdict(spec, _gaps(200, 0), _gaps(10, 5), full_window=True)
    assert result is Verdict.FAIL and "10x stable's" in reason, reason
    # The same for an absolute cap on TTFT: one slow first token waits, five fail.
    capped = AnalysisSpec(min_requests=5, max_ttft_p95_seconds=0.25)
    slow_one = Totals({"ok": 10.0}, {0.05: 9.0, 0.25: 9.0, 1.0: 10.0, INF: 10.0})
    assert verdict(capped, _totals(100), slow_one, True)[0] is Verdict.INCONCLUSIVE
    slow_five = Totals({"ok": 10.0}, {0.05: 5.0, 0.25: 5.0, 1.0: 10.0, INF: 10.0})
    assert verdict(capped, _totals(100), slow_five, True)[0] is Verdict.FAIL


def test_above_counts_observations_over_a_limit_as_quantile_interpolates() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, INF: 100.0}
    assert above(buckets, 0.15) == pytest.approx(25.0)
    assert above(buckets, 0.2) == 0.0 and above(buckets, 0.05) == pytest.approx(75.0)
    assert above({0.1: 10.0, INF: 12.0}, 0.5) == 2.0 and above({}, 1.0) == 0.0


def test_a_pass_needs_a_full_window() -> None:
    assert verdict(SPEC, _totals(200), _totals(30), full_window=False)[0] is Verdict.INCONCLUSIVE
    assert verdict(SPEC, _totals(200), _totals(30), full_window=True)[0] is Verdict.PASS


def test_stats_report_counts_rates_and_percentiles() -> None:
    s = stats(Totals({"ok": 95.0, "client_error": 5.0}, {0.1: 90.0, 0.5: 100.0}), "v2")
    assert (s.version, s.requests, s.errors, s.error_rate) == ("v2", 100, 5, 0.05)
    assert s.ttft_p95_seconds == pytest.approx(0.3)
