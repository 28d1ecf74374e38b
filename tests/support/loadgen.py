"""Steady open-loop chat traffic for tests that prove operator promises under live load.

A test starts a LoadGenerator against an OpenAI-compatible base URL, does something to the
system (rolls out a new version, scales, kills a replica), waits on traffic rather than on a
clock (`wait_for_successes`), and then asserts on the LoadReport: how many requests failed,
of which kind, and when.

Why open-loop: a closed-loop client (send the next request when the last one finished) slows
down exactly when the server does, so an outage shows up as "fewer requests" instead of
"failed requests". Here a new request starts every 1/rate seconds whatever happened to the
earlier ones; the cap on requests in flight only keeps a dead server from piling up unbounded
work in the test process, and every request that cap refuses is counted (kind
`refused_at_cap`), never silently dropped.

Every request goes through the real `openai` client with `stream=True` and `max_retries=0`:
the client would otherwise retry 5xx and connection errors behind our back, and hide the very
failures the tests are looking for.

Accounting: sent == succeeded + failed + cancelled + in_flight, always. `sent` counts every
request the schedule called for (refused ones included); `cancelled` counts requests still
running when `stop(drain_s)` ran out of patience, which are neither successes nor failures.
Timestamps are `time.monotonic()` values, so a test can take its own t0/t1 around an action and
ask `report.failures_between(t0, t1)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self

from serve_app.split import VERSION_HEADER

if TYPE_CHECKING:
    from openai import AsyncOpenAI

OK = "ok"
CANCELLED = "cancelled"
REFUSED_AT_CAP = "refused_at_cap"
TIMEOUT = "timeout"
CONNECTION = "connection"
EMPTY_STREAM = "empty_stream"
STREAM_ERROR = "stream_error"
_NOT_FAILURES = frozenset({OK, CANCELLED})

MAX_EXAMPLES_PER_KIND = 3
MAX_EXAMPLE_CHARS = 300
# stop() waits this much beyond drain_s for the loop thread to wind down (closing the client,
# cancelling stragglers) before declaring it stuck.
_JOIN_MARGIN_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """One scheduled request: when it started and ended, and how it ended (`kind`)."""

    started_at: float  # time.monotonic()
    ended_at: float
    kind: str  # "ok", "cancelled", or a failure kind
    ttft_s: float | None = None  # successes only
    latency_s: float | None = None  # successes only
    version: str | None = None  # which model version answered (the router's response header)


def _percentile(values: list[float], p: float) -> float | None:
    # Nearest rank: always one of the observed values, well defined for tiny samples.
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class LoadReport:
    sent: int
    succeeded: int
    failed: int
    cancelled: int
    in_flight: int
    failed_by_kind: dict[str, int]
    examples: dict[str, list[str]]  # the first few error messages per failure kind
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    rate_per_s: float
    started_at: float  # time.monotonic() when traffic started
    duration_s: float
    running: bool
    hit_max_duration: bool  # stopped by itself, not by stop()
    outcomes: tuple[Outcome, ...] = field(repr=False)

    def failures_between(self, t0: float, t1: float) -> dict[str, int]:
        """Failures observed (ended) in [t0, t1] (time.monotonic() values), by kind."""
        return dict(
            Counter(
                o.kind
                for o in self.outcomes
                if o.kind not in _NOT_FAILURES and t0 <= o.ended_at <= t1
            )
        )

    def versions_between(self, t0: float, t1: float) -> dict[str | None, int]:
        """Successes sent in [t0, t1] by the model version that answered them."""
        return dict(
            Counter(o.version for o in self.outcomes if o.kind == OK and t0 <= o.started_at <= t1)
        )

    def versions_answered_by(self, t: float) -> dict[str | None, int]:
        """Successes that had ended by ``t`` by the model version that answered them. A request's
        route is chosen between its start and its end: one that ended by ``t`` was certainly
        routed before it (counting by start would blame a request queued across a switch)."""
        return dict(Counter(o.version for o in self.outcomes if o.kind == OK and o.ended_at <= t))

    def summary(self) -> str:
        """One line for a test's closing notes or an assertion message."""

        def secs(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}s"

        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.failed_by_kind.items()))
        first = next(
            (f"; first {k}: {ex[0]!r}" for k, ex in sorted(self.examples.items()) if ex), ""
        )
        return (
            f"load {self.rate_per_s:g}/s for {self.duration_s:.1f}s"
            f"{' (hit max duration)' if self.hit_max_duration else ''}: "
            f"sent {self.sent}, ok {self.succeeded}, failed {self.failed}"
            f"{f' ({kinds})' if kinds else ''}, cancelled {self.cancelled}, "
            f"in flight {self.in_flight}; ttft p50 {secs(self.ttft_p50_s)} "
            f"p95 {secs(self.ttft_p95_s)}; latency p50 {secs(self.latency_p50_s)} "
            f"p95 {secs(self.latency_p95_s)}{first}"
        )


