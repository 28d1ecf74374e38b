"""LLMService status from what was observed: conditions shaped like metav1.Condition.

Pure functions: the operator reads the RayService, its RayClusters and Ray Serve's own state
(``observe``), calls ``compute_status``, and writes the result only when it differs from what is
stored. Nothing here is inferred from what was asked for: a replica is ready when Ray reports
its Serve replica RUNNING, a version is active when the Serve app runs it, and until then the
LLMService says Progressing. KubeRay's own ``Ready`` only means "the serve Service has
endpoints", so it is one input, never the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from llmservice_operator import constants as c
from llmservice_operator.api.models import Condition, LLMServiceStatus
from llmservice_operator.observe import (
    FAILED_APP_STATES,
    SCALING_STATES,
    AppState,
    Cluster,
    Observation,
    ServeApp,
)


class ConditionType(StrEnum):
    #: True when at least one Serve replica of the model runs and the serve Service has endpoints.
    READY = "Ready"
    #: True while what runs differs from the spec (creating, scaling, deploying, upgrading).
    PROGRESSING = "Progressing"
    #: True when something failed and will not heal by waiting (see the reason).
    DEGRADED = "Degraded"


class Reason(StrEnum):
    #: Set when the spec fails validation; nothing is applied.
    INVALID_SPEC = "InvalidSpec"
    #: Set when the API server refused to apply the RayService (403, 422, no KubeRay CRD).
    APPLY_FAILED = "ApplyFailed"
    #: Set when the RayService or its first RayCluster does not exist yet.
    CREATING = "Creating"
    #: Set when KubeRay has not yet acted on the RayService's current generation.
    WAITING_FOR_KUBERAY = "WaitingForKubeRay"
    #: Set while the Serve app deploys or updates in place (a new config or version).
    DEPLOYING = "Deploying"
    #: Set while Serve replicas or worker pods differ from the wanted count.
    SCALING = "Scaling"
    #: Set while KubeRay brings up a new RayCluster and has not switched traffic to it.
    UPGRADING = "Upgrading"
    #: Set when a Serve replica of the model runs and the serve Service has endpoints.
    SERVING = "Serving"
    #: Set when no Serve replica of the model runs or the serve Service has no endpoints.
    NOT_SERVING = "NotServing"
    #: Set when what runs matches the spec.
    RECONCILED = "Reconciled"
    #: Set when Ray Serve reports the app DEPLOY_FAILED or UNHEALTHY (active or pending).
    DEPLOY_FAILED = "ServeDeployFailed"
    #: Set when KubeRay gave up initializing the RayService (its InitializingTimeout).
    INITIALIZING_TIMEOUT = "InitializingTimeout"
    #: Set when KubeRay reports a RayCluster failure (ReplicaFailure condition, failed state).
    RAY_CLUSTER_FAILED = "RayClusterFailed"
    #: Set when KubeRay rejected the RayService (its InvalidRayServiceSpec/Metadata event).
    VALIDATION_FAILED = "ValidationFailed"
    #: Set when a RayService of the same name exists that this LLMService does not control.
    CONFLICT = "Conflict"
    #: Set when the API server does not serve KubeRay's RayService (KubeRay's CRDs are absent).
    KUBERAY_MISSING = "KubeRayMissing"
    #: Set when a change that brings up a second Ray cluster is held: its pods do not fit the
    #: free capacity of their node pools (the old cluster keeps serving).
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    #: Set while a canary takes a share of requests and steps toward 100 % (Progressing).
    CANARY = "CanaryProgressing"
    #: Set while spec.rollout.paused holds a canary at its step (Progressing).
    CANARY_PAUSED = "CanaryPaused"
    #: Set when the gate rolled the spec's version back: the stable version serves every
    #: request until the spec changes (Degraded).
    CANARY_ROLLED_BACK = "CanaryRolledBack"
    #: Set when nothing failed.
    HEALTHY = "Healthy"


class Phase(StrEnum):
    #: Set before the first RayCluster exists.
    PENDING = "Pending"
    #: Set while a change is under way (Progressing True) or held for capacity, nothing failed.
    PROGRESSING = "Progressing"
    #: Set when Ready is True and Progressing is False.
    READY = "Ready"
    #: Set when Degraded is True.
    FAILED = "Failed"


_FIX_IT = "fix the spec to continue"
_CREATING = "creating the RayService"
_RENAME = "left untouched: rename the LLMService or remove the other RayService"
_INSTALL = "install KubeRay (its CRDs and operator); the operator picks it up without a restart"


@dataclass(frozen=True)
class Desired:
    """What the operator asked for in this generation."""

    generation: int | None
    version: str | None
    replicas: int | None  # None when autoscaling
    rayservice_name: str
    namespace: str
    workers: int | None = None  # worker pods the plan wants (None when autoscaling)
    route_prefix: str = "/"
    warnings: tuple[str, ...] = ()  # validate.warnings of the spec, "path: reason" each


# Rollout phases (llmservice_operator.rollout.RolloutPhase) in which a canary is under way.
_CANARY_RUNNING = ("Progressing", "Paused")


def _cond(
    ctype: ConditionType, ok: bool, reason: Reason, message: str, generation: int | None
) -> Condition:
    # lastTransitionTime is settled by merge_conditions against the stored conditions.
    return Condition(
        type=ctype.value,
        status="True" if ok else "False",
        reason=reason.value,
        message=message,
        observed_generation=generation,
        last_transition_time="",
    )


def _rs_condition(rayservice: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in (rayservice.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def endpoint(desired: Desired) -> str:
    """In-cluster OpenAI base URL: KubeRay's serve Service for the RayService."""
    prefix = desired.route_prefix.rstrip("/")
    return (
        f"http://{desired.rayservice_name}-serve-svc.{desired.namespace}.svc:"
        f"{c.SERVE_PORT}{prefix}/v1"
    )


