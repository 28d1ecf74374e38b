"""tests/support/examples.py: every GPU example, its GPU fields stripped, is a valid CPU
LLMService whose pods get serve_app exactly as the GPU ones do (the e2e ground serves one)."""

from __future__ import annotations

import pytest

from llmservice_operator.render import render
from llmservice_operator.render.code import CODE_ROOT, packaged
from llmservice_operator.validate import parse
from tests.support.examples import EXAMPLES, code_delivery, load, strip_gpu, worker_gpus

GPU_EXAMPLES = sorted(
    p.name for p in EXAMPLES.glob("*.yaml") if "gpu" in (load(p).get("spec") or {})
)


def test_the_gpu_examples_are_found() -> None:
    assert "llama-8b-l4.yaml" in GPU_EXAMPLES and len(GPU_EXAMPLES) >= 4, GPU_EXAMPLES


@pytest.mark.parametrize("name", GPU_EXAMPLES)
def test_a_stripped_gpu_example_is_a_cpu_service_with_the_same_code_delivery(name: str) -> None:
    example = load(EXAMPLES / name)
    stripped = strip_gpu(example)
    assert "gpu" not in stripped["spec"] and "gpu" in example["spec"]
    assert stripped["metadata"] == example["metadata"]
    cpu, gpu = parse(stripped), parse(example)  # both valid
    code = packaged()
    cpu_rs, gpu_rs = render(cpu, code=code)[0], render(gpu, code=code)[0]
    assert set(worker_gpus(cpu_rs)) == {"0"} and set(worker_gpus(gpu_rs)) != {"0"}
    delivery = code_delivery(cpu_rs)
    # The same mechanism, group by group (the CPU render has one worker group; pools may add more).
    assert delivery[0] == code_delivery(gpu_rs)[0]
    assert [d["volumes"] for d in delivery[1:]] == [code_delivery(gpu_rs)[1]["volumes"]]
    for d in delivery:
        assert d["label"] == code.digest and d["volumes"][0]["configMap"]["name"] == (
            code.configmap_name
        )
        for ct in d["containers"]:
            assert (
                ct["mounts"]
                == [{"name": "serve-app", "mountPath": f"{CODE_ROOT}/serve_app", "readOnly": True}]
                and ct["PYTHONPATH"].split(":")[0] == CODE_ROOT
            )
