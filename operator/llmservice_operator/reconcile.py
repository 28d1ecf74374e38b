"""Side effects: make the cluster match each LLMService, then report what is really there.

One level-based function, ``reconcile``, is called for every trigger: create/update/resume of an
LLMService, a periodic resync (the safety net for missed events), and any event on an owned
RayService (status mirroring, drift and deletion repair). It validates, renders, server-side
applies only when the live child differs from the render, and writes status only when it
changed. kopf handlers below just wire triggers to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, cast

import kopf

from llmservice_operator import canary, capacity, metrics, scale
from llmservice_operator import constants as c
from llmservice_operator.api.models import LLMService, LLMServiceStatus, RolloutStatus
from llmservice_operator.bookkeeping import HandledGenerations, RetryProgress
from llmservice_operator.children import Children, Key, key_of
from llmservice_operator.errors import InvalidSpecError
from llmservice_operator.k8s import (
    ALL_NAMESPACES,
    RAY_GROUP,
    RAY_VERSION,
    RAYSERVICES,
    Kube,
    KubeRayMissing,
)
from llmservice_operator.observe import (
    Cluster,
    Observation,
    ServeApp,
    cluster_names,
    controlling_llmservice,
    foreign,
    is_subset,
    leftover,
    live_arms,
    parse_cluster,
    parse_serve,
)
from llmservice_operator.plan import Plan, plan
from llmservice_operator.refusals import keep_watching
from llmservice_operator.render import (
    SERVE_APP_NAME,
    extra_replicas,
    model_app_name,
    render,
    render_rayservice,
)
from llmservice_operator.rollout import ACTIVE_PHASES, RolloutPhase
from llmservice_operator.settings import OperatorConfig
from llmservice_operator.status import (
    Desired,
    compute_status,
    invalid_status,
    merge_conditions,
    to_wire,
    without_times,
)
from llmservice_operator.validate import parse, warnings

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CodeConfigMaps:
    """Which namespaces have the serve_app ConfigMap (render/code.py), as this process knows.

    A look per namespace and code digest, not per reconcile: at 10,000 LLMServices in one
    namespace that is one read, and a create only where it is missing (or RBAC does not let us
    look). A resync looks again every RECHECK_S (a ConfigMap someone deleted is back within
    that; pods that restart meanwhile wait in ContainerCreating): a read, so a resync over
    unchanged objects writes nothing.
    """

    RECHECK_S = 300.0

    def __init__(self) -> None:
        self._ensured: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def ensure(self, kube: Kube, configmap: Mapping[str, Any], recheck: bool = False) -> None:
        meta = configmap["metadata"]
        key = (meta["namespace"], meta["name"])
        now = time.monotonic()
        with self._lock:
            last = self._ensured.get(key)
        if last is not None and not (recheck and now - last >= self.RECHECK_S):
            return
        exists = kube.configmap_exists(*key)
        if exists is None:
            log.warning(
                "ConfigMap %s/%s: get is forbidden (the chart grants it for its own release's "
                "code digest only: is the operator image of another release?); creating instead",
                *key,
            )
        if not exists and kube.create_configmap(configmap):
            log.info("ConfigMap %s/%s created (serve_app code)", *key)
        with self._lock:
            self._ensured[key] = now

    def clear(self) -> None:
        with self._lock:
            self._ensured.clear()


CODE = CodeConfigMaps()


def _owned(child: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    # Not kopf.adopt(): it also copies the owner's labels, which would copy Argo CD's tracking
    # label onto the RayService and make Argo CD treat (and prune) it as its own resource.
    kopf.append_owner_reference(child, owner=_kopf_body(owner))
    return child


def _kopf_body(raw: Mapping[str, Any]) -> kopf.Body:
    return raw if isinstance(raw, kopf.Body) else kopf.Body(cast(kopf.RawBody, dict(raw)))


def _needs_apply(
    want: Mapping[str, Any], live: Mapping[str, Any] | None, spec_in_line: bool = False
) -> bool:
    """The live child lacks something we render (`spec_in_line`: its spec is known to match,
    a cached copy without one)."""
    if live is None:
        return True
    return not (
        is_subset(want["metadata"].get("labels", {}), live["metadata"].get("labels", {}))
        and is_subset(want["metadata"]["annotations"], live["metadata"].get("annotations", {}))
        and is_subset(want["metadata"]["ownerReferences"], live["metadata"].get("ownerReferences"))
        and (spec_in_line or is_subset(want["spec"], live.get("spec", {})))
    )


def _live_child(
    want: Mapping[str, Any], fresh: bool, get: Callable[[str, str], dict[str, Any] | None]
) -> tuple[dict[str, Any] | None, bool]:
    """The live child and whether its spec is known to be `want`'s: from the watch cache when
    it knows that (a reconcile brought by an event), else read (`fresh`: the resync, the
    safety net for whatever the cache missed)."""
    key = key_of(want)
    if not fresh:
        cached = CHILDREN.in_line(key, want["spec"])
        if cached is not None:
            return cached, True
    live = get(key[1], key[2])
    CHILDREN.fetched(key, live)
    return live, False


def _confirm(want: Mapping[str, Any], live: Mapping[str, Any] | None, in_line: bool) -> None:
    """Remember a read child whose spec matched the render (the next event needs no GET)."""
    if live is not None and not in_line:
        CHILDREN.fetched(key_of(want), live, in_line_with=want["spec"])


def _write_status(
    kube: Kube, body: Mapping[str, Any], status: LLMServiceStatus, previous: Mapping[str, Any]
) -> bool:
    """Write status if it changed, only over the object version it is due for.

    The observation behind `status` is fresh; the copy of the object may not be (another
    trigger wrote status since it was read). On a conflict: if the spec moved on, the newer
    generation's reconcile reports it and this one writes nothing; if not, the status is
    written once more over the fresh copy.
    """
    meta = body["metadata"]
    for _ in range(2):
        new = to_wire(status)
        new["conditions"] = merge_conditions(
            new["conditions"], previous.get("conditions") or [], _now()
        )
        old_view = without_times({k: previous.get(k) for k in new})
        if old_view == without_times(new):
            return False
        if kube.patch_llmservice_status(
            meta["namespace"], meta["name"], new, resource_version=meta.get("resourceVersion")
        ):
            return True
        fresh = kube.get_llmservice(meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("generation") != meta.get("generation"):
            return False  # deleted, or a newer spec whose own reconcile reports on it
        meta, previous = fresh["metadata"], fresh.get("status") or {}
    raise kopf.TemporaryError("status changed under two writes in a row", delay=1)


class BackedOff(kopf.TemporaryError):
    """A retry whose delay reconcile() already chose from the attempt number (kept as is)."""


def backoff_delay(attempt: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Exponential back-off with full jitter: retries of many objects never march in step."""
    return random.uniform(base / 2, min(cap, base * 2 ** max(attempt, 0)))


