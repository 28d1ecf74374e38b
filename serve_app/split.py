"""Which version of the model takes a request: the router's choice, kept Ray-free for tests.

The choice is a point in [0, 100) laid over the arms' cumulative weights, stable first. Without
a sticky header the point is random per request; with one it is a hash of the header's value,
so a client that sends the same value stays on one version for as long as the weights put its
point on that version's side (raising the canary's weight only moves clients onto it).
"""

from __future__ import annotations

import hashlib

from serve_app.args import ArmArgs, SplitArgs


def point_of(key: str) -> float:
    """A key's fixed point in [0, 100)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0


def choose(split: SplitArgs, point: float) -> ArmArgs:
    """The arm whose share of [0, 100) holds ``point`` (arms of weight 0 hold none)."""
    edge = 0.0
    for arm in split.arms:
        edge += arm.weight
        if point < edge:
            return arm
    # Only rounding at the top edge gets here: the last arm with any weight.
    return next(a for a in reversed(split.arms) if a.weight > 0)


# Response headers that say which version answered (clients, load generators, canary checks).
VERSION_HEADER = "x-llmservice-version"
APP_HEADER = "x-llmservice-app"