def _app_failure(label: str, serve: ServeApp | None) -> str | None:
    if serve is None or serve.status not in FAILED_APP_STATES:
        return None
    return f"{label} Serve app {serve.status}: {serve.message}".strip(" :")


def _degraded(obs: Observation, rs_ready: Mapping[str, Any] | None) -> tuple[Reason, str] | None:
    """The first failure that waiting will not fix, with KubeRay's or Ray's own message."""
    if obs.kuberay_rejection:
        return Reason.VALIDATION_FAILED, obs.kuberay_rejection
    for label, cluster in (("active", obs.active), ("pending", obs.pending)):
        if cluster is None:
            continue
        failed = _app_failure(f"{label} cluster {cluster.name}:", cluster.serve)
        if failed:
            return Reason.DEPLOY_FAILED, failed
        if cluster.failure:
            message = f"{label} RayCluster {cluster.name}: {cluster.failure}"
            return Reason.RAY_CLUSTER_FAILED, message
    if rs_ready and rs_ready.get("reason") == Reason.INITIALIZING_TIMEOUT.value:
        return Reason.INITIALIZING_TIMEOUT, str(rs_ready.get("message") or "")
    return None


def _progress(
    desired: Desired, obs: Observation, serve: ServeApp | None, active: Cluster | None
) -> tuple[Reason, str] | None:
    """Why what runs differs from the spec, or None when it does not."""
    rayservice = obs.rayservice or {}
    upgrading = _rs_condition(rayservice, "UpgradeInProgress")
    if active is None:
        return Reason.CREATING, "waiting for KubeRay's first RayCluster"
    if upgrading and upgrading.get("status") == "True":
        pending = obs.pending.name if obs.pending else "a new RayCluster"
        version = f"version {desired.version} " if desired.version else ""
        message = f"rolling out {version}on {pending}; {active.name} serves until it is ready"
        return Reason.UPGRADING, message
    rs_meta = rayservice.get("metadata") or {}
    if (rayservice.get("status") or {}).get("observedGeneration") != rs_meta.get("generation"):
        return Reason.WAITING_FOR_KUBERAY, "KubeRay has not acted on the latest RayService yet"
    if serve is None:
        return Reason.DEPLOYING, "waiting for the Serve app on the Ray cluster"
    if serve.status == AppState.RUNNING and serve.deployment_status in SCALING_STATES:
        want = serve.target_replicas
        return Reason.SCALING, f"Serve {serve.deployment_status}: {serve.running_replicas}/{want}"
    if not serve.settled:
        dep = f", model deployment {serve.deployment_status}" if serve.deployment_status else ""
        return Reason.DEPLOYING, f"Serve app {serve.status}{dep}"
    if desired.version is not None and serve.version != desired.version:
        return Reason.DEPLOYING, f"Serve runs version {serve.version}, want {desired.version}"
    if desired.replicas is not None and serve.running_replicas != desired.replicas:
        return Reason.SCALING, f"{serve.running_replicas}/{desired.replicas} Serve replicas running"
    if desired.workers is not None and active.ready_workers != desired.workers:
        return Reason.SCALING, f"{active.ready_workers}/{desired.workers} worker pods ready"
    return None


