"""The LLMService API: typed models (the single source) and the CRD generated from them."""

from llmservice_operator.api.models import (
    AutoscalingSpec,
    EngineSpec,
    GPUProfile,
    LLMService,
    LLMServiceSpec,
    LLMServiceStatus,
    ModelSpec,
    NodePool,
    RolloutStrategy,
)

__all__ = [
    "AutoscalingSpec",
    "EngineSpec",
    "GPUProfile",
    "LLMService",
    "LLMServiceSpec",
    "LLMServiceStatus",
    "ModelSpec",
    "NodePool",
    "RolloutStrategy",
]
