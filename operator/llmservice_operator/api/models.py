"""The LLMService API, defined once.

These pydantic models are the single source of truth: the CRD's OpenAPI schema is generated
from them (``api/crd.py``), the operator and the CLI parse objects with them, and every field's
description here becomes the CRD field doc that ``kubectl explain`` shows.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# maxOngoingRequests when neither it nor engine.maxNumSeqs is set: vLLM's max_num_seqs on most
# GPUs. Ray Serve LLM's own default is unbounded; ours keeps Serve's load balancing meaningful.
DEFAULT_MAX_ONGOING_REQUESTS = 256


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields are errors (never silently dropped)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for the CRD (x-kubernetes-validations): (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def _exactly_one(first: str, second: str) -> dict[str, Any]:
    """A CEL rule: exactly one of two optional fields is set (a Kubernetes "source" union)."""
    return _cel(
        (f"has(self.{first}) != has(self.{second})", f"set exactly one of {first} and {second}")
    )


# Kubernetes' own name rules, as RE2 patterns both CEL (the API server) and Python (validate.py,
# the CLI) run. No backslashes, so they sit in a CEL string literal as they are. A value that
# breaks them would otherwise pass our schema and fail only when KubeRay creates the pods.
LABEL_NAME_PART = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
DNS_SUBDOMAIN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# A label key (also a taint/toleration key): [DNS subdomain prefix/]name.
LABEL_KEY_RE = f"^({DNS_SUBDOMAIN}/)?{LABEL_NAME_PART}$"
LABEL_VALUE_RE = f"^({LABEL_NAME_PART})?$"
# An extended resource: a domain-prefixed name; cpu, memory and kubernetes.io/* are the pod's own.
EXTENDED_RESOURCE_RE = (
    f"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)+/{LABEL_NAME_PART}$"
)
# An image reference as container runtimes parse it, loosely: printable ASCII, no spaces.
IMAGE_RE = "^[a-z0-9][A-Za-z0-9._/:@-]*$"
LabelValue = Annotated[str, Field(max_length=63)]
_SELECTOR_MESSAGE = (
    "keys must be label keys ([prefix/]name, the name at most 63 of A-Z a-z 0-9 - _ .) and "
    "values label values (at most 63 of those, beginning and ending alphanumeric)"
)


def _selector_rules() -> dict[str, Any]:
    return _cel(
        (
            f"self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY_RE}') && "
            f"self[k].matches('{LABEL_VALUE_RE}'))",
            _SELECTOR_MESSAGE,
        )
    )


# --- model -----------------------------------------------------------------


class SecretKeyRef(_Model):
    """A key of a Secret in the LLMService's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(
        default="token", min_length=1, max_length=253, description="Key within the Secret."
    )


class ModelSpec(_Model):
    """Which weights to serve."""

    source: str = Field(
        min_length=1,
        max_length=1024,
        description=(
            "Where the weights come from: a Hugging Face repo id (org/name), an s3:// or gs:// "
            "URI, or an absolute path inside the Ray pods (for example a mounted PVC)."
        ),
    )
    version: str | None = Field(
        default=None,
        max_length=256,
        description=(
            "Model revision: a Hugging Face revision (branch, tag or commit) or, for other "
            "sources, a label of your choice. Changing it triggers a rollout."
        ),
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description=(
            "The model name clients pass to the OpenAI API. Defaults to the last path "
            "segment of source."
        ),
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret holding a Hugging Face token for gated models. It reaches the Ray pods as "
            "an env var from the Secret; it is never copied into rendered objects."
        ),
    )


# --- engine ----------------------------------------------------------------


class Dtype(StrEnum):
    AUTO = "auto"
    HALF = "half"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT = "float"
    FLOAT32 = "float32"


class Quantization(StrEnum):
    AWQ = "awq"
    AWQ_MARLIN = "awq_marlin"
    GPTQ = "gptq"
    GPTQ_MARLIN = "gptq_marlin"
    FP8 = "fp8"
    BITSANDBYTES = "bitsandbytes"
    COMPRESSED_TENSORS = "compressed-tensors"
    GGUF = "gguf"
    MARLIN = "marlin"
    MODELOPT = "modelopt"


