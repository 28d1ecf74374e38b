"""Arguments of the serve_app application: the contract between the renderer and Ray.

The renderer builds these and writes them into the RayService's serveConfigV2 (``args:``); Ray
Serve hands them to ``serve_app.app:build``. Both sides import this module, so a field can never
be renamed on one side only. No Ray import here: the operator uses it without Ray installed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    deployment: DeploymentArgs = Field(description="Ray Serve deployment settings.")
    stream_batching_interval_ms: float | None = Field(
        default=None,
        ge=0,
        description="Window in which Ray Serve LLM batches streamed tokens (None: Ray's default).",
    )
