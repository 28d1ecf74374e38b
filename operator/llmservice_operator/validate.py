"""Validation beyond the schema: every rule reports the field path and the reason.

The CRD's OpenAPI schema and CEL rules catch shape errors at admission; these rules need the
whole spec (GPU layout arithmetic, cross-field limits) or protect objects that were stored
before a rule existed. The CLI and the operator run the same function.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from llmservice_operator.api.models import (
    EXTENDED_RESOURCE_RE,
    IMAGE_RE,
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    EngineSpec,
    LLMService,
    LLMServiceSpec,
    RolloutStrategy,
    Toleration,
)
from llmservice_operator.errors import FieldError, InvalidSpecError, from_pydantic
from llmservice_operator.plan import direct_streaming, served_name_of, workers_for
from serve_app.tuning import DIRECT_STREAMING_ENV, HA_PROXY_ENV

# Ray's accelerator type names (ray.util.accelerators); Ray schedules on "accelerator_type:<X>".
KNOWN_ACCELERATOR_TYPES = frozenset(
    {
        "V100", "P100", "T4", "P4", "K80", "A10G", "A10", "L4", "L40S", "A100", "A100-40G",
        "A100-80G", "H100", "H200", "H20", "B200", "GB200",
        "AMD-Instinct-MI100", "AMD-Instinct-MI210", "AMD-Instinct-MI250X",
        "AMD-Instinct-MI300X-OAM",
        "AMD-Instinct-MI325X-OAM", "AMD-Instinct-MI355X-OAM",
        "TPU-V4", "TPU-V5P", "TPU-V5LITEPOD", "TPU-V6E",
        "Intel-GPU-Max-1550", "Intel-GPU-Max-1100", "Intel-GAUDI",
    }
)  # fmt: skip

_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REMOTE = re.compile(r"^(s3|gs)://[a-z0-9][a-z0-9._-]{1,62}(/.*)?$")
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# KubeRay appends "-xxxxx" to the RayService name for its RayCluster and caps that at 53.
MAX_NAME_LENGTH = 47

# Engine kwargs the typed EngineSpec fields own: extraArgs may not set them behind its back.
_TYPED_ENGINE_KWARGS = frozenset(EngineSpec.model_fields) - {"extra_args"}
_RESERVED_ENGINE_KWARGS = _TYPED_ENGINE_KWARGS | {"model", "served_model_name", "revision"}


def parse(obj: Mapping[str, Any]) -> LLMService:
    """Parse and fully validate one LLMService object, or raise InvalidSpecError."""
    try:
        svc = LLMService.model_validate(dict(obj))
    except ValidationError as exc:
        raise InvalidSpecError(from_pydantic(exc)) from None
    errors = sorted([*_check_name(svc.metadata.name), *check_spec(svc.spec)])
    if errors:
        raise InvalidSpecError(errors)
    return svc


# Env names that usually hold a credential: their values belong in a Secret (valueFrom).
_CREDENTIAL_NAME = re.compile(
    r"(SECRET|TOKEN|PASSW(OR)?D|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|AUTH)", re.IGNORECASE
)


def warnings(spec: LLMServiceSpec) -> list[FieldError]:
    """Choices that work but are unsafe: reported (CLI, an Event, status), never refused."""
    found = []
    for i, var in enumerate(spec.env):
        if var.value and _CREDENTIAL_NAME.search(var.name):
            found.append(
                FieldError(
                    f"spec.env[{i}].value",
                    f"{var.name} looks like a credential but is a literal value, stored in the "
                    "LLMService, its history and Git: use valueFrom.secretKeyRef",
                )
            )
    return found


# The whole spec, serialized. A client-side `kubectl apply` keeps a copy in an annotation
# (last-applied-configuration; earlier versions of this operator kept kopf's diff base too),
# and an object's annotations must fit the API server's 256 KiB cap in all. The RayService
# repeats env once per Ray pod template, within etcd's 1.5 MiB per object.
MAX_SPEC_BYTES = 100 * 1024


def check_spec(spec: LLMServiceSpec) -> list[FieldError]:
    return list(_check(spec)) + list(_check_size(spec))


def _check_size(spec: LLMServiceSpec) -> Iterator[FieldError]:
    fields = spec.model_dump(mode="json", by_alias=True)
    sizes = {k: len(json.dumps(v, separators=(",", ":"))) for k, v in fields.items()}
    total = len(json.dumps(fields, separators=(",", ":")))
    if total <= MAX_SPEC_BYTES:
        return
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:2]
    where = ", ".join(f"spec.{k} {n / 1024:.0f} KiB" for k, n in largest)
    yield FieldError(
        "spec",
        f"{total / 1024:.0f} KiB serialized, at most {MAX_SPEC_BYTES // 1024} KiB (kopf and "
        f"kubectl keep copies in annotations, capped at 256 KiB in all); largest: {where}",
    )


def _check(spec: LLMServiceSpec) -> Iterator[FieldError]:
    yield from _check_model(spec)
    yield from _check_scale(spec)
    yield from _check_engine(spec)
    yield from _check_gpu(spec)
    yield from _check_network(spec)
    yield from _check_env(spec)
    yield from _check_fast_path(spec)
    yield from _check_rollout(spec)
    yield from _check_kubernetes_names(spec)


def _check_name(name: str) -> Iterator[FieldError]:
    if len(name) > MAX_NAME_LENGTH:
        yield FieldError(
            "metadata.name", f"at most {MAX_NAME_LENGTH} characters (KubeRay names derive from it)"
        )
    if not _DNS1035.match(name):
        yield FieldError(
            "metadata.name",
            "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter",
        )


def _check_model(spec: LLMServiceSpec) -> Iterator[FieldError]:
    src = spec.model.source
    if not (_HF_REPO.match(src) or _REMOTE.match(src) or src.startswith("/")):
        yield FieldError(
            "spec.model.source",
            f"{src!r} is not a Hugging Face repo id (org/name), an s3:// or gs:// URI, "
            "or an absolute path",
        )
    elif spec.model.served_model_name is None and not served_name_of(src):
        yield FieldError(
            "spec.model.servedModelName", f"cannot derive a name from source {src!r}: set it"
        )


def _check_scale(spec: LLMServiceSpec) -> Iterator[FieldError]:
    auto = spec.autoscaling
    if auto is None:
        return
    if spec.replicas is not None:
        yield FieldError("spec.replicas", "replicas and autoscaling are mutually exclusive")
    if auto.min_replicas > auto.max_replicas:
        yield FieldError(
            "spec.autoscaling.minReplicas",
            f"minReplicas ({auto.min_replicas}) must be <= maxReplicas ({auto.max_replicas})",
        )
    limit = spec.ongoing_requests_limit()
    if auto.target_ongoing_requests > limit:
        yield FieldError(
            "spec.autoscaling.targetOngoingRequests",
            f"{auto.target_ongoing_requests:g} exceeds maxOngoingRequests "
            f"({limit}): replicas could never reach the target",
        )


def _check_engine(spec: LLMServiceSpec) -> Iterator[FieldError]:
    for key in spec.engine.extra_args:
        path = f"spec.engine.extraArgs.{key}"
        if not _SNAKE.match(key):
            yield FieldError(path, "engine kwargs are snake_case vLLM argument names")
        elif key in _RESERVED_ENGINE_KWARGS:
            yield FieldError(path, f"{key} is set by a typed field or by spec.model; use that")


def _cpu_quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _check_gpu(spec: LLMServiceSpec) -> Iterator[FieldError]:
    gpu, eng = spec.gpu, spec.engine
    if gpu is None:
        # CPU serving: each worker pod hosts one replica, whose actor takes one CPU beside the
        # engine's bundle of one CPU per rank (ray.serve.llm merges them into one bundle).
        need = eng.tensor_parallel_size * eng.pipeline_parallel_size + 1
        if _cpu_quantity(spec.worker_resources.cpu) < need:
            yield FieldError(
                "spec.workerResources.cpu",
                f"a CPU replica needs {need} CPUs on its worker pod (1 for the replica, "
                f"{need - 1} for the engine), got {spec.worker_resources.cpu}",
            )
        return
    if gpu.accelerator_type not in KNOWN_ACCELERATOR_TYPES:
        yield FieldError(
            "spec.gpu.acceleratorType",
            f"unknown accelerator type {gpu.accelerator_type!r} "
            f"(Ray's names, e.g. A100, H100, L4, L40S, A10G)",
        )
    tp, pp = eng.tensor_parallel_size, eng.pipeline_parallel_size
    if tp > gpu.gpus_per_node:
        yield FieldError(
            "spec.engine.tensorParallelSize",
            f"{tp} GPUs do not fit one node of {gpu.gpus_per_node} (spec.gpu.gpusPerNode); "
            "keep tensor parallelism within a node and span nodes with pipelineParallelSize",
        )
    elif tp * pp > gpu.gpus_per_node and gpu.gpus_per_node % tp:
        yield FieldError(
            "spec.engine.tensorParallelSize",
            f"{tp} does not divide gpusPerNode ({gpu.gpus_per_node}), so pipeline stages "
            "cannot be packed onto whole nodes",
        )
    caps = [p.max_workers for p in gpu.pools]
    if caps and None not in caps:
        need = _max_replicas(spec)
        workers = workers_for(need, tp * pp, gpu.gpus_per_node)
        have = sum(c for c in caps if c is not None)
        if workers > have:
            yield FieldError(
                "spec.gpu.pools",
                f"{need} replicas need {workers} worker pods but the pools' maxWorkers "
                f"allow {have}",
            )
    names = [p.name for p in gpu.pools]
    for i, name in enumerate(names):
        if name in names[:i]:
            yield FieldError(f"spec.gpu.pools[{i}].name", f"duplicate pool name {name!r}")


_LABEL_KEY = re.compile(LABEL_KEY_RE)
_LABEL_VALUE = re.compile(LABEL_VALUE_RE)
_EXTENDED_RESOURCE = re.compile(EXTENDED_RESOURCE_RE)
_IMAGE = re.compile(IMAGE_RE)


def _check_kubernetes_names(spec: LLMServiceSpec) -> Iterator[FieldError]:
    """What the pods KubeRay makes must pass: the same rules as the CRD's CEL, with paths."""
    if spec.image is not None and not _IMAGE.match(spec.image):
        yield FieldError(
            "spec.image",
            f"{spec.image!r} is not an image reference (registry/repository:tag or "
            "@sha256:digest, ASCII without spaces)",
        )
    gpu = spec.gpu
    if gpu is None:
        return
    if not _EXTENDED_RESOURCE.match(gpu.resource_name) or gpu.resource_name.startswith(
        "kubernetes.io/"
    ):
        yield FieldError(
            "spec.gpu.resourceName",
            f"{gpu.resource_name!r} is not an extended resource name with a domain, e.g. "
            "nvidia.com/gpu (cpu, memory and kubernetes.io/ names are the pod's own resources)",
        )
    yield from _check_selector("spec.gpu.nodeSelector", gpu.node_selector)
    yield from _check_tolerations("spec.gpu.tolerations", gpu.tolerations)
    for i, pool in enumerate(gpu.pools):
        yield from _check_selector(f"spec.gpu.pools[{i}].nodeSelector", pool.node_selector)
        yield from _check_tolerations(f"spec.gpu.pools[{i}].tolerations", pool.tolerations)


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if not _LABEL_KEY.match(key):
        return "not a label key: [DNS-subdomain prefix/]name, the name 1-63 of A-Z a-z 0-9 - _ ."
    if len(prefix) > 253:
        return "the prefix is longer than 253 characters"
    return None if name else "empty name"


