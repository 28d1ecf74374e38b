"""The canary gate: per-version numbers from the router's metrics, and the verdict. Pure.

The router (serve_app/router.py) counts every answer per model version and outcome and keeps
TTFT and inter-chunk latency histograms; Ray exports them from each Ray pod's metrics port.
Counters are cumulative, so a window is the difference of two scrapes; a router replica that
restarted (a counter went down) restarts the window rather than giving negative numbers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from llmservice_operator.api.models import AnalysisSpec, VersionStats
from serve_app.measure import Outcome
from serve_app.naming import ROUTER_METRIC_PREFIX

# Ray prefixes the metrics of user code with "ray_" when it exports them.
_PREFIX = f"ray_{ROUTER_METRIC_PREFIX}"
REQUESTS = f"{_PREFIX}requests"
TTFT = f"{_PREFIX}ttft_seconds"
ITL = f"{_PREFIX}itl_seconds"


class Verdict(StrEnum):
    PASS = "Pass"  # enough canary answers, every limit held
    FAIL = "Fail"  # a limit broken by enough answers: roll back
    INCONCLUSIVE = "Inconclusive"  # too few answers, or the window is not full yet


@dataclass
class Totals:
    """One version's cumulative numbers (summed over router replicas and pods)."""

    outcomes: dict[str, float] = field(default_factory=dict)
    ttft: dict[float, float] = field(default_factory=dict)  # bucket upper bound -> count
    itl: dict[float, float] = field(default_factory=dict)

    @property
    def requests(self) -> float:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> float:
        return sum(n for o, n in self.outcomes.items() if o != Outcome.OK.value)

    def minus(self, old: Totals) -> Totals:
        """What happened since `old` (all of self if a counter went back: a restart)."""
        went_back = (
            _below(self.outcomes, old.outcomes)
            or _below(self.ttft, old.ttft)
            or _below(self.itl, old.itl)
        )
        if went_back:
            return self
        return Totals(
            _diff(self.outcomes, old.outcomes), _diff(self.ttft, old.ttft), _diff(self.itl, old.itl)
        )

    def add(self, other: Totals) -> None:
        _accumulate(self.outcomes, other.outcomes)
        _accumulate(self.ttft, other.ttft)
        _accumulate(self.itl, other.itl)


def _accumulate(into: dict[Any, float], more: Mapping[Any, float]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0.0) + v


def _below(new: Mapping[Any, float], old: Mapping[Any, float]) -> bool:
    return any(new.get(k, 0.0) < v for k, v in old.items())


def _diff(new: Mapping[Any, float], old: Mapping[Any, float]) -> dict[Any, float]:
    return {k: v - old.get(k, 0.0) for k, v in new.items()}


Key = tuple[str, str]  # (Serve application, version)


def parse_metrics(texts: Iterable[str]) -> dict[Key, Totals]:
    """Sum the router's metrics over scrapes of every Ray pod, by (application, version)."""
    out: dict[Key, Totals] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in (REQUESTS, TTFT, ITL):
                continue
            for sample in family.samples:
                labels = sample.labels
                key = (labels.get("app", ""), labels.get("version", ""))
                totals = out.setdefault(key, Totals())
                if family.name == REQUESTS and sample.name.endswith("_total"):
                    outcome = labels.get("outcome", "")
                    totals.outcomes[outcome] = totals.outcomes.get(outcome, 0.0) + sample.value
                elif sample.name.endswith("_bucket"):
                    buckets = totals.ttft if family.name == TTFT else totals.itl
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return out


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, linear within its bucket (as PromQL does)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: its lower edge, as PromQL does
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def stats(totals: Totals, version: str | None) -> VersionStats:
    requests, errors = round(totals.requests), round(totals.errors)
    return VersionStats(
        version=version,
        requests=requests,
        errors=errors,
        error_rate=round(errors / requests, 4) if requests else None,
        ttft_p95_seconds=_rounded(quantile(totals.ttft, 0.95)),
        itl_p95_seconds=_rounded(quantile(totals.itl, 0.95)),
    )


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def above(buckets: Mapping[float, float], limit: float) -> float:
    """How many observations of a cumulative histogram lie above `limit` (linear within the
    bucket, as `quantile`)."""
    if not buckets:
        return 0.0
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if limit < bound:
            if math.isinf(bound):
                return total - below
            at = below + (count - below) * (limit - lower) / (bound - lower)
            return max(0.0, total - at)
        lower, below = bound, count
    return 0.0


def _evidence(spec: AnalysisSpec) -> int:
    """Canary answers that must break a limit before the gate rolls back: one cold or unlucky
    answer is noise, not a verdict (with few answers, its share alone can move a p95)."""
    return min(spec.min_requests, 5)


