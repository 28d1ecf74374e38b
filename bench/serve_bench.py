"""Serving benchmark on CPU: the same tiny model, prompts and client against three servers.

    .venv/bin/python -m bench.serve_bench [--concurrency 1 8 32] [--requests 32] [--rounds 2]

(a) vLLM's own OpenAI server, (b) stock ``ray.serve.llm.build_openai_app``, (c) our serve_app
deployed from the renderer's serveConfigV2 for manifests/examples/tiny.yaml with the fast path on
(``fast``: Ray Serve's HAProxy mode and direct streaming in spec.env, served by ``llmservice up`` in
its own Ray, since HAProxy mode is a switch of the whole Ray cluster), and for comparison the same
serve_app without it (``ours``: Serve's proxy actor and our router, on (b)'s Ray). Same engine
settings for all. Rounds are interleaved (a, b, c, ... a, b, c, ...) so that one noisy stretch of
a shared 2-core machine cannot decide a ratio; each figure is the median over rounds. Writes
results/serve-bench.json and results/serve-bench.png (results/ is ignored by git). Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.haproxy import FAST_PATH_ENV, METRICS_PORT, app_responses_2xx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
MODEL = "tiny-llama"
PROMPT = " ".join(f"word{(i * 7919) % 500}" for i in range(64))
MAX_TOKENS = 32
ENGINE = {"enforce_eager": True, "max_model_len": 512, "max_num_seqs": 32, "dtype": "float32"}
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 900) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with opener.open(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not answering within {timeout:.0f}s")


async def _one(
    client: Any, res: list[tuple[float, int, list[float]]], model: str, prompt: str, max_tokens: int
) -> None:
    t0 = time.perf_counter()
    first = last = None
    itl: list[float] = []
    tokens = 0
    stream = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    async for chunk in stream:
        now = time.perf_counter()
        if chunk.choices:
            if first is None:
                first = now
            elif last is not None:
                itl.append(now - last)
            last = now
        if getattr(chunk, "usage", None):
            tokens = chunk.usage.completion_tokens
    res.append(((first or now) - t0, tokens, itl))


async def measure(
    base_url: str,
    concurrency: int,
    requests: int,
    *,
    model: str = MODEL,
    prompt: str = PROMPT,
    max_tokens: int = MAX_TOKENS,
    warmup: int = 4,
) -> dict[str, float]:
    """Stream `requests` completions, `concurrency` at a time; throughput and latency figures."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", timeout=600, max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    res: list[tuple[float, int, list[float]]] = []

    async def worker(into: list[tuple[float, int, list[float]]]) -> None:
        async with sem:
            await _one(client, into, model, prompt, max_tokens)

    await asyncio.gather(*[worker([]) for _ in range(min(concurrency, warmup))])
    t0 = time.perf_counter()
    await asyncio.gather(*[worker(res) for _ in range(requests)])
    elapsed = time.perf_counter() - t0
    await client.close()
    ttft = sorted(r[0] for r in res)
    itl = sorted(x for r in res for x in r[2])
    return {
        "out_tok_s": sum(r[1] for r in res) / elapsed,
        "ttft_p50_ms": ttft[len(ttft) // 2] * 1000,
        "ttft_p99_ms": ttft[max(0, int(len(ttft) * 0.99) - 1)] * 1000,
        "itl_p50_ms": itl[len(itl) // 2] * 1000 if itl else float("nan"),
    }


def _start_vllm(model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "32", "--dtype", "float32",
    ]  # fmt: skip
    log = (RESULTS / "vllm-server.log").open("wb")
    return subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **ENV},
        start_new_session=True,
    )


def _example() -> dict[str, Any]:
    """tiny.yaml with the engine settings the other systems get."""
    example: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests" / "examples" / "tiny.yaml").read_text()
    )
    example["spec"]["engine"].update(maxNumSeqs=32)
    example["spec"]["maxOngoingRequests"] = 64
    return example


