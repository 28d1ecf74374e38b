"""Throughput during a canary beside the steady state, on CPU: one local Ray, our serve_app.

    .venv/bin/python -m bench.canary_bench [--concurrency 8] [--requests 64] [--rounds 3]

Steady: the tiny example as rendered (the router and one version, one replica). Canary: the
rendered config of a canary at 50 % (the router dealing requests between two versions, each one
replica: the surge of one replica a canary costs). Measured A-B-A (steady, canary, steady) since
a canary's app takes a minute to start and cannot be interleaved request by request; the ratio
is the canary's median over the steady medians of both sides. On two shared cores the canary's
second engine competes with the first for the same CPUs, so this shows the router's and the
split's own cost, not a real GPU node's extra capacity. Not a test; results/canary-bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.serve_bench import ENV, RESULTS, ROOT, _free_port, measure

MODEL = "tiny-llama"


def _example(version: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny.yaml").read_text())
    doc["spec"]["engine"].update(maxNumSeqs=32)
    doc["spec"]["maxOngoingRequests"] = 64
    doc["spec"]["model"]["version"] = version
    doc["spec"]["rollout"] = {"strategy": "Canary", "canary": {"steps": [50, 100]}}
    return doc


def _configs() -> tuple[str, str]:
    """serveConfigV2 of the steady state (v1) and of a canary of v2 at 50 %."""
    from llmservice_operator.canary import wanted
    from llmservice_operator.observe import live_arms
    from llmservice_operator.plan import plan
    from llmservice_operator.render import Layout, render_rayservice
    from llmservice_operator.rollout import View, decide
    from llmservice_operator.validate import parse

    old = parse(_example("v1"))
    steady = render_rayservice(old)
    arms, _ = live_arms(steady)
    new = parse(_example("v2"))
    started = decide(
        new.spec, wanted(new, plan(new.spec)), View(arms, None, None, {}), None, None, 0.0
    )
    assert started.layout is not None
    stable, canary = started.layout.arms
    at_50 = (dataclasses.replace(stable, weight=50.0), dataclasses.replace(canary, weight=50.0))
    rendered = render_rayservice(new, Layout(at_50, started.layout.sticky_header))
    return steady["spec"]["serveConfigV2"], rendered["spec"]["serveConfigV2"]


def _deploy(config: str, model_dir: Path) -> None:
    from ray import serve

    from serve_app.local import deploy_config, local_apps

    apps = local_apps(config, model_source=str(model_dir))
    deploy_config(apps)
    names = {a["name"] for a in apps}
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = serve.status().applications
        if (
            names <= set(status)
            and all(
                str(getattr(status[n].status, "value", status[n].status)) == "RUNNING"
                for n in names
            )
            and set(status) <= names
        ):
            return
        time.sleep(2)
    raise TimeoutError(f"applications {sorted(names)} not RUNNING in 900 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    import os

    import ray
    from ray import serve

    from tests.support.tinymodel import ensure_tiny_model

    model_dir = ensure_tiny_model(ROOT / ".cache" / "tiny-model")
    os.environ.update(ENV)
    port = _free_port()
    ray.init(
        address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp"), _node_ip_address="127.0.0.1",
    )  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/v1"
    steady, canary = _configs()
    runs: dict[str, list[dict[str, float]]] = {"steady": [], "canary": []}
    try:
        for phase, config in (("steady", steady), ("canary", canary), ("steady", steady)):
            _deploy(config, model_dir)
            for _ in range(args.rounds):
                m = asyncio.run(measure(url, args.concurrency, args.requests, model=MODEL))
                runs[phase].append(m)
                print(json.dumps({"phase": phase, **m}), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    med = {p: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for p, ms in runs.items()}
    ratio = {
        "out_tok_s": med["canary"]["out_tok_s"] / med["steady"]["out_tok_s"],
        "ttft_p50_ms_delta": med["canary"]["ttft_p50_ms"] - med["steady"]["ttft_p50_ms"],
    }
    results = {"concurrency": args.concurrency, "rounds": args.rounds, "median": med,
               "canary_vs_steady": ratio}  # fmt: skip
    (RESULTS / "canary-bench.json").write_text(json.dumps(results, indent=2))
    for phase, m in med.items():
        print(f"{phase:>7}: {m['out_tok_s']:.1f} tok/s, TTFT p50 {m['ttft_p50_ms']:.1f} ms, "
              f"ITL p50 {m['itl_p50_ms']:.1f} ms")  # fmt: skip
    print(f"canary/steady: {ratio['out_tok_s']:.2f}x out tok/s, "
          f"TTFT p50 {ratio['ttft_p50_ms_delta']:+.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
