"""The router's choice of version and what it measures (serve_app.split / measure, no Ray)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from serve_app.args import SplitArgs
from serve_app.measure import Outcome, measured_stream, outcome_of
from serve_app.split import Interleaver, choose, point_of


def split(stable: float, sticky: str | None = None) -> SplitArgs:
    return SplitArgs.model_validate(
        {
            "arms": [
                {"app": "llm-a", "version": "v1", "weight": stable},
                {"app": "llm-b", "version": "v2", "weight": 100 - stable},
            ],
            "sticky_header": sticky,
        }
    )


def test_points_fall_on_the_arms_in_proportion_to_their_weights() -> None:
    s = split(90)
    picks = Counter(choose(s, p / 10).version for p in range(1000))  # an even grid over [0, 100)
    assert picks == {"v1": 900, "v2": 100}
    assert choose(split(100), 99.999).version == "v1"  # a weight of 0 takes nothing
    assert choose(split(0), 0.0).version == "v2"


def test_a_sticky_key_keeps_its_version_and_raising_the_canary_only_moves_clients_onto_it() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    at10 = {k: choose(split(90), point_of(k)).version for k in keys}
    at50 = {k: choose(split(50), point_of(k)).version for k in keys}
    assert all(point_of(k) == point_of(k) for k in keys[:10])
    assert not [k for k in keys if at10[k] == "v2" and at50[k] == "v1"]  # nobody moves back
    share = sum(v == "v2" for v in at50.values()) / len(keys)
    assert 0.46 < share < 0.54  # the hash spreads keys evenly


@pytest.mark.parametrize("stable", [90.0, 50.0, 99.0, 66.5])
def test_the_deal_gives_every_prefix_its_weights_within_one_request(stable: float) -> None:
    deal = Interleaver(split(stable))
    canary = 0
    for n in range(1, 2001):
        canary += deal.next().version == "v2"
        assert abs(canary - n * (100 - stable) / 100) <= 1, (n, canary)


def test_the_deal_skips_arms_without_weight_and_spreads_the_canary_out() -> None:
    deal = Interleaver(split(100))
    assert {deal.next().version for _ in range(5)} == {"v1"}
    at10 = Interleaver(split(90))
    picks = [at10.next().version for _ in range(30)]
    # One in ten, evenly apart: never two canary answers back to back.
    at = [i for i, v in enumerate(picks) if v == "v2"]
    assert len(at) == 3 and at[1] - at[0] == at[2] - at[1] == 10


def test_weights_must_add_up_to_100_and_name_each_app_once() -> None:
    with pytest.raises(ValidationError, match="add up to 100"):
        SplitArgs.model_validate({"arms": [{"app": "llm-a", "weight": 90}]})
    with pytest.raises(ValidationError, match="at most once"):
        SplitArgs.model_validate(
            {"arms": [{"app": "llm-a", "weight": 50}, {"app": "llm-a", "weight": 50}]}
        )


def test_outcomes_by_status_code() -> None:
    assert [outcome_of(c) for c in (200, 400, 404, 500, None)] == [
        Outcome.OK, Outcome.CLIENT_ERROR, Outcome.CLIENT_ERROR, Outcome.SERVER_ERROR,
        Outcome.SERVER_ERROR,
    ]  # fmt: skip


def test_a_measured_stream_times_generated_text_and_says_how_it_ended() -> None:
    async def chunks(items: list[str]) -> AsyncIterator[str]:
        for item in items:
            await asyncio.sleep(0.01)
            yield item

    async def run(items: list[str]) -> tuple[list[float], list[float], list[Outcome], list[str]]:
        first: list[float] = []
        gaps: list[float] = []
        ends: list[Outcome] = []
        out = [
            str(c)
            async for c in measured_stream(
                chunks(items), started=0.0, on_first=first.append, on_gap=gaps.append,
                on_end=ends.append,
            )
        ]  # fmt: skip
        return first, gaps, ends, out

    role = 'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    token = 'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    text = 'data: {"choices":[{"text":"Hi"}]}\n\n'
    first, gaps, ends, out = asyncio.run(run([role, token, token, "data: [DONE]\n\n"]))
    # The role chunk comes before any token: TTFT waits for generated text.
    assert len(first) == 1 and len(gaps) == 1 and gaps[0] > 0
    assert ends == [Outcome.OK] and len(out) == 4
    first, gaps, _, _ = asyncio.run(run([text, text, text]))
    assert (len(first), len(gaps)) == (1, 2)  # completions stream "text"
    _, _, ends, _ = asyncio.run(run(['data: {"error": {"code": 500}}\n\n']))
    assert ends == [Outcome.STREAM_ERROR]
