"""The OpenAI front of an LLMService: ``serve_app.router:build``, one app before the versions.

Ray Serve LLM's ``OpenAiIngress`` with one change: instead of one model deployment it knows the
model's versions (each a Serve application of its own, built by ``serve_app.app:build_model``)
and sends each request to one of them by weight (``serve_app.split``). Everything else, the
OpenAI protocol, streaming, errors and the ``model`` clients name, is the stock ingress.

Why separate applications: Ray Serve redeploys every deployment of an application when its
``args`` change, so a canary added to the serving application would restart the stable
replicas. Here a canary is an application of its own, and the weights are the router's
``user_config``, which Serve applies to the running router with ``reconfigure``.
"""

from __future__ import annotations

import contextvars
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard
from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress, make_fastapi_ingress
from ray.util import metrics

from serve_app.args import ArmArgs, RouterArgs, SplitArgs
from serve_app.measure import LATENCY_BOUNDS, Outcome, measured_stream, outcome_of
from serve_app.naming import ROUTER_DEPLOYMENT, ROUTER_METRIC_PREFIX
from serve_app.split import APP_HEADER, VERSION_HEADER, Interleaver, choose, point_of

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle
    from starlette.requests import Request
    from starlette.responses import Response

# The arm chosen for the request being handled: set around the stock request path, read where
# the stock ingress asks for the model's handle (same task, so the same context).
_ARM: contextvars.ContextVar[ArmArgs] = contextvars.ContextVar("llmservice_arm")
log = logging.getLogger("ray.serve")


class SplitIngress(OpenAiIngress):  # type: ignore[misc]  # untyped in Ray
    def __init__(self, args: dict[str, Any]) -> None:
        router = RouterArgs.model_validate(args)
        # Which copy of serve_app runs (the pods mount the operator's as a ConfigMap on their
        # PYTHONPATH, ahead of any in the image): in the replica's log, for whoever wonders.
        log.info("serve_app loaded from %s", Path(__file__).parent)
        # The stock ingress keeps one handle per model; ours are per arm (see reconfigure).
        super().__init__(
            llm_deployments={router.model_id: None},
            model_cards={router.model_id: _card(router.model_id, None)},
        )
        self._router = router
        self._split: SplitArgs | None = None
        self._deal: Interleaver | None = None
        self._handles: dict[str, DeploymentHandle] = {}
        # Ray exports these from every node's metrics agent (port 8080 on each Ray pod), summed
        # over the router's replicas by whoever reads them: the operator's canary gate.
        tags = ("app", "version")
        self._requests = metrics.Counter(
            f"{ROUTER_METRIC_PREFIX}requests",
            description="Answers by model version and outcome.",
            tag_keys=(*tags, "outcome"),
        )
        self._ttft = metrics.Histogram(
            f"{ROUTER_METRIC_PREFIX}ttft_seconds",
            description="Time to the first streamed chunk (whole answer when not streamed).",
            boundaries=list(LATENCY_BOUNDS),
            tag_keys=tags,
        )
        self._itl = metrics.Histogram(
            f"{ROUTER_METRIC_PREFIX}itl_seconds",
            description="Gaps between streamed chunks.",
            boundaries=list(LATENCY_BOUNDS),
            tag_keys=tags,
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        """New weights (Serve calls this after __init__ and on every user_config change)."""
        split = SplitArgs.model_validate(config)
        for arm in split.arms:
            if arm.app not in self._handles:
                # Not checked for existence: a version's application may still be deploying;
                # requests wait for its replicas the way they wait for any deployment's.
                handle = serve.get_deployment_handle(
                    self._router.deployment_name, app_name=arm.app, _check_exists=False
                )
                self._handles[arm.app] = handle.options(stream=True)
        self._split = split
        self._deal = Interleaver(split)  # new weights: the deal starts over
        self._model_cards[self._router.model_id] = _card(
            self._router.model_id, split.max_request_context_length
        )

    def _get_configured_serve_handle(self, model_id: str) -> DeploymentHandle:
        if model_id != self._router.model_id:
            return super()._get_configured_serve_handle(model_id)  # the stock 404 (or LoRA)
        return self._handles[_ARM.get().app]

    def _pick(self, request: Request | None) -> ArmArgs:
        assert self._split is not None and self._deal is not None, "reconfigure() runs first"
        header = self._split.sticky_header
        value = request.headers.get(header) if header and request is not None else None
        if value:
            return choose(self._split, point_of(value))
        return self._deal.next()

    async def _process_llm_request(
        self, body: Any, call_method: str, raw_request: Request | None = None
    ) -> Response:
        from starlette.responses import StreamingResponse

        arm = self._pick(raw_request)
        tags = {"app": arm.app, "version": arm.version or ""}
        started = time.monotonic()
        token = _ARM.set(arm)
        try:
            response: Response = await super()._process_llm_request(
                body, call_method=call_method, raw_request=raw_request
            )
        except BaseException as exc:
            self._count(tags, outcome_of(getattr(exc, "status_code", None)))
            raise
        finally:
            _ARM.reset(token)
        response.headers[APP_HEADER] = arm.app
        if arm.version is not None:
            response.headers[VERSION_HEADER] = arm.version
        if isinstance(response, StreamingResponse):
            response.body_iterator = measured_stream(
                response.body_iterator,
                started,
                on_first=lambda s: self._ttft.observe(s, tags=tags),
                on_gap=lambda s: self._itl.observe(s, tags=tags),
                on_end=lambda outcome: self._count(tags, outcome),
            )
        else:
            self._ttft.observe(time.monotonic() - started, tags=tags)
            self._count(tags, outcome_of(response.status_code))
        return response

    def _count(self, tags: dict[str, str], outcome: Outcome) -> None:
        self._requests.inc(1, tags={**tags, "outcome": outcome.value})


def _card(model_id: str, context_length: int | None) -> ModelCard:
    return ModelCard(
        id=model_id,
        object="model",
        owned_by="llmservice",
        permission=[],
        metadata={
            "model_id": model_id,
            "input_modality": "text",
            "max_request_context_length": context_length,
        },
    )


def build(args: RouterArgs) -> Application:
    """Ray Serve application builder (``import_path: serve_app.router:build``)."""
    if not isinstance(args, RouterArgs):
        args = RouterArgs.model_validate(args)
    options = OpenAiIngress.get_deployment_options()
    # Only parses and forwards: no CPU reserved, as Ray's own ingress router (serve_app.app).
    options["ray_actor_options"] = {"num_cpus": 0}
    ingress = make_fastapi_ingress(SplitIngress)
    app: Application = serve.deployment(ingress, name=ROUTER_DEPLOYMENT, **options).bind(
        args.model_dump(mode="json")
    )
    return app
