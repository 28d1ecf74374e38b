"""LLMService status from the real RayService: conditions shaped like metav1.Condition.

Pure functions: the operator reads the objects, calls ``compute_status``, and writes the result
only when it differs from what is stored. Ready means what KubeRay's own RayService ``Ready``
condition means: the Serve app is running and at least one Serve endpoint takes traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from llmservice_operator import constants as c

# Condition types.
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"

# Reasons: every reason this operator writes, in one place.
REASON_INVALID_SPEC: Final = "InvalidSpec"
REASON_APPLY_FAILED: Final = "ApplyFailed"
REASON_CREATING: Final = "Creating"
REASON_INITIALIZING: Final = "Initializing"
REASON_UPGRADING: Final = "Upgrading"
REASON_SERVING: Final = "Serving"
REASON_NOT_SERVING: Final = "NotServing"
REASON_RECONCILED: Final = "Reconciled"
REASON_DEPLOY_FAILED: Final = "ServeDeployFailed"
REASON_INITIALIZING_TIMEOUT: Final = "InitializingTimeout"
REASON_HEALTHY: Final = "Healthy"

PHASE_PENDING: Final = "Pending"
PHASE_PROGRESSING: Final = "Progressing"
PHASE_READY: Final = "Ready"
PHASE_FAILED: Final = "Failed"

_FAILED_APP_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


@dataclass(frozen=True)
class Desired:
    """What the operator asked for in this generation."""

    generation: int | None
    version: str | None
    replicas: int | None
    rayservice_name: str
    namespace: str


def _cond(
    ctype: str, ok: bool, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _rs_condition(rayservice: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in (rayservice.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def _failed_apps(rayservice: Mapping[str, Any]) -> list[str]:
    active = ((rayservice.get("status") or {}).get("activeServiceStatus") or {}).get(
        "applicationStatuses"
    ) or {}
    return [
        f"{name}: {app.get('status')} {app.get('message', '')}".strip()
        for name, app in active.items()
        if app.get("status") in _FAILED_APP_STATES
    ]


def endpoint(desired: Desired, route_prefix: str = "/") -> str:
    """In-cluster OpenAI base URL: KubeRay's serve Service for the RayService."""
    prefix = route_prefix.rstrip("/")
    return (
        f"http://{desired.rayservice_name}-serve-svc.{desired.namespace}.svc:"
        f"{c.SERVE_PORT}{prefix}/v1"
    )


def compute_status(
    desired: Desired,
    rayservice: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    route_prefix: str = "/",
) -> dict[str, Any]:
    """The LLMService status (without lastTransitionTime; see ``merge_conditions``)."""
    previous = previous or {}
    gen = desired.generation
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "replicas": desired.replicas,
        "rayServiceName": desired.rayservice_name,
        "selector": f"{c.LABEL_LLMSERVICE}={desired.rayservice_name}",
    }
    if rayservice is None:
        status.update(
            phase=PHASE_PENDING,
            readyReplicas=0,
            activeVersion=previous.get("activeVersion"),
            pendingVersion=desired.version,
            conditions=[
                _cond(READY, False, REASON_CREATING, "RayService not created yet", gen),
                _cond(PROGRESSING, True, REASON_CREATING, "creating the RayService", gen),
                _cond(DEGRADED, False, REASON_HEALTHY, "", gen),
            ],
        )
        return status

    rs_ready = _rs_condition(rayservice, "Ready")
    upgrading = _rs_condition(rayservice, "UpgradeInProgress")
    ready = bool(rs_ready and rs_ready.get("status") == "True")
    in_upgrade = bool(upgrading and upgrading.get("status") == "True")
    rs_meta = rayservice.get("metadata") or {}
    rs_status = rayservice.get("status") or {}
    caught_up = rs_status.get("observedGeneration") == rs_meta.get("generation")
    failed = _failed_apps(rayservice)
    timeout = bool(rs_ready and rs_ready.get("reason") == REASON_INITIALIZING_TIMEOUT)

    settled = ready and caught_up and not in_upgrade
    active = desired.version if settled else previous.get("activeVersion")
    status["activeVersion"] = active
    status["pendingVersion"] = None if settled else desired.version
    status["endpoint"] = endpoint(desired, route_prefix) if ready else None
    status["readyReplicas"] = (desired.replicas or 0) if settled else 0

    rs_reason = (rs_ready or {}).get("reason") or REASON_INITIALIZING
    rs_message = (rs_ready or {}).get("message") or ""
    if ready:
        ready_cond = _cond(READY, True, REASON_SERVING, "Serve app running and reachable", gen)
    else:
        ready_cond = _cond(
            READY,
            False,
            REASON_NOT_SERVING,
            f"RayService {rs_reason}: {rs_message}".strip(" :"),
            gen,
        )
    if in_upgrade:
        prog = _cond(
            PROGRESSING, True, REASON_UPGRADING,
            f"rolling out version {desired.version} on a new Ray cluster", gen,
        )  # fmt: skip
    elif not settled:
        prog = _cond(PROGRESSING, True, REASON_INITIALIZING, "waiting for the Serve app", gen)
    else:
        prog = _cond(PROGRESSING, False, REASON_RECONCILED, "", gen)
    if failed:
        degraded = _cond(DEGRADED, True, REASON_DEPLOY_FAILED, "; ".join(failed), gen)
    elif timeout:
        degraded = _cond(DEGRADED, True, REASON_INITIALIZING_TIMEOUT, rs_message, gen)
    else:
        degraded = _cond(DEGRADED, False, REASON_HEALTHY, "", gen)
    status["conditions"] = [ready_cond, prog, degraded]
    if failed or timeout:
        status["phase"] = PHASE_FAILED
    elif settled:
        status["phase"] = PHASE_READY
    else:
        status["phase"] = PHASE_PROGRESSING
    return status


def invalid_status(
    generation: int | None, message: str, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Status for a spec that cannot be rendered: nothing is applied, the old child stays."""
    previous = previous or {}
    return {
        **{k: v for k, v in previous.items() if k != "conditions"},
        "observedGeneration": generation,
        "phase": PHASE_FAILED,
        "conditions": [
            _cond(READY, False, REASON_INVALID_SPEC, message, generation),
            _cond(PROGRESSING, False, REASON_INVALID_SPEC, "fix the spec to continue", generation),
            _cond(DEGRADED, True, REASON_INVALID_SPEC, message, generation),
        ],
    }


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
