"""Names Ray Serve gives what ``serve_app.app:build`` deploys, for readers of Serve's REST API.

``ray.serve.llm`` names the model's deployment ``LLMServer:<model id>`` (its server class plus
the model id); the operator counts that deployment's RUNNING replicas as the model's replicas.
"""

from typing import Final

LLM_DEPLOYMENT_PREFIX: Final = "LLMServer:"