class EngineSpec(_Model):
    """vLLM engine settings; anything not listed goes in extraArgs."""

    tensor_parallel_size: int = Field(
        default=1, ge=1, le=64, description="GPUs one model shard group spans (vLLM TP)."
    )
    pipeline_parallel_size: int = Field(
        default=1, ge=1, le=64, description="Pipeline stages; spans nodes when TP fills one node."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=10_000_000, description="Context length cap (vLLM max_model_len)."
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Fraction of GPU memory vLLM may use (vLLM's default when unset).",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=65536, description="Sequences batched per engine step."
    )
    dtype: Dtype = Field(default=Dtype.AUTO, description="Weight and activation dtype.")
    quantization: Quantization | None = Field(
        default=None, description="Quantization method of the weights."
    )
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse KV cache across requests sharing a prefix."
    )
    enforce_eager: bool | None = Field(
        default=None, description="Disable CUDA graphs (faster start, slower decode)."
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Further vLLM engine arguments, passed through as engine kwargs (snake_case keys, "
            "e.g. swap_space). Keys the fields above cover are rejected."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


# --- scale -----------------------------------------------------------------


class AutoscalingSpec(_Model):
    """Ray Serve autoscaling bounds; live replica counts then belong to Ray."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas")
        )
    )

    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Lowest replica count (0 scales to zero)."
    )
    max_replicas: int = Field(ge=1, le=1000, description="Highest replica count.")
    target_ongoing_requests: float = Field(
        default=16, gt=0, le=100_000, description="Ongoing requests per replica Ray aims for."
    )


# --- GPU profile -----------------------------------------------------------


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(_Model):
    """A pod toleration (the subset GPU node pools use)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                f"!has(self.key) || self.key == '' || self.key.matches('{LABEL_KEY_RE}')",
                "key must be a label key ([prefix/]name)",
            ),
            (
                f"!has(self.value) || self.value.matches('{LABEL_VALUE_RE}')",
                "value must be a label value (at most 63 of A-Z a-z 0-9 - _ .)",
            ),
            (
                "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "value must be empty when operator is Exists",
            ),
            (
                "self.operator == 'Exists' || (has(self.key) && self.key != '')",
                "a toleration without a key must use operator Exists",
            ),
        )
    )

    key: str | None = Field(default=None, max_length=317, description="Taint key to tolerate.")
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL, description="Exists or Equal."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value (Equal).")
    effect: TaintEffect | None = Field(default=None, description="Taint effect; empty = all.")


class NodePool(_Model):
    """One named GPU node pool; each becomes one Ray worker group."""

    name: str = Field(
        min_length=1,
        max_length=40,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Pool name (DNS label); names the worker group.",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels selecting this pool's nodes (added to the profile's).",
        json_schema_extra=_selector_rules(),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=16,
        description="Tolerations for this pool (added to the profile's).",
    )
    max_workers: int | None = Field(
        default=None, ge=0, le=10_000, description="Cap on this pool's worker pods."
    )


class GPUProfile(_Model):
    """The one place GPU facts live: Kubernetes scheduling and Ray resources both derive from it."""

    accelerator_type: str = Field(
        min_length=1,
        max_length=64,
        description="Ray accelerator type of the GPUs, e.g. A100, H100, L4 (Ray's names).",
    )
    gpus_per_node: int = Field(
        default=1, ge=1, le=16, description="GPUs each worker pod requests (one pod per node)."
    )
    resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        description="Extended resource the GPUs are advertised as.",
        json_schema_extra=_cel(
            (
                f"self.matches('{EXTENDED_RESOURCE_RE}') && !self.startsWith('kubernetes.io/')",
                "must be an extended resource name with a domain, e.g. nvidia.com/gpu (cpu, "
                "memory and kubernetes.io/ names are the pod's own resources)",
            )
        ),
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels every GPU worker pod's node must have.",
        json_schema_extra=_selector_rules(),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Tolerations every GPU worker pod gets."
    )
    pools: list[NodePool] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description=(
            "Optional named node pools, in order of preference. Without pools there is one "
            "worker group named gpu."
        ),
    )


# --- pods, rollout ---------------------------------------------------------


class Resources(_Model):
    """CPU and memory of one pod (requests = limits, as Ray recommends)."""

    cpu: str = Field(
        default="4", pattern=r"^[0-9]+(\.[0-9]+|m)?$", description="CPU quantity, e.g. 4 or 500m."
    )
    memory: str = Field(
        default="16Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        description="Memory quantity, e.g. 16Gi.",
    )


def _head_default() -> Resources:
    return Resources(cpu="2", memory="8Gi")


class KeyRef(_Model):
    """A key of a Secret or ConfigMap in the LLMService's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret/ConfigMap.")
    key: str = Field(min_length=1, max_length=253, description="The key whose value is used.")
    optional: bool | None = Field(default=None, description="Start even if it is missing.")


class EnvVarSource(_Model):
    """Where an env var's value comes from: one Secret or ConfigMap key."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("secretKeyRef", "configMapKeyRef"))

    secret_key_ref: KeyRef | None = Field(default=None, description="A Secret's key.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A ConfigMap's key.")


