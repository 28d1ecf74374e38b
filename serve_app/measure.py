"""What the router measures per version: the numbers a canary's gate compares. Ray-free.

Every answer is counted once, when it ends, with its outcome; streamed answers also give their
time to the first chunk that carries generated text (TTFT: a chat stream opens with a chunk that
only names the role, sent before any token) and the gaps between such chunks (inter-token latency
as the client sees it: with Ray Serve LLM's stream batching a chunk can hold several tokens).
Non-streamed answers give their whole latency as TTFT, which is when their first token reaches
the client.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from enum import StrEnum


class Outcome(StrEnum):
    """How an answer ended (the ``outcome`` tag of the request counter)."""

    OK = "ok"
    CLIENT_ERROR = "client_error"  # 4xx: the version refused the request (too long a prompt)
    SERVER_ERROR = "server_error"  # 5xx or an exception before the answer started
    STREAM_ERROR = "stream_error"  # an error event inside a stream that had started


def outcome_of(status_code: int | None) -> Outcome:
    if status_code is None or status_code >= 500:
        return Outcome.SERVER_ERROR
    if status_code >= 400:
        return Outcome.CLIENT_ERROR
    return Outcome.OK


# Latency histogram bucket bounds (seconds): fine enough for a p95 within ~25 % from 5 ms
# (a fast GPU's inter-token gap) to 2 minutes (a long prompt queued behind a full batch).
LATENCY_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip

_ERROR_EVENT = 'data: {"error"'
# A non-empty "content" (chat) or "text" (completions) string in an OpenAI stream chunk.
_GENERATED = re.compile(r'"(?:content|text)"\s*:\s*"(?!")')


async def measured_stream(
    chunks: AsyncIterable[str | bytes | memoryview],
    started: float,
    on_first: Callable[[float], None],
    on_gap: Callable[[float], None],
    on_end: Callable[[Outcome], None],
) -> AsyncIterator[str | bytes | memoryview]:
    """Pass a streamed body through, reporting TTFT, chunk gaps and how it ended."""
    last: float | None = None
    outcome = Outcome.OK
    try:
        async for chunk in chunks:
            text = chunk if isinstance(chunk, str) else bytes(chunk).decode(errors="replace")
            if text.startswith(_ERROR_EVENT):
                outcome = Outcome.STREAM_ERROR
            elif _GENERATED.search(text):
                now = time.monotonic()
                if last is None:
                    on_first(now - started)
                else:
                    on_gap(now - last)
                last = now
            yield chunk
    except BaseException:
        outcome = Outcome.STREAM_ERROR
        raise
    finally:
        on_end(outcome)
