"""Stock ray.serve.llm serving the tiny model with vLLM on CPU, driven by the real openai client.

This is the ground truth under the operator: the RayService it renders ends up running this
same `build_openai_app`, so if these pass, the serving half of the stack works here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # Types only: collection must not need the serving stack (the fixture reports it).
    from openai import OpenAI

    from tests.serve.conftest import ServeEndpoint

pytestmark = pytest.mark.serve

# The weights are random: whatever the model says is fine, as long as it says something.
# temperature 0 makes it say the same thing every run; min_tokens (a vLLM sampling
# extension) keeps an early end-of-sequence token from making the answer empty.
TEMPERATURE = 0.0
EXTRA_BODY = {"min_tokens": 4}


@pytest.fixture(scope="module")
def client(serve_endpoint: ServeEndpoint) -> Iterator[OpenAI]:
    from openai import OpenAI

    # Serve does not check the key, but the client insists on one.
    c = OpenAI(base_url=serve_endpoint.base_url, api_key="unused", timeout=120, max_retries=0)
    yield c
    c.close()


def test_models_lists_tiny_llama(client: OpenAI, serve_endpoint: ServeEndpoint) -> None:
    ids = [m.id for m in client.models.list()]
    assert serve_endpoint.model in ids


def test_chat_completion_returns_content_and_usage(
    client: OpenAI, serve_endpoint: ServeEndpoint
) -> None:
    resp = client.chat.completions.create(
        model=serve_endpoint.model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=TEMPERATURE,
        extra_body=EXTRA_BODY,
    )
    assert resp.model == serve_endpoint.model
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content, f"empty answer: {resp!r}"
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert 4 <= resp.usage.completion_tokens <= 16
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streamed_completion_arrives_incrementally(
    client: OpenAI, serve_endpoint: ServeEndpoint
) -> None:
    max_tokens = 32
    stream = client.completions.create(
        model=serve_endpoint.model,
        prompt="Once upon a time",
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        temperature=TEMPERATURE,
        extra_body=EXTRA_BODY,
    )
    texts: list[str] = []
    arrivals: list[float] = []
    finish_reasons: list[str] = []
    completion_tokens = None
    for chunk in stream:
        now = time.monotonic()
        for choice in chunk.choices:
            if choice.text:
                texts.append(choice.text)
                arrivals.append(now)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
        if chunk.usage is not None:
            completion_tokens = chunk.usage.completion_tokens

    # Shown by `pytest -rA`: how the stream was cut up on this machine.
    print(f"{len(texts)} text chunks over {arrivals[-1] - arrivals[0]:.3f} s" if arrivals else "")
    # Ray Serve batches stream output every ~50 ms, so a chunk may carry several tokens;
    # still, 32 tokens on CPU take long enough to come in more than a couple of pieces.
    assert len(texts) >= 3, f"only {len(texts)} text chunks: {texts!r}"
    assert arrivals[-1] > arrivals[0], "all chunks arrived at once: not streamed"
    assert "".join(texts).strip()
    assert finish_reasons == ["length"], finish_reasons
    assert completion_tokens == max_tokens