def reconcile(
    kube: Kube, body: Mapping[str, Any], trigger: str, attempt: int = 0
) -> dict[str, Any]:
    """Converge one LLMService. Raises kopf errors; returns the status it wrote."""
    meta = body["metadata"]
    previous: Mapping[str, Any] = body.get("status") or {}
    generation = meta.get("generation")
    started = time.perf_counter()
    try:
        svc = parse({k: v for k, v in body.items() if k != "status"})
    except InvalidSpecError as exc:
        message = str(exc)
        if _write_status(kube, body, invalid_status(generation, message, previous), previous):
            kube.post_event(body, "Warning", "InvalidSpec", message)
        metrics.RECONCILES.labels(result="invalid").inc()
        raise kopf.PermanentError(f"invalid spec: {message}") from None

    children = {obj["kind"]: obj for obj in render(svc)}
    code = children.pop("ConfigMap")  # shared by the namespace: no owner (render/code.py)
    rayservice = _owned(children["RayService"], body)
    policy = _owned(children["NetworkPolicy"], body) if "NetworkPolicy" in children else None
    name, namespace = rayservice["metadata"]["name"], rayservice["metadata"]["namespace"]
    fresh = trigger == "resync"
    try:
        live, rs_in_line = _live_child(rayservice, fresh, kube.get_rayservice)
    except KubeRayMissing as exc:
        return _wait_for_kuberay(kube, body, svc, str(exc), previous, attempt)
    if policy is not None:
        live_policy, np_in_line = _live_child(policy, fresh, kube.get_networkpolicy)
    else:  # switched off: is one of ours still there to delete?
        live_policy, np_in_line = kube.get_networkpolicy(namespace, name), False
    leftovers = [(obj, uid) for obj in (live, live_policy) if obj and (uid := leftover(obj, meta))]
    if leftovers:
        return _remove_leftovers(kube, body, svc, leftovers, previous, attempt)
    conflict = foreign(live, meta.get("uid")) or (
        foreign(live_policy, meta.get("uid")) if policy is not None else None
    )
    if conflict is not None:
        return _refuse_foreign(kube, body, svc, conflict, previous)
    # Which versions run: the spec's alone, or what a rollout decides from the live config,
    # Serve and the gate (a layout that keeps the live version's slot, or two versions).
    p = plan(svc.spec)
    decision = canary.plan_rollout(kube, svc, p, live, previous)
    if decision.layout is not None:
        rayservice = _owned(render_rayservice(svc, decision.layout), body)
        rs_in_line = (
            rs_in_line and CHILDREN.in_line(key_of(rayservice), rayservice["spec"]) is not None
        )
        p = plan(svc.spec, extra_replicas(decision.layout, p))
    apply_error: str | None = None
    # What this reconcile wrote, in one Applied event: an event is a write too, and at 10,000
    # creates one per child cost the API server ~240 s of request time (bench/operator_bench.py).
    applied: list[str] = []
    why = trigger
    new_generation = False  # this reconcile wrote a RayService generation KubeRay has not seen
    needs_apply = _needs_apply(rayservice, live, rs_in_line)
    starts_canary = decision.layout is not None and len(decision.layout.arms) > len(
        live_arms(live)[0]
    )
    held = (
        _no_room(kube, rayservice, live, starts_canary) if needs_apply and not rs_in_line else None
    )
    if held is not None:
        # The old cluster keeps serving; nothing of this change is applied to it, and a canary
        # that could not start has not started.
        p = plan(svc.spec)
        kept = previous.get("rollout")
        decision = dataclasses.replace(
            decision, rollout=RolloutStatus.model_validate(kept) if kept else None, events=()
        )
    elif needs_apply:
        action = "created" if live is None else "updated"
        try:
            CODE.ensure(kube, code, recheck=fresh)  # before the pods that mount it
            before = _generation(live)
            live = kube.apply_rayservice(rayservice)
            CHILDREN.written(live, rayservice["spec"])
            new_generation = before is None or before != _generation(live)
        except kopf.PermanentError as exc:
            # Refused by the API server (RBAC, admission, no KubeRay CRD): say so in status,
            # and retry with back-off: a fixed RBAC or an installed KubeRay heals it.
            apply_error = str(exc)
        else:
            hash_ = rayservice["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]
            applied.append(f"RayService {name} {action}")
            why = f"{trigger}, spec hash {hash_}"
            metrics.APPLIES.labels(action=action).inc()
    else:
        _confirm(rayservice, live, rs_in_line)
        try:  # running pods may restart: their code must be there (someone may delete it)
            CODE.ensure(kube, code, recheck=fresh)
        except kopf.PermanentError as exc:
            apply_error = str(exc)
    if held is None and apply_error is None:
        for event in decision.events:  # what the rollout decided (a step, a rollback)
            kube.post_event(body, event.type, event.reason, event.message)
    try:
        # After the RayService: the policy's own watch event then finds both children in place.
        applied += _sync_policy(kube, body, policy, live_policy, np_in_line)
    except kopf.PermanentError as exc:
        apply_error = "; ".join(filter(None, [apply_error, str(exc)]))
    if applied:
        kube.post_event(body, "Normal", "Applied", f"{', '.join(applied)} ({why})")

    model_app = model_app_name(svc.spec, decision.layout)
    obs = observe(kube, body, svc, p, live, apply_error, model_app, new_generation)
    rolled_back = decision.rollout is not None and (
        decision.rollout.rolled_back_hash == canary.wanted(svc, plan(svc.spec)).hash
        and decision.rollout.phase == RolloutPhase.ROLLED_BACK
    )
    obs = dataclasses.replace(
        obs, insufficient_capacity=held, rollout=decision.rollout, canary_rolled_back=rolled_back
    )
    status = compute_status(_desired(svc, p), obs, previous)
    changed = _write_status(kube, body, status, previous)
    if status.warnings and status.warnings != previous.get("warnings"):
        kube.post_event(body, "Warning", "UnsafeSpec", "; ".join(status.warnings))
    if held is not None:
        if changed:
            kube.post_event(body, "Warning", "InsufficientCapacity", held)
        metrics.RECONCILES.labels(result="held").inc()
        # Looked at again with back-off (and by every resync): freed or added nodes start it.
        raise BackedOff(held, delay=backoff_delay(attempt, cap=60.0))
    if apply_error is not None:
        if changed:
            kube.post_event(body, "Warning", "ApplyFailed", apply_error)
        metrics.RECONCILES.labels(result="apply_failed").inc()
        raise BackedOff(apply_error, delay=backoff_delay(attempt))
    metrics.RECONCILES.labels(result="ok").inc()
    metrics.LATENCY.observe(time.perf_counter() - started)
    return to_wire(status)


def _no_room(
    kube: Kube, want: Mapping[str, Any], live: Mapping[str, Any] | None, starts_canary: bool
) -> str | None:
    """What is missing for the pods that applying `want` over `live` would add: a second Ray
    cluster (a surge), or a starting canary's workers (None: nothing added, it fits, or RBAC
    does not let us look: then KubeRay goes ahead as always)."""
    if live is None:
        return None
    if capacity.surges(want, live):
        shapes = capacity.pod_shapes(want)
    elif starts_canary:
        shapes = capacity.added_workers(want, live)
    else:
        return None
    if not shapes:
        return None
    room = kube.nodes_and_pods()
    if room is None:
        log.info("capacity not checked: no permission to list nodes and pods")
        return None
    missing = capacity.shortfall(shapes, capacity.node_rooms(*room))
    return capacity.describe(missing) if missing else None


def _sync_policy(
    kube: Kube,
    body: Mapping[str, Any],
    want: dict[str, Any] | None,
    live: Mapping[str, Any] | None,
    in_line: bool = False,
) -> list[str]:
    """Apply the rendered NetworkPolicy when it drifted; delete ours when it was switched off.
    Returns what was applied, for the reconcile's one Applied event."""
    meta = body["metadata"]
    if want is None:
        if live is not None and foreign(live, meta.get("uid")) is None:
            live_meta = live["metadata"]
            kube.delete_networkpolicy(live_meta["namespace"], live_meta["name"], live_meta["uid"])
            CHILDREN.fetched(key_of(live), None)
            kube.post_event(body, "Normal", "Deleted", f"NetworkPolicy {live_meta['name']} deleted")
        return []
    if not _needs_apply(want, live, in_line):
        _confirm(want, live, in_line)
        return []
    CHILDREN.written(kube.apply_networkpolicy(want), want["spec"])
    action = "created" if live is None else "updated"
    return [f"NetworkPolicy {want['metadata']['name']} {action}"]


def _wait_for_kuberay(
    kube: Kube,
    body: Mapping[str, Any],
    svc: LLMService,
    message: str,
    previous: Mapping[str, Any],
    attempt: int,
) -> NoReturn:
    """Say KubeRay is missing, apply nothing, and look again soon (it may be installed any time)."""
    status = compute_status(
        _desired(svc, plan(svc.spec)),
        Observation(rayservice=None, kuberay_missing=message),
        previous,
    )
    if _write_status(kube, body, status, previous):
        kube.post_event(body, "Warning", "KubeRayMissing", message)
    metrics.RECONCILES.labels(result="kuberay_missing").inc()
    # A short cap: installing KubeRay is the fix, and it should show within a minute.
    raise BackedOff(message, delay=backoff_delay(attempt, cap=60.0))


def _remove_leftovers(
    kube: Kube,
    body: Mapping[str, Any],
    svc: LLMService,
    leftovers: Sequence[tuple[Mapping[str, Any], str]],
    previous: Mapping[str, Any],
    attempt: int,
) -> NoReturn:
    """Delete what a deleted LLMService of this name left behind (what the garbage collector
    would do), then create ours: `kubectl delete` and `apply` in a row must just work."""
    for obj, uid in leftovers:
        meta = obj["metadata"]
        _delete_child(kube, obj)
        kube.post_event(
            body, "Normal", "Replacing",
            f"{obj.get('kind')} {meta['name']} of the deleted LLMService {meta['name']} "
            f"(uid {uid}) deleted: its garbage collection had not happened yet",
        )  # fmt: skip
    status = compute_status(_desired(svc, plan(svc.spec)), Observation(rayservice=None), previous)
    _write_status(kube, body, status, previous)
    metrics.RECONCILES.labels(result="leftover").inc()
    # Its deletion event brings the next reconcile; the retry is the safety net for a
    # deletion that waits on KubeRay's finalizer.
    raise BackedOff(
        "replacing the children of a deleted LLMService",
        delay=backoff_delay(attempt, base=2.0, cap=30.0),
    )


def _refuse_foreign(
    kube: Kube,
    body: Mapping[str, Any],
    svc: LLMService,
    conflict: str,
    previous: Mapping[str, Any],
) -> NoReturn:
    """Leave someone else's RayService alone, say so, and let the resync look again later."""
    status = compute_status(
        _desired(svc, plan(svc.spec)), Observation(rayservice=None, conflict=conflict), previous
    )
    if _write_status(kube, body, status, previous):
        kube.post_event(body, "Warning", "Conflict", conflict)
    metrics.RECONCILES.labels(result="conflict").inc()
    raise kopf.PermanentError(f"not adopting: {conflict}")


def _generation(obj: Mapping[str, Any] | None) -> int | None:
    return None if obj is None else (obj.get("metadata") or {}).get("generation")


def observe(
    kube: Kube,
    body: Mapping[str, Any],
    svc: LLMService,
    p: Plan,
    live: Mapping[str, Any] | None,
    apply_error: str | None,
    model_app: str,
    new_generation: bool = False,
) -> Observation:
    """Read the RayClusters and Ray's Serve state; keep worker-group sizes in line on the way.

    ``model_app`` is the Serve application of the version that serves (the stable one);
    ``new_generation``: this reconcile just wrote a RayService generation KubeRay has not seen."""
    if live is None:
        return Observation(rayservice=None, apply_error=apply_error)
    namespace = svc.metadata.namespace
    active_name, pending_name = cluster_names(live)
    rs_status = live.get("status") or {}
    upgrading = any(
        cond.get("type") == "UpgradeInProgress" and cond.get("status") == "True"
        for cond in rs_status.get("conditions") or []
    )
    # KubeRay compares an upgrading RayService only with its pending cluster and leaves the
    # active one as it was (it serves the old config); so do we. Before the first cluster is
    # promoted, the pending one is the only one.
    scaled = pending_name if (upgrading or active_name is None) else active_name
    clusters: dict[str, Cluster | None] = {}
    for role, cluster_name in (("active", active_name), ("pending", pending_name)):
        if cluster_name is None:
            clusters[role] = None
            continue
        raycluster = kube.get_raycluster(namespace, cluster_name)
        if raycluster is None:
            clusters[role] = None
            continue
        parsed = parse_cluster(raycluster)
        details = kube.serve_details(namespace, parsed.head_service)
        serve = parse_serve(details, SERVE_APP_NAME, model_app)
        if cluster_name == scaled:
            apps = (rs_status.get(f"{role}ServiceStatus") or {}).get("applicationStatuses")
            raycluster = _keep_sizes(kube, body, raycluster, p, serve, bool(apps))
            parsed = parse_cluster(raycluster)
        clusters[role] = dataclasses.replace(parsed, serve=serve)
    rejection = None
    rs_meta = live.get("metadata") or {}
    lagging = rs_status.get("observedGeneration") != rs_meta.get("generation")
    if lagging and rs_meta.get("uid") and not new_generation:
        # KubeRay refuses an invalid RayService before it writes any status: its Warning
        # event is the only place that says so. Not looked up right after writing a new
        # generation: KubeRay has not judged it yet, so any refusal there is of an older one;
        # and the lookup is a LIST that the API server answers by scanning every event of
        # the namespace (a burst of N creates made it O(N^2): at 4,000, 373 s of its time).
        rejection = kube.kuberay_rejection(namespace, str(rs_meta["uid"]))
    return Observation(
        rayservice=live,
        active=clusters["active"],
        pending=clusters["pending"],
        kuberay_rejection=rejection,
        apply_error=apply_error,
    )


def _keep_sizes(
    kube: Kube,
    body: Mapping[str, Any],
    raycluster: dict[str, Any],
    p: Plan,
    serve: ServeApp | None,
    serve_expected: bool,
) -> dict[str, Any]:
    """Patch the RayCluster's worker-group sizes to the plan (see ``scale``)."""
    wanted = scale.targets(p)
    if bool((raycluster.get("spec") or {}).get("enableInTreeAutoscaling")) != p.autoscaling:
        # Made for the other mode (a fixed <-> autoscaling switch KubeRay has not carried out
        # yet): its replacement comes sized from the RayService; a count here would fight Ray's
        # autoscaler, and bounds there would be meaningless.
        return raycluster
    if scale.in_line(raycluster, wanted):
        return raycluster
    meta = raycluster["metadata"]
    pods = [scale.WorkerPod(**pod) for pod in kube.worker_pods(meta["namespace"], meta["name"])]
    patch = scale.replica_patch(
        raycluster, wanted, serve=serve, serve_expected=serve_expected,
        serve_replicas=p.replicas, pods=pods,
    )  # fmt: skip
    if patch is None:
        return raycluster
    patched = kube.patch_raycluster(meta["namespace"], meta["name"], patch.ops)
    kube.post_event(body, "Normal", "Scaled", f"RayCluster {meta['name']}: {patch.summary}")
    metrics.CLUSTER_SCALES.labels(direction=patch.direction).inc()
    return patched


def _desired(svc: LLMService, p: Plan) -> Desired:
    return Desired(
        generation=svc.metadata.generation,
        version=svc.spec.model.version,
        replicas=p.replicas,
        rayservice_name=svc.metadata.name,
        namespace=svc.metadata.namespace,
        workers=None if p.autoscaling else sum(g.replicas or 0 for g in p.worker_groups),
        route_prefix=svc.spec.route_prefix,
        warnings=tuple(str(w) for w in warnings(svc.spec)),
    )


# --- kopf wiring -----------------------------------------------------------


# kopf's per-object workers: at most this many per reconcile thread (256 with the default 8),
# and how long one waits for its object's next event before it leaves.
QUEUE_WORKERS_PER_THREAD = 32
QUEUE_IDLE_S = 1.0
HANDLED = HandledGenerations()
PROGRESS = RetryProgress(prefix=c.GROUP)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Every kopf setting in one place, then the periodic resync."""
    config: OperatorConfig = memo.setdefault("config", OperatorConfig.from_env())
    in_cluster = config.load_kube_config()
    memo["kube"] = Kube(serve_direct=config.serve_api_direct(in_cluster))
    # Our own prefixes: kopf's bookkeeping never collides with another kopf operator's.
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    # kopf's diff base and handler progress in memory: a handled object is never patched for
    # kopf's sake (bookkeeping.py). Prefixed, for the wake-up annotation of a delayed retry.
    settings.persistence.progress_storage = PROGRESS
    settings.persistence.diffbase_storage = HANDLED
    # Watches end server-side before any proxy/LB idle timeout cuts them silently
    # (kopf docs, "configuration": watching.server_timeout / client_timeout).
    settings.watching.server_timeout = config.watch_server_timeout
    settings.watching.client_timeout = config.watch_server_timeout + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 30
    # Decisions are posted as Events explicitly (kopf.info/warn); kopf's own per-handler
    # chatter only from warnings up.
    settings.posting.level = logging.WARNING
    settings.peering.name = config.peering_name
    settings.peering.mandatory = False
    settings.execution.max_workers = config.max_workers
    # kopf runs one worker per object with events, and each worker's patch (then kopf's own
    # annotations, now only a retry's wake-up) takes a TLS connection of its own (kopf's pool is
    # unbounded, ~128 KiB each): at 4,000 creates at once 326 of them were traced. The bound
    # caps both; the watch waits
    # for a free worker. Workers leave 1 s after their object's last event (kopf: 5 s), so the
    # bound did not slow a burst (bench/operator_bench.py, README "Scale").
    settings.queueing.worker_limit = QUEUE_WORKERS_PER_THREAD * config.max_workers
    settings.queueing.idle_timeout = QUEUE_IDLE_S
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    memo["resync"] = asyncio.create_task(_resync_forever(memo["kube"], config))
    memo["rollout_ticks"] = asyncio.create_task(_tick_rollouts_forever(memo["kube"], config))
    # KubeRay's refusals: one filtered watch per watched namespace (all: one for the cluster).
    memo["refusals_stop"] = stop = threading.Event()
    kube: Kube = memo["kube"]
    for scope in config.namespaces or [""]:
        threading.Thread(
            target=keep_watching,
            args=(kube, kube.refusals, scope, stop, lambda ns, name: _on_refusal(kube, ns, name)),
            name=f"refusals-{scope or 'all'}", daemon=True,
        ).start()  # fmt: skip


def _on_refusal(kube: Kube, namespace: str, rayservice: str) -> None:
    """KubeRay just refused a RayService: say so in its LLMService's status now, not at the
    next resync (a refusal changes nothing on the RayService, so no child event comes)."""
    live = kube.get_rayservice(namespace, rayservice)
    owner = ((live or {}).get("metadata") or {}).get("labels", {}).get(c.LABEL_LLMSERVICE)
    if owner:
        _reconcile_owner(kube, namespace, str(owner), None, "kuberay-refusal", log)


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    for task in (memo.get("resync"), memo.get("rollout_ticks")):
        if task is not None:
            task.cancel()
    stop = memo.get("refusals_stop")
    if stop is not None:
        stop.set()


async def _resync_forever(kube: Kube, config: OperatorConfig) -> None:
    """The safety net for missed events: reconcile every LLMService every interval.

    Not a kopf.timer: kopf puts a finalizer on every object that has a timer, and then a
    stopped operator would block `kubectl delete llmsvc`. Deletion must never need us.
    Nothing ends it but cancellation: every failure of a pass is logged and counted, and the
    next pass comes on time. Should it end anyway, the liveness probe fails (``resync_alive``).
    """
    while True:
        await asyncio.sleep(config.timer_interval)
        try:
            outcome = await _resync_pass(kube, config)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or an unclassified failure: never the end of the safety net
            log.exception("resync pass failed")
            outcome = "error"
        # Counted after the fact, so a reader that waits for two more passes knows a whole
        # pass began and ended meanwhile.
        metrics.RESYNC_PASSES.labels(outcome=outcome).inc()


async def _resync_pass(kube: Kube, config: OperatorConfig) -> str:
    outranked: set[str] = set()
    if not config.standalone:
        outranked = await asyncio.to_thread(
            kube.outranked, config.peering_name, config.namespaces, config.priority
        )
        watched = set(config.namespaces)
        if ALL_NAMESPACES in outranked or (watched and outranked >= watched):
            return "standby"  # a hot standby: the leading peer resyncs
    pages = kube.llmservice_pages(config.namespaces)
    while True:
        try:  # a page at a time: the next is listed once this one's objects are done
            bodies = await asyncio.to_thread(next, pages, None)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            log.warning("resync: %s", exc)
            return "list_failed"
        if bodies is None:
            return "ok"
        for body in bodies:
            meta = body["metadata"]
            if meta.get("deletionTimestamp") or meta.get("namespace") in outranked:
                continue
            try:
                await asyncio.to_thread(_counted, kube, body, "resync")
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.info("resync of %s: %s", meta["name"], exc)
            except Exception:  # one object's surprise must not starve the others
                log.exception("resync of %s failed", meta["name"])
                metrics.ERRORS.labels(kind="unexpected").inc()
        del bodies


@kopf.on.probe(id="resync")
def resync_alive(memo: kopf.Memo, **_: Any) -> str:
    """Liveness: the resync loop and the rollout ticker still run (the end of one would leave
    missed events unrepaired, or a canary stuck at its step)."""
    for key, what in (("resync", "the resync loop"), ("rollout_ticks", "the rollout ticker")):
        task = memo.get(key)
        if task is None:
            return "starting"
        if task.done():
            raise kopf.PermanentError(f"{what} has stopped")
    return "running"


@kopf.on.resume(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.create(c.GROUP, c.VERSION, c.PLURAL)
@kopf.on.update(c.GROUP, c.VERSION, c.PLURAL, field="spec")
def on_llmservice(body: kopf.Body, memo: kopf.Memo, reason: str, retry: int, **_: Any) -> None:
    try:
        _counted(memo["kube"], body, trigger=str(reason), attempt=retry)
    except BackedOff:
        raise  # its delay already grows with the attempt
    except kopf.TemporaryError as exc:
        # kopf retries after exc.delay: back off exponentially with jitter, so a flapping API
        # server is not hammered and many objects do not retry in step.
        delay = max(exc.delay or 0.0, backoff_delay(retry))
        raise kopf.TemporaryError(str(exc), delay=delay) from exc


def _rolling_out(status: Mapping[str, Any]) -> bool:
    """A canary runs, or its application still has to go: look again every tick."""
    rollout = status.get("rollout") or {}
    return rollout.get("phase") in ACTIVE_PHASES or bool(rollout.get("canaryApp"))


# The LLMServices a rollout is under way for, as the status each reconcile wrote says: the
# rollout ticker's list. Not a kopf.timer: kopf keeps the whole body of every object a timer
# might need (~15 KiB each, 150 MiB at 10,000) and puts a finalizer on those it runs for.
_ROLLING: set[tuple[str, str]] = set()


def _track_rollout(key: tuple[str, str], status: Mapping[str, Any]) -> None:
    if _rolling_out(status):
        _ROLLING.add(key)
    else:
        _ROLLING.discard(key)


def rolling_out() -> list[tuple[str, str]]:
    """The (namespace, name) of every LLMService the ticker looks at (sorted)."""
    return sorted(_ROLLING)


async def _tick_rollouts_forever(kube: Kube, config: OperatorConfig) -> None:
    """A canary's clock: steps, the gate and rollbacks happen on these ticks, not on events.

    Every TICK_S after the previous tick ended, each LLMService with a rollout under way is
    reconciled, side by side (the objects' locks keep each one whole). Like the resync, only
    cancellation ends it.
    """
    while True:
        await asyncio.sleep(canary.TICK_S)
        keys = rolling_out()
        if not keys:
            continue
        try:
            outranked: set[str] = set()
            if not config.standalone:
                outranked = await asyncio.to_thread(
                    kube.outranked, config.peering_name, config.namespaces, config.priority
                )
            due = [k for k in keys if k[0] not in outranked and ALL_NAMESPACES not in outranked]
            results = await asyncio.gather(
                *(
                    asyncio.to_thread(_reconcile_owner, kube, ns, name, None, "rollout-tick", log)
                    for ns, name in due
                ),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. the peering read failed: the next tick comes on time
            log.exception("rollout tick failed")
            continue
        for (ns, name), result in zip(due, results, strict=True):
            if isinstance(result, Exception):
                log.error("rollout tick of %s/%s failed: %r", ns, name, result)
                metrics.ERRORS.labels(kind="unexpected").inc()


# One reconcile per object at a time, whichever trigger (kopf's handler, a child's event, the
# resync) brought it: they run on different threads and would otherwise interleave their reads
# and writes. Per object, so different objects still reconcile in parallel.
_LOCKS: dict[tuple[str, str], threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
# (uid, generation) each object was last reconciled at: a trigger holding an older copy of the
# spec (a resync pass listed it before an edit) must not apply it over the newer one.
_RECONCILED: dict[tuple[str, str], tuple[str, int]] = {}


def object_lock(namespace: str, name: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((namespace, name), threading.RLock())


# The latest state of every owned child: watch events and our own writes (see ``children``).
CHILDREN = Children()


@kopf.on.event(c.GROUP, c.VERSION, c.PLURAL)
async def on_llmservice_event(
    body: kopf.Body, memo: kopf.Memo, type: str | None = None, **_: Any
) -> None:
    """A deleted LLMService: drop its bookkeeping, and remove its children at once.

    The garbage collector removes them too, but it acts in seconds at best and, after API
    server trouble, its retries back off for many minutes; meanwhile a leftover RayService
    holds GPUs and blocks an LLMService of the same name.
    """
    if type != "DELETED":
        return
    meta = body["metadata"]
    namespace, name, uid = str(meta["namespace"]), str(meta["name"]), meta.get("uid")
    forget(namespace, name)
    if uid:
        HANDLED.forget(str(uid))
        PROGRESS.forget(str(uid))
        await asyncio.to_thread(collect_children, memo["kube"], namespace, name, str(uid))


def forget(namespace: str, name: str) -> None:
    """Drop the per-object bookkeeping of a deleted LLMService (churn must not grow memory).

    A reconcile still holding the old lock finishes on it; a new object of the same name gets
    a new one (and its own UID, which `_stale` compares).
    """
    with _LOCKS_GUARD:
        _LOCKS.pop((namespace, name), None)
    _RECONCILED.pop((namespace, name), None)
    _ROLLING.discard((namespace, name))
    CHILDREN.forget(namespace, name)
    canary.forget(namespace, name)


def _delete_child(kube: Kube, child: Mapping[str, Any]) -> None:
    """Delete this very child (its UID as precondition) and forget it."""
    meta = child["metadata"]
    delete = (
        kube.delete_networkpolicy
        if child.get("kind") == "NetworkPolicy"
        else kube.delete_rayservice
    )
    delete(meta["namespace"], meta["name"], meta["uid"])
    CHILDREN.fetched(key_of(child), None)


def collect_children(kube: Kube, namespace: str, name: str, uid: str) -> None:
    """Delete the children the LLMService `uid` controls (the garbage collector's job, done
    early). Only those: a child it does not control, or one being deleted, is left alone, and
    each delete carries the child's UID as a precondition."""
    for get in (kube.get_rayservice, kube.get_networkpolicy):
        try:
            child = get(namespace, name)
            if child is None or controlling_llmservice(child, name) != uid:
                continue  # gone, going, orphaned by choice, or not the deleted LLMService's
            _delete_child(kube, child)
            log.info(
                "%s/%s: deleted the %s of the deleted LLMService",
                namespace,
                name,
                child.get("kind"),
            )
        except (KubeRayMissing, kopf.TemporaryError, kopf.PermanentError) as exc:
            log.warning("%s/%s: left to the garbage collector: %s", namespace, name, exc)


def _stale(key: tuple[str, str], meta: Mapping[str, Any]) -> bool:
    seen = _RECONCILED.get(key)
    generation = meta.get("generation")
    if seen is None or generation is None or seen[0] != meta.get("uid"):
        return False
    return int(generation) < seen[1]


def _counted(kube: Kube, body: Mapping[str, Any], trigger: str, attempt: int = 0) -> None:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    with object_lock(*key):
        if _stale(key, meta):
            log.debug("%s/%s: skipping an older copy of the spec (%s)", *key, trigger)
            return
        try:
            _track_rollout(key, reconcile(kube, body, trigger, attempt))
        except kopf.TemporaryError:
            metrics.ERRORS.labels(kind="temporary").inc()
            raise
        except kopf.PermanentError:
            metrics.ERRORS.labels(kind="permanent").inc()
            raise
        finally:
            if meta.get("uid") and meta.get("generation") is not None:
                _RECONCILED[key] = (str(meta["uid"]), int(meta["generation"]))


@kopf.on.event(RAY_GROUP, RAY_VERSION, RAYSERVICES, labels={c.LABEL_MANAGED_BY: c.FIELD_MANAGER})
@kopf.on.event(
    "networking.k8s.io", "v1", "networkpolicies", labels={c.LABEL_MANAGED_BY: c.FIELD_MANAGER}
)
async def on_child(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    type: str | None = None,  # kopf passes the watch event type by this name
    **_: Any,
) -> None:
    """Any change to an owned child: KubeRay status, a hand edit, a delete (drift repair).

    Async so that the filter runs on the event loop at once: as a sync handler each event
    (a whole RayService body) waited for a worker thread behind the reconciles, and after a
    burst of creates thousands of them, mostly echoes of our own applies, sat in memory.
    """
    owner = body["metadata"].get("labels", {}).get(c.LABEL_LLMSERVICE)
    if not owner or CHILDREN.observed(body, type):
        return  # not ours, or the echo of our own write (nothing the writer did not know)
    namespace = str(body["metadata"]["namespace"])
    trigger = f"{str(body.get('kind', 'child')).lower()}-event"
    controller = controlling_llmservice(body, owner)
    # An echo can overtake our write's own bookkeeping (the event comes in while the applying
    # thread is still on its way back): looked at again under the object's lock.
    echo = None if type == "DELETED" else (key_of(body), body["metadata"].get("resourceVersion"))
    del body  # only the names are needed from here: the parent is read fresh
    await asyncio.to_thread(
        _reconcile_owner, memo["kube"], namespace, owner, controller, trigger, logger, echo
    )


def _reconcile_owner(
    kube: Kube,
    namespace: str,
    owner: str,
    controller: str | None,
    trigger: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    echo: tuple[Key, str | None] | None = None,
) -> None:
    try:
        # The parent is read under its lock: a reconcile that ran meanwhile is then seen whole.
        with object_lock(namespace, owner):
            if echo is not None and CHILDREN.ours(*echo):
                return  # what our own apply wrote: that reconcile knew it all
            parent = kube.get_llmservice(namespace, owner)
            if parent is None and controller is not None:
                # Its LLMService was deleted while we were not watching (a restart lists
                # every child): remove what it left, as the garbage collector would.
                collect_children(kube, namespace, owner, controller)
                return
            if parent is None or parent["metadata"].get("deletionTimestamp"):
                return  # the owner is going: garbage collection removes the child
            _counted(kube, parent, trigger=trigger)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        # Event handlers are not retried: the LLMService's own handlers and timer are.
        logger.warning("not reconciling %s now: %s", owner, exc)
