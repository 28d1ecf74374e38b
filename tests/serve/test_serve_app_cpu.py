"""Our serve_app, as the rendered RayService runs it, answering the real openai client."""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from openai import OpenAI

    from tests.serve.conftest import ServeEndpoint

pytestmark = pytest.mark.serve

# Random weights: any text will do, as long as there is some (min_tokens is a vLLM extension).
EXTRA_BODY = {"min_tokens": 4}
RECOVERY_TIMEOUT_S = 600.0


@pytest.fixture(scope="module")
def client(app_endpoint: ServeEndpoint) -> Iterator[OpenAI]:
    from openai import OpenAI

    c = OpenAI(base_url=app_endpoint.base_url, api_key="unused", timeout=120, max_retries=0)
    yield c
    c.close()


def _chat(client: OpenAI, model: str, text: str = "Say hello.") -> str:
    resp = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=12,
        temperature=0.0,
        extra_body=EXTRA_BODY,
    )
    content = resp.choices[0].message.content
    assert content and resp.usage is not None and resp.usage.completion_tokens > 0
    return content


def test_models_lists_the_served_name(client: OpenAI, app_endpoint: ServeEndpoint) -> None:
    assert [m.id for m in client.models.list()] == [app_endpoint.model]


def test_chat_and_completion(client: OpenAI, app_endpoint: ServeEndpoint) -> None:
    _chat(client, app_endpoint.model)
    resp = client.completions.create(
        model=app_endpoint.model, prompt="Once upon a time", max_tokens=8, extra_body=EXTRA_BODY
    )
    assert resp.choices[0].text and resp.choices[0].finish_reason in ("length", "stop")


def test_streaming_arrives_incrementally(client: OpenAI, app_endpoint: ServeEndpoint) -> None:
    arrivals: list[float] = []
    pieces: list[str] = []
    # 256 forced tokens: generation lasts far longer than Ray Serve LLM's stream-batching window
    # (50 ms on CPU), so a streamed answer spreads over several windows while a buffered one
    # would arrive in one burst. 32 tokens could fit in a single window and read as buffered.
    stream = client.chat.completions.create(
        model=app_endpoint.model,
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=256,
        stream=True,
        extra_body={"min_tokens": 256},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) >= 4, pieces
    # Chunks were sent as they were generated, not buffered into one response at the end: they
    # arrive in more than one burst (a gap of over 10 ms between two chunks).
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert any(gap > 0.01 for gap in gaps), gaps[:20]


def test_sixteen_concurrent_requests_all_succeed(
    client: OpenAI, app_endpoint: ServeEndpoint
) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: _chat(client, app_endpoint.model, f"n={i}"), range(16)))
    assert len(answers) == 16 and all(answers)


def test_unknown_model_is_an_openai_404(client: OpenAI) -> None:
    from openai import NotFoundError

    with pytest.raises(NotFoundError) as info:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert info.value.status_code == 404
    assert "no-such-model" in str(info.value.body)


def test_malformed_body_is_a_400_with_a_clear_message(app_endpoint: ServeEndpoint) -> None:
    request = urllib.request.Request(
        f"{app_endpoint.base_url}/chat/completions",
        data=json.dumps({"model": app_endpoint.model, "messages": "not a list"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(request, timeout=60)
    assert info.value.code == 400
    body = json.loads(info.value.read())
    assert "messages" in json.dumps(body)


def test_replica_recovers_after_its_engine_is_killed(
    client: OpenAI, app_endpoint: ServeEndpoint
) -> None:
    import psutil

    replicas = [
        p
        for p in psutil.process_iter(["cmdline", "name"])
        if "ServeReplica:llm-a:LLMServer" in " ".join(p.info["cmdline"] or [p.info["name"] or ""])
    ]
    assert len(replicas) == 1, [p.info for p in replicas]
    engines = [c for c in replicas[0].children(recursive=True) if "EngineCore" in c.name()] or (
        replicas[0].children(recursive=True)
    )
    assert engines, "the replica has no engine process to kill"
    for proc in engines:
        proc.kill()

    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            _chat(client, app_endpoint.model)
            return
        except Exception as exc:  # 5xx/connection errors while Serve replaces the replica
            last = exc
            time.sleep(3)
    raise AssertionError(f"no answer {RECOVERY_TIMEOUT_S:.0f}s after killing the engine: {last}")
