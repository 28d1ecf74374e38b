"""Names Ray Serve gives what ``serve_app`` deploys, for the renderer and for readers of Serve's
REST API.

``ray.serve.llm`` names the model's deployment ``LLMServer:<model id>`` (its server class plus
the model id); the operator counts that deployment's RUNNING replicas as the model's replicas.
Each version of the model runs as an application of its own (``version_app``), behind one
router application that owns the HTTP route.
"""

from typing import Final

LLM_DEPLOYMENT_PREFIX: Final = "LLMServer:"
# The application that owns the route: the router, or (direct streaming) the whole model.
ROUTER_APP: Final = "llm"
ROUTER_DEPLOYMENT: Final = "OpenAIRouter"
# What that application imports under direct streaming (the whole OpenAI app, one version).
DIRECT_APP_IMPORT_PATH: Final = "serve_app.app:build"
# The router's own metrics (Ray adds its "ray_" prefix when it exports them).
ROUTER_METRIC_PREFIX: Final = "llmservice_router_"
# Two slots, so that a canary never shares an application with the version it may replace.
SLOTS: Final = ("a", "b")


def version_app(slot: str) -> str:
    """The Serve application of the model version in ``slot``."""
    return f"{ROUTER_APP}-{slot}"


def model_deployment(model_id: str) -> str:
    """The model deployment's name in a version's application (Ray's own spelling of it)."""
    return LLM_DEPLOYMENT_PREFIX + model_id.replace("/", "--").replace(".", "_")