class LoadGenerator:
    """Streams chat completions at a steady rate from a background thread with its own loop."""

    def __init__(
        self,
        base_url: str,
        model: str,
        rate_per_s: float = 2.0,
        max_tokens: int = 16,
        timeout_s: float = 60.0,
        prompt: str = "Count from one to twenty.",
        *,
        max_in_flight: int = 32,
        max_duration_s: float = 600.0,
        extra_body: Mapping[str, object] | None = None,
        unique_prompts: bool = False,
    ) -> None:
        if rate_per_s <= 0 or max_tokens < 1 or timeout_s <= 0:
            raise ValueError("rate_per_s and timeout_s must be > 0, max_tokens >= 1")
        if max_in_flight < 1 or max_duration_s <= 0:
            raise ValueError("max_in_flight must be >= 1 and max_duration_s > 0")
        self.base_url = base_url
        self.model = model
        self.rate_per_s = rate_per_s
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.prompt = prompt
        self.max_in_flight = max_in_flight
        self.max_duration_s = max_duration_s
        # e.g. {"min_tokens": 4} for vLLM: random-weight models may emit EOS at once.
        self.extra_body = dict(extra_body) if extra_body else None
        # Each prompt opens with its own number, so no request reuses another's prefix cache
        # (real traffic rarely repeats a whole prompt; a prefill cost is then paid every time).
        self.unique_prompts = unique_prompts
        self._numbers = itertools.count()

        # Everything below is written by the loop thread and read by callers: under _cond.
        self._cond = threading.Condition()
        self._outcomes: list[Outcome] = []
        self._examples: dict[str, list[str]] = {}
        self._in_flight = 0
        self._succeeded = 0
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._hit_max_duration = False
        self._crash: BaseException | None = None

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._drain_s = timeout_s  # how long in-flight requests may finish once sending stops
        self._final: LoadReport | None = None

    # -- public API ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start sending; returns once the loop runs (the first request is then under way)."""
        if self._thread is not None:
            raise RuntimeError("LoadGenerator.start() called twice: make a new one")
        try:  # here, not only in the loop thread: a missing client must fail the caller loudly
            import openai  # noqa: F401
        except ImportError as e:
            raise ImportError(f"tests.support.loadgen needs the openai client: {e}") from e
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="loadgen", daemon=True
        )
        self._thread.start()
        # Not a sleep: the loop sets this as soon as it exists; the bound only guards a bug.
        if not ready.wait(timeout=30):
            raise RuntimeError("load generator loop did not start within 30 s")
        return self

    def stop(self, drain_s: float = 30.0) -> LoadReport:
        """Stop sending, give in-flight requests up to drain_s to finish, cancel the rest."""
        if self._final is not None:
            return self._final
        if self._thread is None:
            raise RuntimeError("LoadGenerator.stop() before start()")
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and self._thread.is_alive():
            self._drain_s = drain_s
            # The loop may have closed between the check and the call (max duration reached).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        self._thread.join(timeout=max(drain_s, self.timeout_s) + _JOIN_MARGIN_S)
        if self._thread.is_alive():
            raise RuntimeError(f"load generator did not stop: {self.snapshot().summary()}")
        if self._crash is not None:
            raise RuntimeError("load generator crashed") from self._crash
        self._final = self.snapshot()
        return self._final

    def snapshot(self) -> LoadReport:
        """The report so far; while running, in-flight requests are counted as such."""
        with self._cond:
            outcomes = tuple(self._outcomes)
            in_flight = self._in_flight
            examples = {k: list(v) for k, v in self._examples.items()}
            started = self._started_at if self._started_at is not None else time.monotonic()
            end = self._ended_at if self._ended_at is not None else time.monotonic()
            running = self._is_running()
            hit_max = self._hit_max_duration
        by_kind = Counter(o.kind for o in outcomes)
        ttfts = [o.ttft_s for o in outcomes if o.ttft_s is not None]
        latencies = [o.latency_s for o in outcomes if o.latency_s is not None]
        failed_by_kind = {k: n for k, n in sorted(by_kind.items()) if k not in _NOT_FAILURES}
        return LoadReport(
            sent=len(outcomes) + in_flight,
            succeeded=by_kind[OK],
            failed=sum(failed_by_kind.values()),
            cancelled=by_kind[CANCELLED],
            in_flight=in_flight,
            failed_by_kind=failed_by_kind,
            examples=examples,
            ttft_p50_s=_percentile(ttfts, 50),
            ttft_p95_s=_percentile(ttfts, 95),
            latency_p50_s=_percentile(latencies, 50),
            latency_p95_s=_percentile(latencies, 95),
            rate_per_s=self.rate_per_s,
            started_at=started,
            duration_s=max(0.0, end - started),
            running=running,
            hit_max_duration=hit_max,
            outcomes=outcomes,
        )

    def wait_until(self, predicate: Callable[[LoadReport], bool], timeout: float) -> LoadReport:
        """Block until predicate(snapshot) holds; raise if it times out or traffic stopped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                report = self.snapshot()  # re-entrant: _cond wraps an RLock
                if predicate(report):
                    return report
                if not report.running:
                    # Waiting longer cannot help: nothing will change any more.
                    raise RuntimeError(
                        f"load generator stopped first: {report.summary()}"
                    ) from self._crash
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"waited {timeout:g}s: {report.summary()}")
                self._cond.wait(timeout=left)

    def wait_for_successes(self, n: int, timeout: float) -> LoadReport:
        """Block until n more requests than now have succeeded."""
        target = self.snapshot().succeeded + n
        return self.wait_until(lambda r: r.succeeded >= target, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After a failure in the with-block, don't wait for stragglers: the test is over.
        self.stop(drain_s=30.0 if exc_type is None else 0.0)

    @property
    def report(self) -> LoadReport:
        """The final report once stopped (e.g. after a with-block), else a snapshot."""
        return self._final if self._final is not None else self.snapshot()

    # -- the loop thread ----------------------------------------------------------------

    def _is_running(self) -> bool:
        return self._thread is not None and self._ended_at is None and self._crash is None

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as e:  # a bug in here: surface it through stop()/wait_until
            with self._cond:
                self._crash = e
        finally:
            ready.set()  # never leave start() waiting, even if _main failed early
            with self._cond:
                if self._ended_at is None:
                    self._ended_at = time.monotonic()
                self._cond.notify_all()

    async def _main(self, ready: threading.Event) -> None:
        from openai import AsyncOpenAI

        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        # Made in this thread: the client's connection pool belongs to this loop.
        client = AsyncOpenAI(
            base_url=self.base_url, api_key="unused", max_retries=0, timeout=self.timeout_s
        )
        tasks: set[asyncio.Task[None]] = set()
        try:
            with self._cond:
                self._started_at = time.monotonic()
            ready.set()
            await self._schedule(client, tasks)
            if tasks:
                await asyncio.wait(tasks, timeout=self._drain_s)
            for task in tasks:
                task.cancel()  # each records itself as cancelled
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await client.close()
            with self._cond:
                self._ended_at = time.monotonic()
                self._cond.notify_all()

    async def _schedule(self, client: AsyncOpenAI, tasks: set[asyncio.Task[None]]) -> None:
        assert self._stop_event is not None
        interval = 1.0 / self.rate_per_s
        start = time.monotonic()
        deadline = start + self.max_duration_s
        next_at = start
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now >= deadline:
                with self._cond:
                    self._hit_max_duration = True
                return
            with self._cond:
                refuse = self._in_flight >= self.max_in_flight
                if not refuse:
                    self._in_flight += 1
                    self._cond.notify_all()  # waiters may be watching sent/in_flight
            if refuse:
                self._record(Outcome(now, now, REFUSED_AT_CAP), f"{self.max_in_flight} in flight")
            else:
                task = asyncio.create_task(self._one(client, now))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            # Fixed schedule, but if this loop itself fell behind (a stalled host), skip the
            # missed slots rather than fire them in a burst the tests did not ask for.
            next_at = max(next_at + interval, time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop_event.wait(), timeout=min(next_at, deadline) - time.monotonic()
                )

    def _prompt(self) -> str:
        if not self.unique_prompts:
            return self.prompt
        return f"Request {next(self._numbers)}. {self.prompt}"

    async def _one(self, client: AsyncOpenAI, started: float) -> None:
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        ttft: float | None = None
        version: str | None = None
        tokens = 0
        streaming = False  # response headers received: errors from now on are mid-stream
        kind = OK
        message = ""
        try:
            # One deadline for the whole request: the client's own timeout is per read, so a
            # server trickling tokens forever would otherwise never time out.
            async with asyncio.timeout(self.timeout_s):
                stream = await client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": self._prompt()}],
                    max_tokens=self.max_tokens,
                    stream=True,
                    extra_body=self.extra_body,
                )
                streaming = True
                version = stream.response.headers.get(VERSION_HEADER)
                async with stream:
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            tokens += 1
                            if ttft is None:
                                ttft = time.monotonic() - started
            if tokens == 0:
                kind, message = EMPTY_STREAM, "stream ended without content tokens"
        except asyncio.CancelledError:
            self._record(Outcome(started, time.monotonic(), CANCELLED), "")
            raise
        except (TimeoutError, APITimeoutError) as e:
            # Before APIConnectionError: APITimeoutError is a subclass of it.
            kind, message = TIMEOUT, str(e) or f"no complete answer within {self.timeout_s:g}s"
        except Exception as e:
            message = f"{type(e).__name__}: {e}"
            if streaming:
                kind = STREAM_ERROR
            elif isinstance(e, APIStatusError):
                kind = f"http_{e.status_code}"
            elif isinstance(e, APIConnectionError):
                cause = e.__cause__
                kind, message = CONNECTION, f"{e} ({type(cause).__name__}: {cause})"
            else:
                kind = f"other:{type(e).__name__}"
        ended = time.monotonic()
        if kind == OK:
            self._record(Outcome(started, ended, OK, ttft, ended - started, version), "")
        else:
            self._record(Outcome(started, ended, kind), message)

    def _record(self, outcome: Outcome, message: str) -> None:
        with self._cond:
            if outcome.kind != REFUSED_AT_CAP:
                self._in_flight -= 1
            self._outcomes.append(outcome)
            if outcome.kind not in _NOT_FAILURES:
                examples = self._examples.setdefault(outcome.kind, [])
                if len(examples) < MAX_EXAMPLES_PER_KIND:
                    examples.append(message[:MAX_EXAMPLE_CHARS])
            self._cond.notify_all()