class EnvVar(_Model):
    """An environment variable for the Ray containers: a literal value or a reference."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both")
        )
    )

    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Name."
    )
    value: str | None = Field(
        default=None,
        max_length=32768,
        description=(
            "Literal value. It is stored in the LLMService, its history and Git: credentials "
            "belong in valueFrom (a literal value of a credential-like name draws a warning)."
        ),
    )
    value_from: EnvVarSource | None = Field(
        default=None, description="Take the value from a Secret or ConfigMap key instead."
    )


class RefName(_Model):
    """A whole Secret or ConfigMap by name."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret/ConfigMap.")
    optional: bool | None = Field(default=None, description="Start even if it is missing.")


class EnvFromSource(_Model):
    """Every key of a Secret or ConfigMap as env vars (each key a variable name)."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("secretRef", "configMapRef"))

    prefix: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="Prepended to every variable name.",
    )
    secret_ref: RefName | None = Field(default=None, description="A Secret.")
    config_map_ref: RefName | None = Field(default=None, description="A ConfigMap.")


class RolloutStrategy(StrEnum):
    IN_PLACE = "InPlace"
    BLUE_GREEN = "BlueGreen"
    CANARY = "Canary"


class AnalysisSpec(_Model):
    """When a canary is good enough for its next step, and when it is rolled back.

    Measured by the router that splits the traffic (it sees every answer of both versions,
    errors an engine refuses included), over the trailing window. A limit left unset is not
    checked; a ratio compares the canary with the stable version over the same window. A broken
    limit rolls the canary back only when at least min(minRequests, 5) of its answers broke it;
    fewer (one cold answer) leave the step waiting for more.
    """

    window_seconds: int = Field(
        default=60, ge=10, le=3600, description="Trailing window the gate looks at."
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Canary answers the window needs before the gate can pass a step.",
    )
    max_error_rate: float | None = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Highest share of the canary's requests that may fail (0.01: 1 %).",
    )
    max_ttft_p95_ratio: float | None = Field(
        default=1.5,
        ge=1,
        le=100,
        description="Highest canary/stable ratio of time-to-first-token p95.",
    )
    max_ttft_p95_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Highest canary time-to-first-token p95."
    )
    max_itl_p95_ratio: float | None = Field(
        default=1.5,
        ge=1,
        le=100,
        description="Highest canary/stable ratio of inter-token latency p95.",
    )
    max_itl_p95_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Highest canary inter-token latency p95."
    )


class CanarySpec(_Model):
    """Steps of a canary rollout: the share of requests the new version takes at each."""

    steps: list[int] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=20,
        description="Percent of the requests at each step, rising, the last one 100.",
        json_schema_extra=_cel(
            ("self[size(self) - 1] == 100", "the last step must be 100"),
            (
                "self.all(s, s >= 1 && s <= 100)",
                "each step is a percentage from 1 to 100",
            ),
            ("self.isSorted()", "steps must rise"),
        )
        | {"x-kubernetes-list-type": "set"},
    )
    pause_seconds: int = Field(
        default=60,
        ge=0,
        le=86_400,
        description="Least time at each step before the next (the gate must pass as well).",
    )
    sticky_header: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        description=(
            "Request header (for example x-session-id) whose value keeps a client on one "
            "version: requests without it are split at random."
        ),
    )
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec, description="The gate of every step."
    )


class RolloutSpec(_Model):
    """How a change of model version or engine settings reaches the running service."""

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.IN_PLACE,
        description=(
            "InPlace updates the Serve config on the running Ray cluster; BlueGreen brings up a "
            "new Ray cluster and switches traffic once it is ready (KubeRay NewCluster upgrade); "
            "Canary runs the new version beside the old one on the same Ray cluster and moves "
            "traffic to it step by step, rolling back by itself when the gate fails."
        ),
    )
    canary: CanarySpec | None = Field(
        default=None,
        description="Steps and gate of the Canary strategy (defaults if unset; kept, unused, "
        "under another strategy).",
    )
    paused: bool = Field(
        default=False, description="Hold a canary at its current step (traffic stays as it is)."
    )

    def canary_or_default(self) -> CanarySpec:
        return self.canary if self.canary is not None else CanarySpec()


# --- network ---------------------------------------------------------------


class LabelSelector(_Model):
    """A label selector (matchLabels only); empty selects everything."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels that must all match."
    )


