"""The Ray Serve application every rendered RayService imports: ``serve_app.app:build``.

A thin builder over ``ray.serve.llm``: it maps the renderer's arguments (``serve_app.args``)
onto an ``LLMConfig`` and lets ``build_openai_app`` do the rest (OpenAI protocol, streaming,
vLLM engine, replica health). Ray Serve validates ``args`` against the pydantic annotation of
``build`` before calling it, so a bad serveConfigV2 fails at deploy time with field names.
"""

# No `from __future__ import annotations` here: Ray Serve validates `args` only when the
# builder's annotation is a real pydantic class, not a string.
import re
from typing import TYPE_CHECKING, Any

from serve_app.args import LLMAppArgs
from serve_app.naming import model_deployment

if TYPE_CHECKING:
    from ray.serve import Application

# A Hugging Face repo id: the only source where the model version is a hub revision.
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def engine_kwargs(args: LLMAppArgs) -> dict[str, Any]:
    kwargs = dict(args.engine_kwargs)
    if args.model_version and _HF_REPO.match(args.model_source):
        kwargs.setdefault("revision", args.model_version)
    return kwargs


# The shape a deployment starts from when the Serve config's `deployments` options carry its
# counts: Ray Serve redeploys every replica of an application whose `args` change (they are its
# code version), while new `deployments` options are applied to the running replicas. The mode
# (fixed or autoscaled) stays in the code: options cannot switch it without a conflict, and a
# switch brings up a new Ray cluster anyway.
FIXED_SHAPE: dict[str, Any] = {"num_replicas": 1}
AUTOSCALED_SHAPE: dict[str, Any] = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}


def deployment_config(args: LLMAppArgs) -> dict[str, Any]:
    dep = args.deployment
    if dep is None:
        return dict(AUTOSCALED_SHAPE if args.autoscaled else FIXED_SHAPE)
    config: dict[str, Any] = {"max_ongoing_requests": dep.max_ongoing_requests}
    if dep.autoscaling is not None:
        config["autoscaling_config"] = dep.autoscaling.model_dump()
    else:
        config["num_replicas"] = dep.num_replicas
    return config


def llm_config_kwargs(args: LLMAppArgs) -> dict[str, Any]:
    """Keyword arguments of ray.serve.llm.LLMConfig (kept Ray-free for unit tests)."""
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": args.model_id, "model_source": args.model_source},
        "engine_kwargs": engine_kwargs(args),
        "placement_group_config": {"bundles": args.placement_bundles, "strategy": "PACK"},
        "deployment_config": deployment_config(args),
    }
    if args.accelerator_type:
        kwargs["accelerator_type"] = args.accelerator_type
    if args.stream_batching_interval_ms is not None:
        kwargs["experimental_configs"] = {
            "stream_batching_interval_ms": args.stream_batching_interval_ms
        }
    return kwargs


# The OpenAI ingress only parses and forwards: it reserves no CPU, the way Ray's own ingress
# request router does ("num_cpus=0 lets the router schedule alongside the proxy on any node,
# including a resource-less head node"). Logical CPUs stay for the engines, and the rendered
# head (num-cpus 0) can still host it, so no worker pod is needed just for routing.
INGRESS_DEPLOYMENT_CONFIG: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0}}


def _direct_streaming() -> bool:
    try:  # Ray's own reading of RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING (absent before Ray 2.55)
        from ray.llm._internal.serve.constants import RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING
    except ImportError:
        return False
    return bool(RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING)


def _validated(args: LLMAppArgs) -> LLMAppArgs:
    if not isinstance(args, LLMAppArgs):  # a caller that did not validate (old Ray versions)
        return LLMAppArgs.model_validate(args)
    return args


def build_model(args: LLMAppArgs) -> "Application":
    """One version of the model, no HTTP route (``import_path: serve_app.app:build_model``).

    The router application (``serve_app.router``) sends it requests through a handle.
    """
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment
    from ray.serve.llm import LLMConfig

    args = _validated(args)
    llm_config = LLMConfig(**llm_config_kwargs(args))
    name = model_deployment(args.model_id)  # ours, so the router can rely on it
    app: Application = build_llm_deployment(llm_config, override_serve_options={"name": name})
    return app


def build(args: LLMAppArgs) -> "Application":
    """The whole OpenAI app in one application (``import_path: serve_app.app:build``).

    Rendered only with Ray Serve LLM's direct streaming, where the model's replica is the
    HTTP ingress; otherwise the router and ``build_model`` apps are.
    """
    from ray.serve.llm import LLMConfig, build_openai_app

    args = _validated(args)
    llm_config = LLMConfig(**llm_config_kwargs(args))
    builder: dict[str, Any] = {"llm_configs": [llm_config]}
    if not _direct_streaming():  # there the LLM replica is the ingress: no ingress deployment
        builder["ingress_deployment_config"] = INGRESS_DEPLOYMENT_CONFIG
    app: Application = build_openai_app(builder)
    return app
