"""Room for a surge: do the pods of a second Ray cluster fit beside everything that runs now?

A RayService change that KubeRay cannot carry out in place (a BlueGreen version change, any
change of the pod templates) brings up a whole new RayCluster before the old one goes; a canary
adds one replica's workers to the running one. On a
GPU pool with no room its pods stay Pending and the upgrade stalls for ever (kuberay#1476,
#4239) while the old cluster keeps serving. The operator asks here first, and holds such a
change, saying what is missing, until it fits.

Pure functions over plain dicts (nodes and pods as the API returns them). The fit is the
scheduler's first questions only: node selector, taints, allocatable minus the requests of
the pods bound to the node (init containers and pod overhead are not counted, affinity and
topology spread are not modelled): a pool that passes may still be refused by the scheduler,
but one that fails here cannot hold the pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils import quantity

from llmservice_operator.observe import cluster_names, is_subset

GPU = "nvidia.com/gpu"
_SCALE_FIELDS = ("replicas", "minReplicas", "maxReplicas", "scaleStrategy")


@dataclass(frozen=True)
class PodShape:
    """The pods of one group of the new cluster: how many, and what each needs."""

    group: str
    count: int
    requests: dict[str, Decimal]
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class NodeRoom:
    name: str
    labels: dict[str, str]
    taints: list[dict[str, Any]]
    free: dict[str, Decimal]


@dataclass(frozen=True)
class Missing:
    group: str
    pods: int  # pods of the group that found no node
    gpus: int  # the GPUs those pods ask for
    node_selector: dict[str, str]

    def __str__(self) -> str:
        where = ",".join(f"{k}={v}" for k, v in sorted(self.node_selector.items())) or "any node"
        need = f"{self.gpus} more GPUs" if self.gpus else f"room for {self.pods} more pod(s)"
        what = "the head" if self.group == "head" else f"worker group {self.group}"
        return f"{what} ({where}): {need} ({self.pods} pod(s) do not fit)"


def _without_scale(cluster: Mapping[str, Any]) -> dict[str, Any]:
    """A rayClusterConfig minus what KubeRay changes in place (worker counts)."""
    out = dict(cluster)
    out["workerGroupSpecs"] = [
        {k: v for k, v in group.items() if k not in _SCALE_FIELDS}
        for group in cluster.get("workerGroupSpecs") or []
    ]
    return out


def surges(want: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Applying `want` over the live RayService makes KubeRay bring up a second RayCluster.

    KubeRay (v1.4/v1.5, ``shouldPrepareNewCluster``) does so when the cluster spec changed
    beyond worker counts, unless worker groups were only appended; never for the first
    cluster (nothing to keep) or while a pending cluster exists (the surge is under way).
    """
    active, pending = cluster_names(live)
    if active is None or pending is not None:
        return False
    new = _without_scale((want.get("spec") or {}).get("rayClusterConfig") or {})
    old = _without_scale((live.get("spec") or {}).get("rayClusterConfig") or {})
    kept = len(old["workerGroupSpecs"])
    if len(new["workerGroupSpecs"]) >= kept:
        new = {**new, "workerGroupSpecs": new["workerGroupSpecs"][:kept]}
    return not is_subset(new, old)


def _qty(text: Any) -> Decimal:
    """A Kubernetes quantity ("500m", "4Gi", 8) as a number."""
    value: Decimal = quantity.parse_quantity(text)  # type: ignore[no-untyped-call]
    return value


def _requests(pod_spec: Mapping[str, Any]) -> dict[str, Decimal]:
    total: dict[str, Decimal] = {}
    for container in pod_spec.get("containers") or []:
        resources = container.get("resources") or {}
        # A resource with only a limit is requested at the limit (the API server's default).
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, qty in asked.items():
            total[name] = total.get(name, Decimal(0)) + _qty(qty)
    return total


def _shape(group: str, count: int, template: Mapping[str, Any]) -> PodShape:
    spec = template.get("spec") or {}
    return PodShape(
        group=group,
        count=count,
        requests=_requests(spec),
        node_selector=dict(spec.get("nodeSelector") or {}),
        tolerations=list(spec.get("tolerations") or []),
    )