class IPBlock(_Model):
    """A CIDR range (networking.k8s.io/v1 IPBlock)."""

    cidr: str = Field(min_length=1, max_length=64, description="CIDR, e.g. 10.0.0.0/16.")
    except_: list[str] = Field(
        default_factory=list,
        alias="except",
        max_length=32,
        description="CIDRs inside cidr to leave out.",
    )


class NetworkPeer(_Model):
    """Who may connect (a NetworkPolicyPeer): pods by namespace and pod labels, or an IP block."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.ipBlock) != (has(self.namespaceSelector) || has(self.podSelector))",
                "set ipBlock, or namespaceSelector and/or podSelector, not both",
            )
        )
    )

    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces (unset: the LLMService's own namespace)."
    )
    pod_selector: LabelSelector | None = Field(
        default=None, description="Pods in those namespaces (unset: all of them)."
    )
    ip_block: IPBlock | None = Field(default=None, description="An IP range instead.")


class NetworkPolicySpec(_Model):
    """The NetworkPolicy rendered beside the RayService: who may reach which Ray port."""

    enabled: bool = Field(
        default=True,
        description=(
            "Render and own a NetworkPolicy for the Ray pods. It takes effect only where the "
            "cluster's CNI enforces NetworkPolicies (Calico, Cilium, Antrea, ...)."
        ),
    )
    serving_from: list[NetworkPeer] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Who may call the OpenAI API (the serve port). Empty: any client in the cluster."
        ),
    )
    dashboard_from: list[NetworkPeer] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Who else may reach the Ray dashboard (its job API runs code), beside this Ray "
            "cluster's own pods and the KubeRay and LLMService operators' pods. Add the control "
            "plane's CIDR here where the operators reach Ray through the API server's proxy "
            "and the CNI filters traffic from it."
        ),
    )


# --- the spec --------------------------------------------------------------


class LLMServiceSpec(_Model):
    """Desired state of an LLMService."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!(has(self.replicas) && has(self.autoscaling))",
                "replicas and autoscaling are mutually exclusive",
            )
        )
    )

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "Fixed number of model replicas (default 1). Mutually exclusive with autoscaling."
        ),
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Autoscale replicas between bounds instead of a fixed count."
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "Requests one replica accepts at once. Default: engine.maxNumSeqs, or "
            f"{DEFAULT_MAX_ONGOING_REQUESTS} when that is unset, so Ray Serve never holds back "
            "a request the engine could batch (a lower cap queues requests in front of an idle "
            "batch slot)."
        ),
    )
    stream_batching_interval_ms: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "Window in which Ray Serve LLM batches a response's streamed tokens. Default: 0 on "
            "GPUs (each token as it comes: lowest time-to-first-token), Ray's own 50 on CPU. "
            "A longer window trades time-to-first-token for throughput at high concurrency "
            "(docs/performance.md)."
        ),
    )
    gpu: GPUProfile | None = Field(
        default=None,
        description=(
            "GPU profile of the workers. Without it the model runs on CPU workers (vLLM CPU)."
        ),
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Ray image for head and workers.",
        json_schema_extra=_cel(
            (
                f"self.matches('{IMAGE_RE}')",
                "must be an image reference (registry/repository:tag or @sha256:digest), ASCII "
                "without spaces",
            )
        ),
    )
    ray_version: str | None = Field(
        default=None,
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        description="Ray version inside the image (KubeRay's rayVersion).",
    )
    head_resources: Resources = Field(
        default_factory=_head_default,
        description="Ray head pod resources (the head runs no model).",
    )
    worker_resources: Resources = Field(
        default_factory=Resources, description="CPU and memory of each worker pod."
    )
    route_prefix: str = Field(
        default="/",
        max_length=256,
        pattern=r"^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$",
        description="HTTP route prefix of the OpenAI API (e.g. / or /llama).",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra env vars for Ray containers.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Whole Secrets or ConfigMaps as env vars of the Ray containers (for example S3 "
            "credentials for an s3:// model source)."
        ),
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="How changes roll out.")
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description="Which Ray ports are reachable, and from where (on by default).",
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description=(
            "ServiceAccount the Ray pods run as, with its token mounted (for example for "
            "workload identity to a model bucket). Unset: the namespace's default account and "
            "no token in any Ray container (only the autoscaler sidecar gets one)."
        ),
    )

    def ongoing_requests_limit(self) -> int:
        """maxOngoingRequests as rendered: the explicit value, else the engine's batch size."""
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        return self.engine.max_num_seqs or DEFAULT_MAX_ONGOING_REQUESTS