def _start_fast(model_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """`llmservice up` of tiny.yaml with the fast path's env, in its own Ray (and session)."""
    example = _example()
    example["spec"]["env"] = [
        *example["spec"].get("env", []),
        *({"name": k, "value": v} for k, v in FAST_PATH_ENV.items()),
    ]
    manifest = RESULTS / "fast-path.yaml"
    manifest.write_text(yaml.safe_dump(example))
    log = RESULTS / "fast-path.log"
    cli = Path(sys.executable).parent / "llmservice"
    proc = subprocess.Popen(
        [str(cli), "up", "-f", str(manifest), "--model-source", str(model_dir),
         "--port", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **ENV},
        start_new_session=True,
    )  # fmt: skip
    return proc, log


def _haproxy_answered(log: Path) -> int:
    """2xx responses of the Serve-app backends of the one HAProxy on this machine (Ray Serve's
    exporter, port 9101): the proof that the fast path's requests went through it."""
    # No proxy: the exporter is on loopback (as in _wait_http).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    try:
        with opener.open(url, timeout=10) as resp:
            text = resp.read().decode()
    except OSError as exc:
        raise RuntimeError(f"no HAProxy exporter at {url} ({exc}); see {log}") from exc
    return app_responses_2xx(text)


def _serve_apps(model_dir: Path, port: int) -> tuple[str, str]:
    """Stock build_openai_app under /stock and our serve_app under / on one local Ray."""
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from llmservice_operator.render import render_rayservice
    from llmservice_operator.validate import parse
    from serve_app.local import deploy_config, local_apps

    os.environ.update(ENV)
    ray.init(
        address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"), _node_ip_address="127.0.0.1",
    )  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    stock = build_openai_app(
        {
            "llm_configs": [
                LLMConfig(
                    model_loading_config={"model_id": MODEL, "model_source": str(model_dir)},
                    placement_group_config={"bundles": [{"CPU": 1}]},
                    engine_kwargs=ENGINE,
                    deployment_config={"num_replicas": 1, "max_ongoing_requests": 64},
                )
            ]
        }
    )
    rendered = render_rayservice(parse(_example()))
    # Ours exactly as KubeRay deploys it: the rendered config, through Serve's declarative API.
    apps = local_apps(rendered["spec"]["serveConfigV2"], model_source=str(model_dir))
    deploy_config(apps)
    serve.run_many(
        [serve.RunTarget(target=stock, name="stock", route_prefix="/stock")],
        wait_for_applications_running=True,
    )
    while any(
        str(getattr(a.status, "value", a.status)) != "RUNNING"
        for name, a in serve.status().applications.items()
        if name in {app["name"] for app in apps}
    ) or not {app["name"] for app in apps} <= set(serve.status().applications):
        time.sleep(2)
    return f"http://127.0.0.1:{port}/stock/v1", f"http://127.0.0.1:{port}/v1"


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for system, rows in results["systems"].items():
        conc = [r["concurrency"] for r in rows]
        axes[0].plot(conc, [r["out_tok_s"] for r in rows], marker="o", label=system)
        axes[1].plot(conc, [r["ttft_p50_ms"] for r in rows], marker="o", label=system)
    axes[0].set(xscale="log", xlabel="concurrency", ylabel="output tok/s", title="Throughput")
    axes[1].set(xscale="log", xlabel="concurrency", ylabel="ms", title="TTFT p50")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    from tests.support.tinymodel import ensure_tiny_model

    model_dir = ensure_tiny_model(ROOT / ".cache" / "tiny-model")
    vllm_port, serve_port, fast_port = _free_port(), _free_port(), _free_port()
    vllm = _start_vllm(model_dir, vllm_port)
    fast, fast_log = _start_fast(model_dir, fast_port)
    try:
        stock_url, ours_url = _serve_apps(model_dir, serve_port)
        _wait_http(f"http://127.0.0.1:{vllm_port}/v1/models", vllm)
        _wait_http(f"http://127.0.0.1:{fast_port}/v1/models", fast)
        answered_before = _haproxy_answered(fast_log)
        fast_sent = 0
        urls = {
            "vllm": f"http://127.0.0.1:{vllm_port}/v1",
            "stock": stock_url,
            "fast": f"http://127.0.0.1:{fast_port}/v1",
            "ours": ours_url,
        }
        raw: dict[str, dict[int, list[dict[str, float]]]] = {s: {} for s in urls}
        for conc in args.concurrency:
            for _ in range(args.rounds):
                for system, url in urls.items():  # interleaved
                    n = max(args.requests, conc * 2)
                    fast_sent += n if system == "fast" else 0
                    m = asyncio.run(measure(url, conc, n))
                    raw[system].setdefault(conc, []).append(m)
                    print(json.dumps({"system": system, "concurrency": conc, **m}), flush=True)
        # The fast path's figures are HAProxy's only if HAProxy answered every one of them.
        answered = _haproxy_answered(fast_log) - answered_before
        if answered < fast_sent:
            raise RuntimeError(f"HAProxy answered {answered} of {fast_sent} fast-path requests")
    finally:
        os.killpg(vllm.pid, signal.SIGTERM)
        fast.send_signal(signal.SIGTERM)  # `up` shuts its Serve and Ray down on SIGTERM
        try:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        except Exception as exc:  # best effort: report, don't mask the benchmark's own error
            print(f"shutdown: {exc}", file=sys.stderr)

    systems = {
        s: [
            {"concurrency": c, **{k: statistics.median(m[k] for m in ms) for k in ms[0]}}
            for c, ms in sorted(by_conc.items())
        ]
        for s, by_conc in raw.items()
    }
    ratios = [
        {
            "concurrency": f["concurrency"],
            "fast_vs_vllm_tok_s": f["out_tok_s"] / v["out_tok_s"],
            "fast_vs_stock_tok_s": f["out_tok_s"] / s["out_tok_s"],
            "fast_minus_vllm_ttft_p50_ms": f["ttft_p50_ms"] - v["ttft_p50_ms"],
            "ours_vs_vllm_tok_s": o["out_tok_s"] / v["out_tok_s"],
            "ours_vs_stock_tok_s": o["out_tok_s"] / s["out_tok_s"],
            "ours_minus_vllm_ttft_p50_ms": o["ttft_p50_ms"] - v["ttft_p50_ms"],
        }
        for f, o, v, s in zip(
            systems["fast"], systems["ours"], systems["vllm"], systems["stock"], strict=True
        )
    ]
    results = {
        "rounds": args.rounds,
        "systems": systems,
        "ratios": ratios,
        "fast_path_answered_by_haproxy": f"{answered} of {fast_sent}",
    }
    (RESULTS / "serve-bench.json").write_text(json.dumps(results, indent=2))
    plotted = plot(results, RESULTS / "serve-bench.png")
    print(
        f"\n{'conc':>5} {'system':>6} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8}"
    )
    for system, rows in systems.items():
        for r in rows:
            print(
                f"{r['concurrency']:>5} {system:>6} {r['out_tok_s']:>8.1f} "
                f"{r['ttft_p50_ms']:>7.1f}ms {r['ttft_p99_ms']:>7.1f}ms {r['itl_p50_ms']:>6.1f}ms"
            )
    for r in ratios:
        print(
            f"conc {r['concurrency']}: fast/vllm {r['fast_vs_vllm_tok_s']:.2f}x, "
            f"fast/stock {r['fast_vs_stock_tok_s']:.2f}x, "
            f"TTFT p50 {r['fast_minus_vllm_ttft_p50_ms']:+.1f} ms vs vllm; "
            f"ours (proxy + router) /vllm {r['ours_vs_vllm_tok_s']:.2f}x, "
            f"/stock {r['ours_vs_stock_tok_s']:.2f}x"
        )
    print(f"results: {RESULTS / 'serve-bench.json'}" + (" and serve-bench.png" if plotted else ""))


if __name__ == "__main__":
    main()
