"""tests.support.loadgen against a fake OpenAI-compatible SSE server on 127.0.0.1 (no Ray).

The fake answers every chat completion the way its current `mode` says, so each test can
assert exact counts and failure kinds: the server counts what it received, and since the
generator never retries, every sent request that was not refused reached it exactly once.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.loadgen import LoadGenerator, LoadReport

# Random 127.0.0.1 ports and short waits keep the whole file well under 10 s.
FAST_RATE = 50.0
WAIT_S = 5.0


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping ("hang") must not block teardown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ok"
        self.hang_s = 2.0
        self.hits = 0
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 with chunked bodies: only then is a dropped connection distinguishable from
    # the end of the stream (an HTTP/1.0 body simply ends when the socket closes).
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._send_chunk(_chunk({"role": "assistant", "content": ""}))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with self.server.lock:
            self.server.hits += 1
            self.server.prompts.append(body["messages"][-1]["content"])
            mode = self.server.mode
        if mode == "503":
            body = json.dumps({"error": {"message": "no healthy replicas", "code": 503}})
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
            return
        if mode == "hang":  # nothing at all until the client gives up
            time.sleep(self.server.hang_s)
            self.close_connection = True
            return
        self._start_stream()
        if mode == "drop":
            self._send_chunk(_chunk({"content": "partial"}))
            # Close without the terminating zero-length chunk: an incomplete body.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "stall":  # headers and a token, then silence
            self._send_chunk(_chunk({"content": "one"}))
            time.sleep(self.server.hang_s)
            self.close_connection = True
            return
        if mode == "ok":
            for word in ("one", " two", " three"):
                self._send_chunk(_chunk({"content": word}))
        self._send_chunk(_chunk({}, finish="stop" if mode == "ok" else "length"))
        self._send_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _gen(server: FakeServer, **kw: Any) -> LoadGenerator:
    kw.setdefault("rate_per_s", FAST_RATE)
    kw.setdefault("timeout_s", 5.0)
    return LoadGenerator(server.base_url, "fake", **kw)


def _balanced(r: LoadReport) -> None:
    assert not r.running and r.in_flight == 0
    assert r.sent == r.succeeded + r.failed + r.cancelled, r.summary()
    assert r.sent == len(r.outcomes)


def test_ok_counts_successes_and_latencies(server: FakeServer) -> None:
    with _gen(server) as gen:
        live = gen.wait_for_successes(10, timeout=WAIT_S)
        assert live.running and live.succeeded >= 10
    r = gen.report
    _balanced(r)
    assert r.failed == 0 and r.failed_by_kind == {} and r.examples == {}
    assert r.cancelled == 0 and r.succeeded == r.sent == server.hits
    assert r.ttft_p50_s is not None and r.ttft_p95_s is not None
    assert r.latency_p50_s is not None and r.latency_p95_s is not None
    assert 0 < r.ttft_p50_s <= r.ttft_p95_s <= r.latency_p95_s
    assert r.latency_p50_s <= r.latency_p95_s
    assert f"ok {r.succeeded}, failed 0" in r.summary() and "\n" not in r.summary()


def test_unique_prompts_share_no_prefix_and_keep_the_prompt(server: FakeServer) -> None:
    with _gen(server, prompt="Count.", unique_prompts=True) as gen:
        gen.wait_for_successes(5, timeout=WAIT_S)
    with server.lock:
        prompts = list(server.prompts)
    assert len(set(prompts)) == len(prompts) >= 5
    assert all(p.endswith(" Count.") for p in prompts)
    assert len({p.split()[1] for p in prompts}) == len(prompts)  # they differ from the start


def test_prompts_repeat_by_default(server: FakeServer) -> None:
    with _gen(server, prompt="Count.") as gen:
        gen.wait_for_successes(3, timeout=WAIT_S)
    with server.lock:
        assert set(server.prompts) == {"Count."}


def _run_until_failures(server: FakeServer, n: int, **kw: Any) -> LoadReport:
    gen = _gen(server, **kw).start()
    try:
        gen.wait_until(lambda r: r.failed >= n, timeout=WAIT_S)
    finally:
        report = gen.stop(drain_s=5.0)
    _balanced(report)
    assert report.succeeded == 0 and report.cancelled == 0
    assert report.sent == report.failed == server.hits  # each reached it once: no retries
    return report


def test_http_503_is_its_own_kind_and_never_retried(server: FakeServer) -> None:
    server.mode = "503"
    r = _run_until_failures(server, 5)
    assert r.failed_by_kind == {"http_503": r.failed}
    assert len(r.examples["http_503"]) == 3  # the first few, not all
    assert "no healthy replicas" in r.examples["http_503"][0]
    assert r.ttft_p50_s is None and r.latency_p95_s is None
    assert "http_503=" in r.summary()


def test_connection_dropped_mid_stream_is_a_stream_error(server: FakeServer) -> None:
    server.mode = "drop"
    r = _run_until_failures(server, 3)
    assert r.failed_by_kind == {"stream_error": r.failed}


def test_stream_without_content_is_empty_stream(server: FakeServer) -> None:
    server.mode = "empty"
    r = _run_until_failures(server, 3)
    assert r.failed_by_kind == {"empty_stream": r.failed}


def test_nothing_listening_is_a_connection_failure() -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = LoadGenerator(f"http://127.0.0.1:{port}/v1", "fake", rate_per_s=FAST_RATE).start()
    try:
        gen.wait_until(lambda r: r.failed >= 3, timeout=WAIT_S)
    finally:
        r = gen.stop(drain_s=5.0)
    _balanced(r)
    assert r.failed_by_kind == {"connection": r.failed} and r.succeeded == 0
    # The cause is kept, not just openai's bare "Connection error.".
    assert "ConnectError" in r.examples["connection"][0]


@pytest.mark.parametrize("mode", ["hang", "stall"])
def test_slow_answers_time_out(server: FakeServer, mode: str) -> None:
    # "hang" times out waiting for headers, "stall" mid-stream: both are timeouts.
    server.mode, server.hang_s = mode, 1.0
    r = _run_until_failures(server, 2, rate_per_s=10.0, timeout_s=0.3)
    assert r.failed_by_kind == {"timeout": r.failed}


def test_in_flight_cap_refuses_and_counts(server: FakeServer) -> None:
    server.mode, server.hang_s = "hang", 0.5
    gen = _gen(server, max_in_flight=2, timeout_s=0.3).start()
    try:
        gen.wait_until(lambda r: r.failed_by_kind.get("refused_at_cap", 0) >= 3, timeout=WAIT_S)
    finally:
        r = gen.stop(drain_s=5.0)
    _balanced(r)
    refused = r.failed_by_kind["refused_at_cap"]
    assert set(r.failed_by_kind) <= {"refused_at_cap", "timeout"}
    assert r.sent - refused == server.hits  # refused requests never reached the server
    assert r.examples["refused_at_cap"][0] == "2 in flight"


def test_stops_by_itself_after_max_duration(server: FakeServer) -> None:
    gen = _gen(server, rate_per_s=20.0, max_duration_s=0.3).start()
    with pytest.raises(RuntimeError, match="stopped first"):
        gen.wait_for_successes(1000, timeout=WAIT_S)  # fails as soon as it stopped
    r = gen.stop()
    _balanced(r)
    assert r.hit_max_duration and r.failed == 0
    assert 4 <= r.sent <= 8  # 0.3 s at 20/s: about 6, whatever the host's jitter


def test_wait_times_out_with_the_summary(server: FakeServer) -> None:
    server.mode = "503"
    with _gen(server) as gen, pytest.raises(TimeoutError, match=r"http_503=\d+"):
        gen.wait_for_successes(1, timeout=0.3)


def test_failures_between_brackets_an_outage(server: FakeServer) -> None:
    with _gen(server) as gen:
        gen.wait_for_successes(3, timeout=WAIT_S)
        t0 = time.monotonic()
        server.mode = "503"
        gen.wait_until(lambda r: r.failed >= 4, timeout=WAIT_S)
        flipped = time.monotonic()
        server.mode = "ok"
        gen.wait_for_successes(3, timeout=WAIT_S)
    r = gen.report  # drained: every request sent has its outcome
    _balanced(r)
    assert r.failed >= 4
    # The outage brackets the failures: none ended before it began, and every one was a request
    # sent before it ended (on a loaded machine its 503 may arrive after later successes).
    t1 = max(o.ended_at for o in r.outcomes if o.kind == "http_503")
    assert r.failures_between(t0, t1) == {"http_503": r.failed} == r.failed_by_kind
    assert r.failures_between(r.started_at, t0) == {}
    assert all(o.started_at <= flipped for o in r.outcomes if o.kind == "http_503")


def test_stop_cancels_what_drain_does_not_cover(server: FakeServer) -> None:
    server.mode, server.hang_s = "hang", 2.0
    gen = _gen(server, rate_per_s=20.0, timeout_s=5.0).start()
    gen.wait_until(lambda r: r.in_flight >= 2, timeout=WAIT_S)
    r = gen.stop(drain_s=0.1)
    _balanced(r)
    assert r.cancelled == r.sent >= 2 and r.failed == 0  # cancelled is not a failure
    assert gen.stop() is r  # idempotent
    with pytest.raises(RuntimeError, match="twice"):
        gen.start()
