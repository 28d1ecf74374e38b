"""Arguments of the serve_app application: the contract between the renderer and Ray.

The renderer builds these and writes them into the RayService's serveConfigV2 (``args:``); Ray
Serve hands them to ``serve_app.app:build``. Both sides import this module, so a field can never
be renamed on one side only. No Ray import here: the operator uses it without Ray installed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingArgs(_Args):
    min_replicas: int = Field(ge=0, description="Ray Serve autoscaling_config.min_replicas.")
    max_replicas: int = Field(ge=1, description="Ray Serve autoscaling_config.max_replicas.")
    target_ongoing_requests: float = Field(
        gt=0, description="Ray Serve autoscaling_config.target_ongoing_requests."
    )


class DeploymentArgs(_Args):
    num_replicas: int | None = Field(
        default=None, ge=0, description="Fixed replica count (None when autoscaling)."
    )
    autoscaling: AutoscalingArgs | None = Field(default=None, description="Autoscaling bounds.")
    max_ongoing_requests: int = Field(ge=1, description="Requests one replica accepts at once.")


class LLMAppArgs(_Args):
    """Everything the app needs to serve one LLMService's model."""

    model_id: str = Field(min_length=1, description="Served model name (OpenAI `model`).")
    model_source: str = Field(min_length=1, description="HF repo id, s3://, gs:// or a path.")
    model_version: str | None = Field(
        default=None, description="Revision; labels responses and metrics, and is the HF revision."
    )
    hf_token_env: str | None = Field(
        default=None,
        description="Env var holding the HF token (set from a Secret); never the token.",
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vLLM engine kwargs.")
    accelerator_type: str | None = Field(
        default=None, description="Ray accelerator type; None on CPU."
    )
    placement_bundles: list[dict[str, float]] = Field(
        min_length=1, description="Ray placement group bundles of one replica (one per rank)."
    )
    deployment: DeploymentArgs | None = Field(
        default=None,
        description=(
            "Replica counts and limits in the builder (None: the Serve config's `deployments` "
            "options set them, so that a count change never redeploys the replicas)."
        ),
    )
    autoscaled: bool = Field(
        default=False,
        description="Whether the deployment autoscales (when `deployment` is None).",
    )
    stream_batching_interval_ms: float | None = Field(
        default=None,
        ge=0,
        description="Window in which Ray Serve LLM batches streamed tokens (None: Ray's default).",
    )


# --- the router: the OpenAI front that splits one model's traffic between versions -------


class ArmArgs(_Args):
    """One version of the model that takes a share of the requests."""

    app: str = Field(min_length=1, description="Serve application that runs this version.")
    version: str | None = Field(default=None, description="Its model version (for headers).")
    weight: float = Field(ge=0, le=100, description="Percent of the requests it takes.")


class SplitArgs(_Args):
    """``user_config`` of the router deployment: a weight change reconfigures it in place.

    Ray Serve treats a new user_config as a lightweight update (``reconfigure`` on the running
    replicas), while any change of an application's ``args`` redeploys every deployment of
    that application. So the weights live here, and each version in its own application.
    """

    arms: list[ArmArgs] = Field(min_length=1, max_length=2, description="First: the stable one.")
    sticky_header: str | None = Field(
        default=None,
        min_length=1,
        description="Request header whose value pins a client to one version (hash of it).",
    )
    max_request_context_length: int | None = Field(
        default=None, ge=1, description="Shown in /v1/models: the stable version's max_model_len."
    )

    @model_validator(mode="after")
    def _weights(self) -> SplitArgs:
        if abs(sum(a.weight for a in self.arms) - 100.0) > 1e-6:
            raise ValueError("arms: weights must add up to 100")
        if len({a.app for a in self.arms}) != len(self.arms):
            raise ValueError("arms: each application at most once")
        return self


class RouterArgs(_Args):
    """``args`` of the router application: only what no rollout changes."""

    model_id: str = Field(min_length=1, description="Served model name (OpenAI `model`).")
    deployment_name: str = Field(
        min_length=1, description="Name of the model deployment inside each version's app."
    )