def _slow_answers(totals: Totals, latency: str, limit: float) -> float:
    """Canary answers (or their equivalent in inter-token gaps) slower than `limit`."""
    if latency == "ttft":
        return above(totals.ttft, limit)
    gaps = max(totals.itl.values(), default=0.0)
    if not gaps:
        return 0.0
    # Gaps come many per answer: one slow answer's gaps count as one answer.
    return above(totals.itl, limit) * totals.requests / gaps


def verdict(
    spec: AnalysisSpec, stable_totals: Totals, canary_totals: Totals, full_window: bool
) -> tuple[Verdict, str]:
    """Whether the canary may go on, with the numbers that decided it.

    Errors are judged on any number of answers: a canary that fails requests is rolled back
    at once. Latency needs ``min_requests`` answers (a p95 of three is noise), and a pass needs
    them and a full window. Either kind of limit fails the canary only when enough of its
    answers broke it (`_evidence`); fewer leave the step waiting for more.
    """
    stable, canary = stats(stable_totals, None), stats(canary_totals, None)
    needed = _evidence(spec)
    enough = canary.requests >= spec.min_requests
    if spec.max_error_rate is not None and canary.requests and canary.error_rate is not None:
        # Above the stable version's own rate: clients' bad requests fail on both alike.
        allowed = spec.max_error_rate + (stable.error_rate or 0.0)
        if canary.error_rate > allowed and canary.errors >= needed:
            return Verdict.FAIL, (
                f"canary error rate {canary.error_rate:.1%} ({canary.errors}/{canary.requests}) "
                f"over {allowed:.1%} (stable {stable.error_rate or 0.0:.1%} + "
                f"{spec.max_error_rate:.1%})"
            )
    if not enough:
        return Verdict.INCONCLUSIVE, (
            f"{canary.requests}/{spec.min_requests} canary answers in the window"
        )
    waiting: str | None = None
    for latency, name, mine, theirs, ratio, cap in (
        ("ttft", "TTFT p95", canary.ttft_p95_seconds, stable.ttft_p95_seconds,
         spec.max_ttft_p95_ratio, spec.max_ttft_p95_seconds),
        ("itl", "inter-token latency p95", canary.itl_p95_seconds, stable.itl_p95_seconds,
         spec.max_itl_p95_ratio, spec.max_itl_p95_seconds),
    ):  # fmt: skip
        if mine is None:
            continue
        broken: list[tuple[float, str]] = []
        if cap is not None and mine > cap:
            broken.append((cap, f"canary {name} {mine:.3f}s over {cap:.3f}s"))
        compared = ratio is not None and theirs and stable.requests >= spec.min_requests
        if compared and ratio is not None and theirs is not None and mine > ratio * theirs:
            why = f"canary {name} {mine:.3f}s over {ratio:g}x stable's {theirs:.3f}s"
            broken.append((ratio * theirs, why))
        for limit, why in broken:
            slow = _slow_answers(canary_totals, latency, limit)
            if slow >= needed:
                return Verdict.FAIL, why
            waiting = waiting or (
                f"{why}, but in about {slow:.0f} of {canary.requests} answers "
                f"(a rollback needs {needed}): waiting for more"
            )
    if waiting:
        return Verdict.INCONCLUSIVE, waiting
    if not full_window:
        return Verdict.INCONCLUSIVE, "limits hold so far; the window is not full yet"
    return Verdict.PASS, (
        f"limits hold over {canary.requests} canary answers "
        f"(errors {canary.error_rate or 0.0:.1%}, TTFT p95 {_secs(canary.ttft_p95_seconds)} vs "
        f"{_secs(stable.ttft_p95_seconds)})"
    )


def _secs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}s"


@dataclass
class History:
    """Scrapes of one LLMService's router metrics, oldest first, kept as long as a window."""

    scrapes: deque[tuple[float, dict[Key, Totals]]] = field(default_factory=deque)

    def add(self, now: float, totals: dict[Key, Totals], keep_s: float) -> None:
        self.scrapes.append((now, totals))
        # Keep one scrape at least `keep_s` old: the start of the longest window.
        while len(self.scrapes) > 2 and self.scrapes[1][0] <= now - keep_s:
            self.scrapes.popleft()

    def window(self, now: float, window_s: float, since: float) -> tuple[float, dict[Key, Totals]]:
        """(seconds covered, per-key numbers) from the latest scrape back to the newest one
        at least `window_s` old, never from before `since` (the step's start)."""
        eligible = [(t, totals) for t, totals in self.scrapes if t >= since]
        if len(eligible) < 2:
            return 0.0, {}
        start_t, start = eligible[0]
        for t, totals in eligible:
            if t <= now - window_s:
                start_t, start = t, totals
        latest_t, latest = eligible[-1]
        covered = latest_t - start_t
        return covered, {k: v.minus(start.get(k, Totals())) for k, v in latest.items()}