# --- status ----------------------------------------------------------------


class Condition(_Model):
    """metav1.Condition."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Condition type: Ready, Progressing or Degraded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason (llmservice_operator.status.Reason).")
    message: str = Field(default="", description="Human-readable detail.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was computed from."
    )
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")


class VersionStats(_Model):
    """One version's answers over an analysis window, as the router measured them."""

    version: str | None = Field(default=None, description="Model version.")
    requests: int = Field(description="Answers that ended in the window.")
    errors: int = Field(description="Of those, failed ones (non-2xx or a broken stream).")
    error_rate: float | None = Field(default=None, description="errors / requests.")
    ttft_p95_seconds: float | None = Field(default=None, description="Time to first token p95.")
    itl_p95_seconds: float | None = Field(default=None, description="Inter-token latency p95.")


class AnalysisStatus(_Model):
    """The canary gate's last look."""

    time: str = Field(description="When (RFC 3339).")
    window_seconds: float = Field(description="How much traffic time it covered.")
    verdict: str = Field(description="Pass, Fail or Inconclusive.")
    reason: str = Field(description="Why, with the numbers compared.")
    stable: VersionStats | None = Field(default=None, description="The stable version's answers.")
    canary: VersionStats | None = Field(default=None, description="The canary's answers.")


class RolloutStatus(_Model):
    """Where a canary rollout stands (observed weights; the step is the operator's own)."""

    strategy: str = Field(description="The rollout strategy (Canary).")
    phase: str = Field(description="Progressing, Paused, Promoted, RolledBack or Aborted.")
    step: int | None = Field(
        default=None, description="Current step, 1-based (0: the canary is starting)."
    )
    steps: int | None = Field(default=None, description="Number of steps.")
    weight: float | None = Field(
        default=None, description="Percent of requests the canary takes, as the router runs it."
    )
    stable_version: str | None = Field(default=None, description="Version of the stable one.")
    canary_version: str | None = Field(default=None, description="Version of the canary.")
    stable_app: str | None = Field(default=None, description="Serve application of the stable.")
    canary_app: str | None = Field(default=None, description="Serve application of the canary.")
    canary_hash: str | None = Field(default=None, description="Hash of the canary's config.")
    step_started: str | None = Field(
        default=None,
        description=(
            "When the operator first saw the router run this step's weight (a tick or so after"
            " the router began): the step's pause and the gate's window count from here."
        ),
    )
    rolled_back_hash: str | None = Field(
        default=None,
        description="Config hash of a canary the gate rolled back: not retried until it changes.",
    )
    message: str = Field(default="", description="What happens now.")
    last_analysis: AnalysisStatus | None = Field(default=None, description="The gate's last look.")


class LLMServiceStatus(_Model):
    """Observed state: the RayService, its RayClusters and Ray Serve's own state."""

    model_config = ConfigDict(extra="allow")

    phase: str | None = Field(default=None, description="Pending, Progressing, Ready or Failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Current conditions.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation last reconciled."
    )
    replicas: int | None = Field(
        default=None,
        description="Model replicas wanted: spec.replicas, or Serve's current autoscaling target.",
    )
    ready_replicas: int | None = Field(
        default=None,
        description="Serve replicas of the model that Ray reports RUNNING (observed).",
    )
    selector: str | None = Field(
        default=None, description="Label selector of the Ray pods (for the scale subresource)."
    )
    endpoint: str | None = Field(default=None, description="In-cluster OpenAI base URL.")
    active_version: str | None = Field(
        default=None, description="Model version the Serve app runs (set once it has settled)."
    )
    pending_version: str | None = Field(
        default=None, description="Model version being rolled out, if any."
    )
    ray_service_name: str | None = Field(default=None, description="The owned RayService.")
    rollout: RolloutStatus | None = Field(
        default=None, description="The canary rollout, while one runs and after it ended."
    )
    warnings: list[str] | None = Field(
        default=None,
        description=(
            "Spec choices that work but are unsafe (e.g. a credential as a literal env value), "
            "each with its field path."
        ),
    )


class ObjectMeta(BaseModel):
    """The part of metadata the renderer reads; everything else is tolerated and ignored."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=253)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LLMService(BaseModel):
    """A whole LLMService object as read from YAML or the API server."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    api_version: Literal["llmservice.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["LLMService"]
    metadata: ObjectMeta
    spec: LLMServiceSpec
    status: LLMServiceStatus | None = None
