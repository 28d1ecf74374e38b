"""LLMService operator: renders LLMService objects into KubeRay RayServices."""

__version__ = "0.1.0"