def _status(
    desired: Desired,
    *,
    phase: Phase,
    ready_replicas: int,
    active_version: str | None,
    pending_version: str | None,
    conditions: list[Condition],
    endpoint: str | None = None,
    serve: ServeApp | None = None,
) -> LLMServiceStatus:
    # The scale subresource's current count: the fixed count, or what Serve's autoscaler
    # targets right now (unknown while Ray does not answer).
    replicas = desired.replicas
    if replicas is None and serve is not None:
        replicas = serve.target_replicas
    return LLMServiceStatus(
        phase=phase.value,
        conditions=conditions,
        observed_generation=desired.generation,
        replicas=replicas,
        ready_replicas=ready_replicas,
        selector=f"{c.LABEL_LLMSERVICE}={desired.rayservice_name}",
        endpoint=endpoint,
        active_version=active_version,
        pending_version=pending_version,
        ray_service_name=desired.rayservice_name,
        warnings=list(desired.warnings) or None,
    )


def _blocked(
    desired: Desired,
    previous: Mapping[str, Any],
    phase: Phase,
    reason: Reason,
    message: str,
    next_step: str,
) -> LLMServiceStatus:
    """Nothing was applied and nothing of ours runs: say why, and what would unblock it."""
    gen = desired.generation
    return _status(
        desired,
        phase=phase,
        ready_replicas=0,
        active_version=previous.get("activeVersion"),
        pending_version=desired.version,
        conditions=[
            _cond(ConditionType.READY, False, reason, message, gen),
            _cond(ConditionType.PROGRESSING, False, reason, next_step, gen),
            _cond(ConditionType.DEGRADED, True, reason, message, gen),
        ],
    )