def _label_value_problem(value: str) -> str | None:
    if _LABEL_VALUE.match(value):
        return None
    return "not a label value: at most 63 of A-Z a-z 0-9 - _ ., beginning and ending alphanumeric"


def _check_selector(path: str, selector: Mapping[str, str]) -> Iterator[FieldError]:
    for key, value in selector.items():
        problem = _label_key_problem(key)
        if problem:
            yield FieldError(f"{path}[{key!r}]", f"key {key!r}: {problem}")
        problem = _label_value_problem(value)
        if problem:
            yield FieldError(f"{path}[{key!r}]", f"value {value!r}: {problem}")


def _check_tolerations(path: str, tolerations: list[Toleration]) -> Iterator[FieldError]:
    for i, t in enumerate(tolerations):
        here = f"{path}[{i}]"
        if t.key:
            problem = _label_key_problem(t.key)
            if problem:
                yield FieldError(f"{here}.key", f"{t.key!r}: {problem}")
        elif t.operator != "Exists":
            yield FieldError(f"{here}.operator", "a toleration without a key must use Exists")
        if t.value:
            if t.operator == "Exists":
                yield FieldError(f"{here}.value", "must be empty when operator is Exists")
            problem = _label_value_problem(t.value)
            if problem:
                yield FieldError(f"{here}.value", f"{t.value!r}: {problem}")


