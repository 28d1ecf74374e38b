"""Worker-group sizes of the RayService's RayClusters: the gap KubeRay leaves, closed narrowly.

KubeRay v1.5's RayService controller hashes the cluster spec without ``replicas``,
``minReplicas`` and ``maxReplicas`` and never updates an existing RayCluster when only those
change (it expects the Ray autoscaler to own them). So ``spec.replicas``, the scale subresource,
an HPA and autoscaling-bound changes would stop at the RayService. The operator patches exactly
those fields of the RayCluster itself, under its own field manager.

Why a JSON patch and not server-side apply: ``workerGroupSpecs`` is an atomic list in KubeRay's
CRD (no list-map key), so an apply would have to send, and would then own, every worker group
whole. A JSON patch touches only the three fields, and its ``test`` operations make it fail
(409/422, retried) instead of writing into the wrong group if the list changed meanwhile.

Scale-down order, so no request fails: Serve first gets the smaller ``num_replicas`` (the
RayService's serve config, applied in place by KubeRay); the RayCluster shrinks only once Serve
runs no more replicas than wanted, and the pods that go are named (``workersToDelete``) among
those that host no running Serve replica. KubeRay would otherwise delete pods at random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmservice_operator.observe import ServeApp
from llmservice_operator.plan import Plan


@dataclass(frozen=True)
class GroupTarget:
    name: str
    replicas: int | None  # None: the Ray autoscaler owns the live count
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class WorkerPod:
    name: str
    ip: str | None
    group: str


@dataclass(frozen=True)
class ReplicaPatch:
    """JSON-patch operations plus a one-line account of what they change."""

    ops: list[dict[str, Any]]
    summary: str
    direction: str  # "up", "down" or "bounds" (for the metric)


def targets(p: Plan) -> list[GroupTarget]:
    return [
        GroupTarget(g.name, g.replicas, g.min_replicas, g.max_replicas) for g in p.worker_groups
    ]


def scale_down_blocked(serve: ServeApp | None, serve_expected: bool, want: int | None) -> bool:
    """True while removing workers could take a running Serve replica with it.

    ``serve_expected``: KubeRay reports a Serve app on this cluster, so Ray is there to ask;
    if its answer is missing, wait rather than delete pods blind.
    """
    if serve is None:
        return serve_expected
    if want is None:  # autoscaling: Ray's autoscaler picks idle nodes itself
        return False
    # Every replica Serve still has (RUNNING, STARTING or STOPPING) sits on a node: wait until
    # only the wanted ones are left, so the pods without one are known.
    return serve.target_replicas != want or len(serve.replicas) > want


def replica_patch(
    raycluster: Mapping[str, Any],
    wanted: Sequence[GroupTarget],
    *,
    serve: ServeApp | None,
    serve_expected: bool,
    serve_replicas: int | None,
    pods: Sequence[WorkerPod] = (),
) -> ReplicaPatch | None:
    """The patch that brings the cluster's worker-group sizes to ``wanted`` (None: in line).

    Groups the plan does not name (an older cluster during an upgrade) are left alone.
    """
    by_name = {t.name: t for t in wanted}
    ops: list[dict[str, Any]] = []
    changes: list[str] = []
    direction = "bounds"
    busy = serve.replica_ips() if serve is not None else set()
    for i, group in enumerate((raycluster.get("spec") or {}).get("workerGroupSpecs") or []):
        target = by_name.get(str(group.get("groupName")))
        if target is None:
            continue
        live = group.get("replicas")
        fields: dict[str, int] = {"minReplicas": target.min_replicas}
        fields["maxReplicas"] = target.max_replicas
        to_delete: list[str] = []
        if target.replicas is not None:
            fields["replicas"] = target.replicas
            excess = 0 if live is None else int(live) - target.replicas
            if excess > 0:
                idle = sorted(
                    p.name
                    for p in pods
                    if p.group == target.name and p.ip is not None and p.ip not in busy
                )
                to_delete = idle[:excess]
                # Shrink only once Serve has let go and as many pods as go hold no replica:
                # KubeRay would pick any others at random, maybe one a replica runs on.
                blocked = scale_down_blocked(serve, serve_expected, serve_replicas)
                if blocked or (serve is not None and len(to_delete) < excess):
                    fields, to_delete = {}, []  # bounds and count move together, later
        diff = {k: v for k, v in fields.items() if group.get(k) != v}
        if not diff:
            continue
        base = f"/spec/workerGroupSpecs/{i}"
        ops.append({"op": "test", "path": f"{base}/groupName", "value": target.name})
        ops += [{"op": "add", "path": f"{base}/{k}", "value": v} for k, v in diff.items()]
        if to_delete:
            strategy = {"workersToDelete": to_delete}
            ops.append({"op": "add", "path": f"{base}/scaleStrategy", "value": strategy})
        if "replicas" in diff:
            direction = "up" if live is None or diff["replicas"] > int(live) else "down"
        changes.append(
            f"{target.name}: "
            + ", ".join(f"{k} {group.get(k)}->{v}" for k, v in sorted(diff.items()))
        )
    if not ops:
        return None
    return ReplicaPatch(ops=ops, summary="; ".join(changes), direction=direction)


def in_line(raycluster: Mapping[str, Any], wanted: Sequence[GroupTarget]) -> bool:
    """The cluster's worker groups already have the wanted sizes (bounds only if autoscaled)."""
    return (
        replica_patch(raycluster, wanted, serve=None, serve_expected=False, serve_replicas=None)
        is None
    )
