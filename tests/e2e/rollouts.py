"""The canary rollouts the e2e scenarios ask for (shared by test_truth and test_haproxy)."""

from __future__ import annotations

from typing import Any

# The canary scenarios' gate: short steps for a test, and latency ratios wide enough for two
# engines sharing two cores (the canary's start-up starves the stable one's CPU for a while).
CANARY_ROLLOUT: dict[str, Any] = {
    "strategy": "Canary",
    "canary": {
        "steps": [50, 100],
        "pauseSeconds": 20,
        "analysis": {
            "windowSeconds": 30,
            "minRequests": 10,
            "maxErrorRate": 0.01,
            "maxTtftP95Ratio": 10,
            "maxItlP95Ratio": 10,
            # A merge patch keeps keys it does not name: clear the good canary's caps.
            "maxTtftP95Seconds": None,
            "maxItlP95Seconds": None,
        },
    },
}
CANARY_RATE = 2.0
# The good canary walks the usual steps; the window holds enough answers at 10 % of 2/s. Its
# latency limits are absolute caps, its ratios as wide as the schema allows: here the two engines
# share two cores and the canary's replica runs on a Ray node of its own, and with identical engine
# settings the canary's inter-token p95 measured 14-20x the stable's (71 ms vs 4.7 ms, CI and
# here), so a ratio would judge placement on this ground, not the version. The ratio gate's
# verdicts are unit-tested (tests/unit/test_gate.py).
GOOD_ROLLOUT: dict[str, Any] = {
    **CANARY_ROLLOUT,
    "canary": {
        **CANARY_ROLLOUT["canary"],
        "steps": [10, 50, 100],
        "analysis": {
            **CANARY_ROLLOUT["canary"]["analysis"],
            "windowSeconds": 45,
            "minRequests": 5,
            "maxTtftP95Ratio": 100,
            "maxItlP95Ratio": 100,
            "maxTtftP95Seconds": 10,
            "maxItlP95Seconds": 2,
        },
    },
}
