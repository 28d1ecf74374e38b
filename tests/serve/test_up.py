"""`llmservice up`: serves an LLMService locally, exits 0 on SIGINT, leaves no Ray behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.serve.conftest import OFFLINE_ENV, REPO_ROOT

pytestmark = pytest.mark.serve
START_TIMEOUT_S = 900.0


def _get_json(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=120) as resp:
        parsed: dict[str, object] = json.loads(resp.read())
        return parsed


def test_up_serves_and_stops_cleanly(tiny_model_dir: Path, tmp_path: Path) -> None:
    import psutil

    log = tmp_path / "up.log"
    cmd = [
        sys.executable, "-m", "llmservice_operator.cli", "up",
        "-f", str(REPO_ROOT / "manifests" / "examples" / "tiny.yaml"),
        "--model-source", str(tiny_model_dir),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        base_url = ""
        while not base_url:
            text = log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("OpenAI base URL: "):
                    base_url = line.split(": ", 1)[1].strip()
            assert proc.poll() is None, f"`up` exited early:\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"`up` not serving in time:\n{text[-3000:]}"
            time.sleep(2)

        models = _get_json(f"{base_url}/models")
        assert [m["id"] for m in models["data"]] == ["tiny-llama"]  # type: ignore[index,union-attr]
        chat = _get_json(
            f"{base_url}/chat/completions",
            {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}],
             "max_tokens": 8, "min_tokens": 2},
        )  # fmt: skip
        assert chat["choices"][0]["message"]["content"]  # type: ignore[index]

        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert ray_procs, "no Ray processes under `up`?"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        _, alive = psutil.wait_procs(ray_procs, timeout=60)
        assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
