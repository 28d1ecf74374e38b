"""Names shared by the API, the renderer and the operator: one place, so they never drift."""

from typing import Final

GROUP: Final = "llmservice.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "LLMService"
PLURAL: Final = "llmservices"
SINGULAR: Final = "llmservice"
SHORT_NAMES: Final = ("llmsvc",)

RAY_API_VERSION: Final = "ray.io/v1"

FIELD_MANAGER: Final = "llmservice-operator"
# The RayClusters' worker-group sizes are ours too (KubeRay does not pass them on from the
# RayService): a field manager of their own, so `kubectl get --show-managed-fields` tells why.
REPLICAS_FIELD_MANAGER: Final = "llmservice-operator-replicas"

# Labels the renderer puts on every child (Kubernetes recommended labels plus our own key).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_LLMSERVICE: Final = f"{GROUP}/name"
LABEL_MODEL_VERSION: Final = f"{GROUP}/model-version"
LABEL_POOL: Final = f"{GROUP}/pool"
# The digest of the serve_app code a pod mounts (render/code.py).
LABEL_SERVE_APP: Final = f"{GROUP}/serve-app"

ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"

# Ray's ports as KubeRay sets them (ray-operator/controllers/ray/utils/constant.go, Default*Port;
# tests/cluster/test_security.py checks them against the module): Serve's HTTP port (KubeRay's
# serve Service exposes it), the head's dashboard (Serve's REST API) and the metrics exporter.
SERVE_PORT: Final = 8000
DASHBOARD_PORT: Final = 8265
METRICS_PORT: Final = 8080
