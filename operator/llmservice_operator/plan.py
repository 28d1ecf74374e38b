"""Derived numbers: computed once from a validated spec and handed to the templates.

The GPU profile is the one place GPU facts live. Everything both sides need (Kubernetes worker
groups with nodeSelector/tolerations/GPU limits, Ray placement bundles and accelerator type)
comes from here, so the pods Kubernetes schedules always fit what Ray will ask for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmservice_operator.api.models import LLMServiceSpec, RolloutStrategy, Toleration
from serve_app.tuning import DIRECT_STREAMING_ENV, GPU_FAST_PATH_ENV

CPU_GROUP = "cpu"
GPU_GROUP = "gpu"


@dataclass(frozen=True)
class WorkerGroupPlan:
    name: str
    gpus_per_pod: int  # 0 on CPU
    replicas: int | None  # None when the Ray autoscaler owns the live count
    min_replicas: int
    max_replicas: int
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    served_model_name: str
    gpus_per_replica: int  # 0 on CPU
    replicas: int | None  # fixed count, or None when autoscaling
    min_replicas: int
    max_replicas: int
    accelerator_type: str | None
    placement_bundles: list[dict[str, float]]
    worker_groups: list[WorkerGroupPlan]

    @property
    def autoscaling(self) -> bool:
        return self.replicas is None


def fast_path_by_default(spec: LLMServiceSpec, versions: int = 1) -> bool:
    """Whether the renderer adds Ray Serve's fast path (``GPU_FAST_PATH_ENV``) to the pods.

    GPUs only, and only where one version serves and the strategy is not Canary, whose traffic
    split needs the router; a spec.env entry of either name means the user chose. ``versions``:
    how many versions the rendered config runs (two while a canary's traffic is taken back), so
    that the pods' environment and the config's topology always come from the same answer.
    """
    return (
        spec.gpu is not None
        and spec.rollout.strategy is not RolloutStrategy.CANARY
        and versions == 1
        and not any(e.name in GPU_FAST_PATH_ENV for e in spec.env)
    )


def direct_streaming(spec: LLMServiceSpec, versions: int = 1) -> bool:
    """Whether the Ray containers run Ray Serve LLM's direct streaming (the model's replica is
    the HTTP ingress: the whole OpenAI app in one application): a literal spec.env value
    (exactly "1", as Ray reads it), else the GPU default."""
    own = next((e for e in spec.env if e.name == DIRECT_STREAMING_ENV), None)
    if own is not None:
        return own.value == "1"
    return fast_path_by_default(spec, versions)


def workers_for(replicas: int, gpus_per_replica: int, gpus_per_node: int) -> int:
    """Worker pods (one per node) that ``replicas`` model replicas need."""
    if replicas <= 0:
        return 0
    if gpus_per_replica <= 0:  # CPU: one replica per worker pod
        return replicas
    if gpus_per_replica <= gpus_per_node:
        return math.ceil(replicas / (gpus_per_node // gpus_per_replica))
    return replicas * math.ceil(gpus_per_replica / gpus_per_node)


def served_name_of(source: str) -> str:
    """Default OpenAI model name: the last path segment of the source."""
    return source.rstrip("/").rsplit("/", 1)[-1]


def _toleration(t: Toleration) -> dict[str, Any]:
    return t.model_dump(by_alias=True, exclude_none=True, mode="json")


def _fill(workers: int, caps: list[int | None]) -> list[int]:
    """Spread ``workers`` over pools in order of preference, each up to its cap."""
    out = []
    for cap in caps:
        take = workers if cap is None else min(workers, cap)
        out.append(take)
        workers -= take
    if workers and out:  # over every cap: validation reports it; never silently drop pods
        out[-1] += workers
    return out


def plan(spec: LLMServiceSpec, extra_replicas: int = 0) -> Plan:
    """The numbers of ``spec``; ``extra_replicas`` more model replicas' workers (a canary's)."""
    eng, gpu = spec.engine, spec.gpu
    ranks = eng.tensor_parallel_size * eng.pipeline_parallel_size
    if spec.autoscaling is not None:
        replicas, lo, hi = None, spec.autoscaling.min_replicas, spec.autoscaling.max_replicas
    else:
        replicas = 1 if spec.replicas is None else spec.replicas
        lo = hi = replicas
    gpus_per_replica = ranks if gpu is not None else 0
    gpus_per_node = gpu.gpus_per_node if gpu is not None else 1
    # Workers are counted per version: two versions never share a multi-replica node's GPUs
    # in this count, so the extra replica gets whole workers of its own.
    w_lo = workers_for(lo, gpus_per_replica, gpus_per_node)
    w_hi = workers_for(hi, gpus_per_replica, gpus_per_node)
    if extra_replicas:
        w_extra = workers_for(extra_replicas, gpus_per_replica, gpus_per_node)
        w_lo, w_hi = w_lo + w_extra, w_hi + w_extra
    # With autoscaling the Ray autoscaler owns the live worker count: leave `replicas` unset.
    fixed_workers = w_lo if replicas is not None else None

    groups: list[WorkerGroupPlan]
    if gpu is None:
        groups = [WorkerGroupPlan(CPU_GROUP, 0, fixed_workers, w_lo, w_hi)]
        bundles: list[dict[str, float]] = [{"CPU": 1.0} for _ in range(ranks)]
    else:
        base_sel = dict(gpu.node_selector)
        base_tol = [_toleration(t) for t in gpu.tolerations]
        pools = gpu.pools
        if not pools:
            groups = [
                WorkerGroupPlan(
                    GPU_GROUP, gpus_per_node, fixed_workers, w_lo, w_hi, base_sel, base_tol
                )
            ]
        else:
            caps = [p.max_workers for p in pools]
            mins = _fill(w_lo, caps)
            groups = []
            for i, pool in enumerate(pools):
                cap = w_hi if pool.max_workers is None else min(w_hi, pool.max_workers)
                groups.append(
                    WorkerGroupPlan(
                        name=pool.name,
                        gpus_per_pod=gpus_per_node,
                        replicas=mins[i] if replicas is not None else None,
                        min_replicas=mins[i],
                        max_replicas=max(cap, mins[i]),
                        node_selector={**base_sel, **pool.node_selector},
                        tolerations=base_tol + [_toleration(t) for t in pool.tolerations],
                    )
                )
        bundles = [{"GPU": 1.0} for _ in range(ranks)]

    return Plan(
        served_model_name=spec.model.served_model_name or served_name_of(spec.model.source),
        gpus_per_replica=gpus_per_replica,
        replicas=replicas,
        min_replicas=lo,
        max_replicas=hi,
        accelerator_type=gpu.accelerator_type if gpu is not None else None,
        placement_bundles=bundles,
        worker_groups=groups,
    )
