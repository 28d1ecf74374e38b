"""Observations as the operator reads them (RayService, RayClusters, Ray Serve), for unit tests."""

from __future__ import annotations

from typing import Any

from llmservice_operator import status as st
from llmservice_operator.observe import Cluster, Observation, Replica, ServeApp


def rayservice(
    ready: str | None = "True",
    reason: str = "NonZeroServeEndpoints",
    upgrading: str = "False",
    caught_up: bool = True,
    active: str | None = "m-abc",
    pending: str | None = None,
) -> dict[str, Any]:
    conds: list[dict[str, Any]] = [
        {"type": "UpgradeInProgress", "status": upgrading, "reason": "NoPendingCluster"}
    ]
    if ready is not None:
        conds.append({"type": "Ready", "status": ready, "reason": reason, "message": ""})
    return {
        "metadata": {"generation": 5, "uid": "rs-uid"},
        "status": {
            "observedGeneration": 5 if caught_up else 4,
            "conditions": conds,
            "activeServiceStatus": {"rayClusterName": active} if active else {},
            "pendingServiceStatus": {"rayClusterName": pending} if pending else {},
        },
    }


def serve(
    status: str = "RUNNING",
    running: int = 2,
    version: str | None = "v2",
    deployment: str = "HEALTHY",
    target: int | None = None,
    message: str = "",
    starting: int = 0,
) -> ServeApp:
    replicas = tuple(Replica("RUNNING", f"10.0.0.{i}") for i in range(running)) + tuple(
        Replica("STARTING", None) for _ in range(starting)
    )
    return ServeApp(
        status=status,
        message=message,
        version=version,
        deployment_status=deployment,
        target_replicas=running + starting if target is None else target,
        replicas=replicas,
    )


def cluster(
    name: str = "m-abc",
    app: ServeApp | None = None,
    ready_workers: int = 2,
    failure: str | None = None,
) -> Cluster:
    return Cluster(
        name=name,
        ready_workers=ready_workers,
        failure=failure,
        head_service=f"{name}-head-svc",
        serve=app,
    )


def observation(
    rs: dict[str, Any] | None = None,
    app: ServeApp | None = None,
    pending: Cluster | None = None,
    active: Cluster | None = None,
    **kw: Any,
) -> Observation:
    rs = rs if rs is not None else rayservice()
    if active is None and (rs.get("status") or {}).get("activeServiceStatus"):
        active = cluster(app=app)
    return Observation(rayservice=rs, active=active, pending=pending, **kw)


def status(desired: st.Desired, obs: Observation, previous: Any = None) -> dict[str, Any]:
    """compute_status as the API stores it (camelCase dict)."""
    return st.to_wire(st.compute_status(desired, obs, previous))
