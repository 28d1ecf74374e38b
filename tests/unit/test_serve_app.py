"""serve_app maps the renderer's arguments onto ray.serve.llm's LLMConfig (no Ray needed)."""

from __future__ import annotations

import yaml

from llmservice_operator.render import render_rayservice
from llmservice_operator.validate import parse
from serve_app.app import llm_config_kwargs
from serve_app.args import LLMAppArgs
from tests.unit.examples import MODEL_IMPORT_PATHS, example_services


def _args(case: str) -> LLMAppArgs:
    rs = render_rayservice(parse(example_services()[case]))
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    (app,) = [a for a in apps if a["import_path"] in MODEL_IMPORT_PATHS]
    return LLMAppArgs.model_validate(app["args"])


def test_gpu_service_maps_to_llm_config() -> None:
    kw = llm_config_kwargs(_args("llama-70b-a100-tp4"))
    assert kw["accelerator_type"] == "A100"
    assert kw["placement_group_config"] == {"bundles": [{"GPU": 1.0}] * 4, "strategy": "PACK"}
    assert kw["engine_kwargs"]["tensor_parallel_size"] == 4
    assert kw["engine_kwargs"]["revision"] == "main"  # HF source: the version is the revision
    # Counts come from the config's options; the builder starts from the mode's shape.
    assert kw["deployment_config"] == {"num_replicas": 1}


def test_autoscaling_and_local_sources() -> None:
    kw = llm_config_kwargs(_args("autoscaling"))
    assert kw["deployment_config"] == {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
    tiny = llm_config_kwargs(_args("tiny"))
    assert "revision" not in tiny["engine_kwargs"]  # a path's version is only a label
    assert "accelerator_type" not in tiny
    assert tiny["model_loading_config"] == {
        "model_id": "tiny-llama",
        "model_source": "/models/tiny-llama",
    }


def test_stream_batching_window_reaches_ray_only_when_set() -> None:
    gpu = llm_config_kwargs(_args("llama-8b-l4"))
    assert gpu["experimental_configs"] == {"stream_batching_interval_ms": 0.0}
    assert "experimental_configs" not in llm_config_kwargs(_args("tiny"))