def compute_status(
    desired: Desired, obs: Observation, previous: Mapping[str, Any] | None
) -> LLMServiceStatus:
    """The LLMService status from one observation (see ``merge_conditions`` for times)."""
    previous = previous or {}
    gen = desired.generation
    active = obs.active
    serve = active.serve if active else None
    ready_replicas = serve.running_replicas if serve else 0
    settled_version = serve.version if serve is not None and serve.settled else None
    active_version = settled_version or previous.get("activeVersion")
    # Pending: the spec names a version the Serve app has not yet settled on (a scale or a
    # config change of the same version is not a version change).
    pending_version = (
        desired.version
        if desired.version is not None and active_version != desired.version
        else None
    )

    if obs.conflict is not None:
        return _blocked(desired, previous, Phase.FAILED, Reason.CONFLICT, obs.conflict, _RENAME)
    if obs.kuberay_missing is not None:
        return _blocked(
            desired, previous, Phase.PENDING, Reason.KUBERAY_MISSING, obs.kuberay_missing, _INSTALL
        )
    if obs.apply_error is not None:
        msg = obs.apply_error
        return _status(
            desired,
            phase=Phase.FAILED,
            ready_replicas=ready_replicas,
            active_version=active_version,
            pending_version=pending_version,
            conditions=[
                _cond(ConditionType.READY, False, Reason.APPLY_FAILED, msg, gen),
                _cond(ConditionType.PROGRESSING, False, Reason.APPLY_FAILED, "retrying", gen),
                _cond(ConditionType.DEGRADED, True, Reason.APPLY_FAILED, msg, gen),
            ],
        )
    if obs.rayservice is None:
        return _status(
            desired,
            phase=Phase.PENDING,
            ready_replicas=0,
            active_version=previous.get("activeVersion"),
            pending_version=desired.version,
            conditions=[
                _cond(ConditionType.READY, False, Reason.CREATING, "no RayService yet", gen),
                _cond(ConditionType.PROGRESSING, True, Reason.CREATING, _CREATING, gen),
                _cond(ConditionType.DEGRADED, False, Reason.HEALTHY, "", gen),
            ],
        )

    rs_ready = _rs_condition(obs.rayservice, "Ready")
    endpoints = bool(rs_ready and rs_ready.get("status") == "True")
    serving = endpoints and ready_replicas > 0
    if serving:
        ready = _cond(
            ConditionType.READY, True, Reason.SERVING,
            f"{ready_replicas} Serve replica(s) running, serve Service has endpoints", gen,
        )  # fmt: skip
    else:
        why = (
            "serve Service has no endpoints"
            if ready_replicas
            else "no Serve replica of the model is running"
        )
        kuberay = (rs_ready or {}).get("reason")
        ready = _cond(
            ConditionType.READY, False, Reason.NOT_SERVING,
            f"{why} (KubeRay: {kuberay})" if kuberay else why, gen,
        )  # fmt: skip
    progress = _progress(desired, obs, serve, active)
    rollout = obs.rollout
    # Under way while a canary steps, and until a canary's application is gone again (its
    # traffic taken back first: an abort or a rollback is not done before that).
    if (
        rollout is not None
        and active is not None
        and (rollout.phase in _CANARY_RUNNING or rollout.canary_app)
    ):
        paused = rollout.phase == _CANARY_RUNNING[1]
        progress = (Reason.CANARY_PAUSED if paused else Reason.CANARY, rollout.message)
    if obs.canary_rolled_back:
        why = rollout.message if rollout is not None else "rolled back"
        pending_version = None
        if rollout is None or not rollout.canary_app:
            progress = None  # nothing is under way: the stable version runs as it should
    if obs.insufficient_capacity is not None:
        held = f"{obs.insufficient_capacity}; the change starts when they fit"
        prog = _cond(ConditionType.PROGRESSING, False, Reason.INSUFFICIENT_CAPACITY, held, gen)
    elif progress is None:
        prog = _cond(ConditionType.PROGRESSING, False, Reason.RECONCILED, "", gen)
    else:
        prog = _cond(ConditionType.PROGRESSING, True, progress[0], progress[1], gen)
    failure = _degraded(obs, rs_ready)
    if failure is None and obs.canary_rolled_back:
        failure = (Reason.CANARY_ROLLED_BACK, f"{why}; change the spec to roll out again")
    if failure is None:
        degraded = _cond(ConditionType.DEGRADED, False, Reason.HEALTHY, "", gen)
    else:
        degraded = _cond(ConditionType.DEGRADED, True, failure[0], failure[1], gen)

    if failure is not None:
        phase = Phase.FAILED
    elif serving and progress is None and obs.insufficient_capacity is None:
        phase = Phase.READY
    elif active is None:
        phase = Phase.PENDING
    else:
        phase = Phase.PROGRESSING
    out = _status(
        desired,
        phase=phase,
        ready_replicas=ready_replicas,
        endpoint=endpoint(desired) if serving else None,
        serve=serve,
        active_version=active_version,
        pending_version=pending_version,
        conditions=[ready, prog, degraded],
    )
    return out.model_copy(update={"rollout": rollout}) if rollout is not None else out


def invalid_status(
    generation: int | None, message: str, previous: Mapping[str, Any] | None
) -> LLMServiceStatus:
    """Status for a spec that cannot be rendered: nothing is applied, the old child stays."""
    kept = {k: v for k, v in (previous or {}).items() if k != "conditions"}
    old = LLMServiceStatus.model_validate(kept)
    return old.model_copy(
        update={
            "observed_generation": generation,
            "phase": Phase.FAILED.value,
            "conditions": [
                _cond(ConditionType.READY, False, Reason.INVALID_SPEC, message, generation),
                _cond(ConditionType.PROGRESSING, False, Reason.INVALID_SPEC, _FIX_IT, generation),
                _cond(ConditionType.DEGRADED, True, Reason.INVALID_SPEC, message, generation),
            ],
        }
    )


def to_wire(status: LLMServiceStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase; unset optional fields written as null)."""
    out: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return out


def merge_conditions(
    new: Sequence[Mapping[str, Any]], old: Sequence[Mapping[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Set lastTransitionTime: kept while a condition's status is unchanged, ``now`` otherwise."""
    before = {o.get("type"): o for o in old}
    out = []
    for cond in new:
        prev = before.get(cond["type"])
        same = prev is not None and prev.get("status") == cond["status"]
        stamp = prev.get("lastTransitionTime") if same and prev else None
        out.append({**cond, "lastTransitionTime": stamp or now})
    return out


def without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """Status minus timestamps, to decide whether anything worth writing changed."""
    conds = [
        {k: v for k, v in cond.items() if k != "lastTransitionTime"}
        for cond in status.get("conditions") or []
    ]
    return {**status, "conditions": conds}
