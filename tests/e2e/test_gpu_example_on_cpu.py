"""The example a GPU user applies first (manifests/examples/llama-8b-l4.yaml), its GPU fields
stripped (tests/support/examples.py), serves on the real-Ray ground through the code path GPU
pods take: no project image, serve_app from the operator's ConfigMap, first on PYTHONPATH.

Its own namespace and LLMService (`llama-8b`), created and removed by this module."""

from __future__ import annotations

import time

import pytest

from llmservice_operator.render import render
from llmservice_operator.render.code import CODE_ROOT, packaged
from llmservice_operator.validate import parse
from tests.cluster.objects import condition
from tests.e2e.conftest import Ground
from tests.support.examples import EXAMPLES, code_delivery, load, strip_gpu, worker_gpus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

CONVERGE_S = 600.0  # one vLLM replica start on a contended 2-core machine, with margin
GPU_EXAMPLE = load(EXAMPLES / "llama-8b-l4.yaml")
MANIFEST = strip_gpu(GPU_EXAMPLE)  # the module's LLMService (conftest's ground_world)


@pytest.mark.compat
def test_a_gpu_example_without_its_gpus_serves_from_the_delivered_code(
    ground_world: Ground,
) -> None:
    g, w = ground_world, ground_world.world
    began = time.monotonic()
    g.create()
    svc = w.wait("the stripped example settled", w.settled, CONVERGE_S)
    answer = g.chat()
    assert condition(svc, "Ready")["status"] == "True"
    assert svc["status"]["readyReplicas"] == 1

    # What runs is what the GPU example renders, minus the GPUs: the same code delivery.
    live = w.rayservice()
    assert live is not None
    gpu = dict(GPU_EXAMPLE, metadata={**GPU_EXAMPLE["metadata"], "namespace": w.namespace})
    rendered = render(parse(gpu))[0]
    live_delivery, gpu_delivery = code_delivery(live), code_delivery(rendered)
    assert live_delivery[0] == gpu_delivery[0]  # head
    assert live_delivery[1] == {**gpu_delivery[1], "group": live_delivery[1]["group"]}  # workers
    assert worker_gpus(rendered) == ["1"] and worker_gpus(live) == ["0"]  # the part stripped

    # ...and the router replica imported serve_app from the mounted copy, not this checkout.
    code = packaged()
    assert w.core.read_namespaced_config_map(code.configmap_name, w.namespace).data == dict(
        code.files
    )
    loaded_from = w.wait("the router's log line", g.serve_app_loaded_from, 120)
    assert loaded_from == {f"{CODE_ROOT}/serve_app"}
    g.record(
        "GPU example, GPU fields stripped",
        sent=1,
        failed=0,
        converge_s=round(time.monotonic() - began, 1),
        status_seen=f"Ready, answered {answer!r}; serve_app from {CODE_ROOT}/serve_app",
    )