def _check_env(spec: LLMServiceSpec) -> Iterator[FieldError]:
    # The same rules as the CRD's CEL, for the CLI and for objects stored before them.
    for i, var in enumerate(spec.env):
        src = var.value_from
        if src is None:
            continue
        if var.name == "PYTHONPATH":  # render puts serve_app's mount first on the literal value
            yield FieldError(f"spec.env[{i}].valueFrom", "PYTHONPATH must be a literal value")
        if var.value is not None:
            yield FieldError(f"spec.env[{i}]", "set value or valueFrom, not both")
        if (src.secret_key_ref is None) == (src.config_map_key_ref is None):
            yield FieldError(
                f"spec.env[{i}].valueFrom", "set exactly one of secretKeyRef and configMapKeyRef"
            )
    for i, env_from in enumerate(spec.env_from):
        if (env_from.secret_ref is None) == (env_from.config_map_ref is None):
            yield FieldError(f"spec.envFrom[{i}]", "set exactly one of secretRef and configMapRef")


def _check_fast_path(spec: LLMServiceSpec) -> Iterator[FieldError]:
    # Ray Serve serves a replica as the HTTP ingress only behind HAProxy: without it the app
    # fails to deploy ("`ingress_request_router` requires HAProxy"), long after the apply.
    haproxy = any(e.name == HA_PROXY_ENV and e.value == "1" for e in spec.env)
    for i, e in enumerate(spec.env):
        if e.name == DIRECT_STREAMING_ENV and e.value == "1" and not haproxy:
            yield FieldError(
                f"spec.env[{i}]",
                f"{DIRECT_STREAMING_ENV}=1 needs {HA_PROXY_ENV}=1 in spec.env too (Ray "
                "Serve makes a replica the ingress only behind HAProxy)",
            )


