"""Which version of the model takes a request: the router's choice, kept Ray-free for tests.

Without a sticky header, requests are dealt out in the weights' proportions exactly
(``Interleaver``: after n requests each version has had n x its weight within one request), so
a step's observed share is its weight from the first answers on, where a random draw would need
about a thousand answers for +-2 points at 10 %. With a sticky header the choice is a point in
[0, 100), a hash of the header's value, laid over the arms' cumulative weights, stable first: a
client that sends the same value stays on one version for as long as the weights put its point
on that version's side (raising the canary's weight only moves clients onto it).
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


class Interleaver:
    """Smooth weighted round-robin over the arms with weight (nginx's upstream balancing): each
    pick adds every arm's weight to its credit and takes the arm with the most, which then pays
    the total. Deterministic and even: at 10 % every tenth request goes to the canary."""

    def __init__(self, split: SplitArgs) -> None:
        self._arms = [a for a in split.arms if a.weight > 0]
        if not self._arms:
            raise ValueError("no arm has any weight")
        self._total = sum(a.weight for a in self._arms)
        self._credit = [0.0] * len(self._arms)

    def next(self) -> ArmArgs:
        for i, arm in enumerate(self._arms):
            self._credit[i] += arm.weight
        best = max(range(len(self._arms)), key=lambda i: self._credit[i])  # first on a tie
        self._credit[best] -= self._total
        return self._arms[best]


# Response headers that say which version answered (clients, load generators, canary checks).
VERSION_HEADER = "x-llmservice-version"
APP_HEADER = "x-llmservice-app"