def pod_shapes(rayservice: Mapping[str, Any]) -> list[PodShape]:
    """The pods a new RayCluster of this RayService starts with: the head and every worker
    group at its count (at its minimum when autoscaled: more come only if Ray asks)."""
    cluster = (rayservice.get("spec") or {}).get("rayClusterConfig") or {}
    head = cluster.get("headGroupSpec") or {}
    shapes = [_shape("head", 1, head.get("template") or {})]
    for group in cluster.get("workerGroupSpecs") or []:
        count = group.get("replicas")
        if count is None:
            count = group.get("minReplicas") or 0
        shapes.append(_shape(str(group.get("groupName")), int(count), group.get("template") or {}))
    return shapes


def added_workers(want: Mapping[str, Any], live: Mapping[str, Any]) -> list[PodShape]:
    """The worker pods `want` adds to the running cluster (a canary's surge): per group, its
    count in `want` above its count in the `live` RayService (groups matched by name)."""

    def groups(rs: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        cluster = (rs.get("spec") or {}).get("rayClusterConfig") or {}
        return {str(g.get("groupName")): g for g in cluster.get("workerGroupSpecs") or []}

    def count(group: Mapping[str, Any] | None) -> int:
        if group is None:
            return 0
        n = group.get("replicas")
        return int(group.get("minReplicas") or 0 if n is None else n)

    before = groups(live)
    shapes = []
    for name, group in groups(want).items():
        extra = count(group) - count(before.get(name))
        if extra > 0:
            shapes.append(_shape(name, extra, group.get("template") or {}))
    return shapes


def _tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value") == taint.get("value"):
            return True
    return False


def _schedulable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_rooms(
    nodes: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]
) -> list[NodeRoom]:
    """What each schedulable node has left: allocatable minus the requests of its pods that
    have not ended."""
    used: dict[str, dict[str, Decimal]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed"):
            continue
        acc = used.setdefault(str(node), {})
        for name, qty in _requests(pod.get("spec") or {}).items():
            acc[name] = acc.get(name, Decimal(0)) + qty
    rooms = []
    for node in nodes:
        if not _schedulable(node):
            continue
        meta = node.get("metadata") or {}
        name = str(meta.get("name"))
        alloc = (node.get("status") or {}).get("allocatable") or {}
        taken = used.get(name, {})
        free = {r: _qty(q) - taken.get(r, Decimal(0)) for r, q in alloc.items()}
        taints = [
            t for t in (node.get("spec") or {}).get("taints") or []
            if t.get("effect") in ("NoSchedule", "NoExecute")
        ]  # fmt: skip
        rooms.append(NodeRoom(name, dict(meta.get("labels") or {}), taints, free))
    return rooms


def _fits(shape: PodShape, room: NodeRoom) -> bool:
    if any(room.labels.get(k) != v for k, v in shape.node_selector.items()):
        return False
    if not all(_tolerates(shape.tolerations, t) for t in room.taints):
        return False
    return all(room.free.get(r, Decimal(0)) >= q for r, q in shape.requests.items() if q > 0)


def shortfall(shapes: Sequence[PodShape], rooms: Sequence[NodeRoom]) -> list[Missing]:
    """The pods that find no node when placed one by one, biggest GPU askers first."""
    order = sorted(shapes, key=lambda s: s.requests.get(GPU, Decimal(0)), reverse=True)
    missing = []
    for shape in order:
        unplaced = 0
        for _ in range(shape.count):
            room = next((r for r in rooms if _fits(shape, r)), None)
            if room is None:
                unplaced += 1
                continue
            for r, q in shape.requests.items():
                room.free[r] = room.free.get(r, Decimal(0)) - q
        if unplaced:
            gpus = int(shape.requests.get(GPU, Decimal(0))) * unplaced
            missing.append(Missing(shape.group, unplaced, gpus, shape.node_selector))
    return missing


def describe(missing: Sequence[Missing]) -> str:
    return "not enough room for the new Ray cluster: " + "; ".join(str(m) for m in missing)