def _check_rollout(spec: LLMServiceSpec) -> Iterator[FieldError]:
    rollout = spec.rollout
    # Canary settings under another strategy are kept for the next canary, not refused: a
    # `kubectl patch` of the strategy alone leaves them there.
    if rollout.strategy is not RolloutStrategy.CANARY:
        return
    if direct_streaming(spec):
        yield FieldError(
            "spec.rollout.strategy",
            f"Canary splits traffic in a router application, which {DIRECT_STREAMING_ENV}=1 "
            "(spec.env) removes: use InPlace or BlueGreen with direct streaming",
        )
    steps = rollout.canary_or_default().steps
    for i, step in enumerate(steps):
        if not 1 <= step <= 100:
            yield FieldError(f"spec.rollout.canary.steps[{i}]", f"{step}: not from 1 to 100")
        if i and step <= steps[i - 1]:
            yield FieldError(f"spec.rollout.canary.steps[{i}]", "steps must rise")
    if steps and steps[-1] != 100:
        yield FieldError(
            f"spec.rollout.canary.steps[{len(steps) - 1}]", "the last step must be 100"
        )


def _check_network(spec: LLMServiceSpec) -> Iterator[FieldError]:
    policy = spec.network_policy
    for field, peers in (
        ("servingFrom", policy.serving_from),
        ("dashboardFrom", policy.dashboard_from),
    ):
        for i, peer in enumerate(peers):
            path = f"spec.networkPolicy.{field}[{i}]"
            if (peer.ip_block is None) == (
                peer.namespace_selector is None and peer.pod_selector is None
            ):
                yield FieldError(
                    path, "set ipBlock, or namespaceSelector and/or podSelector, not both"
                )
            if peer.ip_block is None:
                continue
            yield from _check_cidrs(f"{path}.ipBlock", peer.ip_block.cidr, peer.ip_block.except_)


def _check_cidrs(path: str, cidr: str, excepts: list[str]) -> Iterator[FieldError]:
    try:
        block = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        yield FieldError(f"{path}.cidr", f"{cidr!r} is not a CIDR ({exc})")
        return
    for j, text in enumerate(excepts):
        try:
            inner = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            yield FieldError(f"{path}.except[{j}]", f"{text!r} is not a CIDR ({exc})")
            continue
        if inner.version != block.version or not inner.subnet_of(block):  # type: ignore[arg-type]
            yield FieldError(f"{path}.except[{j}]", f"{text} is not inside cidr {cidr}")


def _max_replicas(spec: LLMServiceSpec) -> int:
    if spec.autoscaling is not None:
        return spec.autoscaling.max_replicas
    return 1 if spec.replicas is None else spec.replicas
