"""What is really running, read from the objects and from Ray itself. Pure parsing, no I/O.

KubeRay's RayService says which RayClusters are active and pending and whether the serve Service
has endpoints; only Ray knows which Serve replicas run and which config they run. The operator
reads Ray Serve's REST API (``GET /api/serve/applications/?api_type=declarative`` on the head's
dashboard, through the API server's service proxy, the same call KubeRay makes with
``--use-kubernetes-proxy``) and hands the parsed result to ``status`` and ``scale``. Anything
that could not be read is ``None``: it counts as nothing running, never as the last thing seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml

from llmservice_operator import constants as c
from llmservice_operator.api.models import RolloutStatus
from serve_app.naming import (
    DIRECT_APP_IMPORT_PATH,
    LLM_DEPLOYMENT_PREFIX,
    ROUTER_APP,
    ROUTER_DEPLOYMENT,
    SLOTS,
)


class AppState(StrEnum):
    """Ray Serve's ApplicationStatus values."""

    NOT_STARTED = "NOT_STARTED"
    DEPLOYING = "DEPLOYING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    UNHEALTHY = "UNHEALTHY"
    DELETING = "DELETING"


FAILED_APP_STATES = frozenset({AppState.DEPLOY_FAILED.value, AppState.UNHEALTHY.value})
# Serve's DeploymentStatus while only the replica count moves (same config, same version).
SCALING_STATES = frozenset({"UPSCALING", "DOWNSCALING"})
REPLICA_RUNNING = "RUNNING"
DEPLOYMENT_HEALTHY = "HEALTHY"


@dataclass(frozen=True)
class Replica:
    """One Serve replica of the model deployment."""

    state: str
    node_ip: str | None


@dataclass(frozen=True)
class ServeApp:
    """One Serve application as Ray reports it."""

    status: str
    message: str
    version: str | None  # model_version in the config Serve runs (deployed_app_config.args)
    deployment_status: str | None  # the model (LLMServer) deployment's status
    target_replicas: int | None
    replicas: tuple[Replica, ...] = ()

    @property
    def running_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.state == REPLICA_RUNNING)

    @property
    def settled(self) -> bool:
        """The app runs its deployed config: every deployment HEALTHY at its target."""
        return self.status == AppState.RUNNING and self.deployment_status in (
            None,
            DEPLOYMENT_HEALTHY,
        )

    def replica_ips(self) -> set[str]:
        return {r.node_ip for r in self.replicas if r.node_ip}


@dataclass(frozen=True)
class Cluster:
    """One RayCluster of the RayService and what runs on it."""

    name: str
    ready_workers: int  # worker pods Running and ready (KubeRay's readyWorkerReplicas)
    failure: str | None  # KubeRay's ReplicaFailure condition or a failed state, with its message
    head_service: str
    serve: ServeApp | None = None  # None: Ray's Serve API did not answer (or no app yet)


@dataclass(frozen=True)
class Observation:
    """Everything the status is built from, read in one reconcile."""

    rayservice: Mapping[str, Any] | None
    active: Cluster | None = None
    pending: Cluster | None = None
    kuberay_rejection: str | None = None  # KubeRay's InvalidRayService* event message
    apply_error: str | None = None  # the API server refused our apply
    conflict: str | None = None  # a same-named RayService that this LLMService does not control
    kuberay_missing: str | None = None  # the API server does not serve ray.io RayServices
    insufficient_capacity: str | None = None  # a change that surges, held: what does not fit
    rollout: RolloutStatus | None = None  # the canary rollout's state, as decided this time
    canary_rolled_back: bool = False  # the spec's version is one the gate rolled back


def is_subset(want: Any, have: Any) -> bool:
    """True if every field we render is present with the same value in the live object.

    The live object also holds API-server defaults and fields other managers own (KubeRay,
    the Ray autoscaler): those are not drift.
    """
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and is_subset(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have)


def foreign(child: Mapping[str, Any] | None, owner_uid: str | None) -> str | None:
    """Why a live child (RayService, NetworkPolicy) is not ours to change (None: ours, or none).

    Ours means controlled by this very LLMService (its UID, not just its name): an object
    made by hand, by another tool, or for an earlier LLMService of the same name that the
    garbage collector has not removed yet, is never adopted or overwritten.
    """
    if child is None or owner_uid is None:
        return None
    meta = child.get("metadata") or {}
    controller = _controller(child)
    if controller is not None and controller.get("uid") == owner_uid:
        return None
    what = f"{child.get('kind') or 'RayService'} {meta.get('name')}"
    if controller is None:
        return f"{what} exists and no LLMService controls it"
    return (
        f"{what} is controlled by {controller.get('kind')} "
        f"{controller.get('name')} (uid {controller.get('uid')})"
    )


def _controller(child: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The child's controlling owner reference, if any."""
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def controlling_llmservice(child: Mapping[str, Any] | None, name: str) -> str | None:
    """The UID of the LLMService `name` that controls `child` (None: another controller, none,
    or the child is already being deleted)."""
    if child is None or (child.get("metadata") or {}).get("deletionTimestamp"):
        return None
    controller = _controller(child)
    if controller is None:
        return None
    group = str(controller.get("apiVersion") or "").split("/")[0]
    ours = (controller.get("kind"), group, controller.get("name")) == (c.KIND, c.GROUP, name)
    uid = controller.get("uid")
    return str(uid) if ours and uid else None


def leftover(child: Mapping[str, Any] | None, owner: Mapping[str, Any]) -> str | None:
    """The UID of the deleted LLMService of the same name that controls `child`, if so.

    Names are unique and UIDs never come back: a child whose controller is an LLMService of
    this name and namespace with another UID belongs to one that was deleted. The garbage
    collector removes it in time, but after API server trouble its retries back off for many
    minutes; until then it blocks the new LLMService of that name.
    """
    uid = controlling_llmservice(child, str(owner.get("name")))
    return uid if uid is not None and uid != owner.get("uid") else None


def cluster_names(rayservice: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(active, pending) RayCluster names from KubeRay's RayService status."""
    status = (rayservice or {}).get("status") or {}
    active = (status.get("activeServiceStatus") or {}).get("rayClusterName") or None
    pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName") or None
    return active, pending


def parse_cluster(raycluster: Mapping[str, Any]) -> Cluster:
    meta = raycluster.get("metadata") or {}
    status = raycluster.get("status") or {}
    failure = None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            failure = f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(" :")
    if failure is None and status.get("state") == "failed":
        failure = str(status.get("reason") or "RayCluster failed")
    name = str(meta.get("name"))
    head_service = ((status.get("head") or {}).get("serviceName")) or f"{name}-head-svc"
    return Cluster(
        name=name,
        ready_workers=int(status.get("readyWorkerReplicas") or 0),
        failure=failure,
        head_service=head_service,
    )


def _worst(apps: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The application that says most about trouble: failed first, then not yet running."""
    for app in apps:
        if app.get("status") in FAILED_APP_STATES:
            return app
    for app in apps:
        if app.get("status") != AppState.RUNNING:
            return app
    return apps[0]


def parse_serve(
    details: Mapping[str, Any] | None, app_name: str, model_app: str | None = None
) -> ServeApp | None:
    """The model's applications in Ray Serve's ``/api/serve/applications/`` answer.

    ``app_name`` owns the route; ``model_app`` runs the model when that is another application
    (the router layout, see serve_app/router.py). Status is the worse of the two, version and
    replicas are the model's.
    """
    if not details:
        return None
    found = details.get("applications") or {}
    names = [model_app, app_name] if model_app and model_app != app_name else [app_name]
    if not any(isinstance(found.get(n), Mapping) for n in names):
        return None
    apps: list[Mapping[str, Any]] = [
        found[n]
        if isinstance(found.get(n), Mapping)
        else {"status": AppState.NOT_STARTED.value, "message": f"no Serve application {n!r} yet"}
        for n in names
    ]
    app = apps[0]  # the model's
    config = app.get("deployed_app_config") or {}
    version = (config.get("args") or {}).get("model_version")
    model_dep: Mapping[str, Any] | None = None
    for name, dep in (app.get("deployments") or {}).items():
        if str(name).startswith(LLM_DEPLOYMENT_PREFIX) and isinstance(dep, Mapping):
            model_dep = dep
            break
    replicas: tuple[Replica, ...] = ()
    if model_dep is not None:
        replicas = tuple(
            Replica(state=str(r.get("state")), node_ip=r.get("node_ip"))
            for r in model_dep.get("replicas") or []
        )
    worst = _worst(apps)
    return ServeApp(
        status=str(worst.get("status") or AppState.NOT_STARTED),
        message=str(worst.get("message") or ""),
        version=None if version is None else str(version),
        deployment_status=None if model_dep is None else str(model_dep.get("status")),
        target_replicas=None if model_dep is None else model_dep.get("target_num_replicas"),
        replicas=replicas,
    )


# --- the versions a rollout runs ---------------------------------------------------------

# libyaml's loader when present: every reconcile reads the live Serve config.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class LiveArm:
    """One version as the live RayService's Serve config has it (what was last applied)."""

    slot: str
    args: Mapping[str, Any]  # the model application's args
    options: Mapping[str, Any]  # its model deployment's options (counts)
    weight: float


def live_arms(rayservice: Mapping[str, Any] | None) -> tuple[tuple[LiveArm, ...], str | None]:
    """The versions in a RayService's serveConfigV2, stable first, and the sticky header.

    Empty when the config has no router (direct streaming, or one rendered before it).
    """
    text = ((rayservice or {}).get("spec") or {}).get("serveConfigV2")
    if not isinstance(text, str):
        return (), None
    try:
        apps = {a["name"]: a for a in yaml.load(text, Loader=_LOADER)["applications"]}
        router = apps[ROUTER_APP]
        (split,) = [
            d["user_config"]
            for d in router.get("deployments") or []
            if d["name"] == ROUTER_DEPLOYMENT
        ]
        arms = tuple(
            LiveArm(
                slot=arm["app"].removeprefix(f"{ROUTER_APP}-"),
                args=apps[arm["app"]]["args"],
                options=(apps[arm["app"]].get("deployments") or [{}])[0],
                weight=float(arm["weight"]),
            )
            for arm in split["arms"]
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return (), None
    return arms, split.get("sticky_header")


def direct_arm(rayservice: Mapping[str, Any] | None) -> LiveArm | None:
    """The one version of a serveConfigV2 in the direct-streaming layout (the model's replica
    is the ingress: one application, no router), or None for any other config."""
    text = ((rayservice or {}).get("spec") or {}).get("serveConfigV2")
    if not isinstance(text, str):
        return None
    try:
        (app,) = yaml.load(text, Loader=_LOADER)["applications"]
        if app["name"] != ROUTER_APP or app["import_path"] != DIRECT_APP_IMPORT_PATH:
            return None
        return LiveArm(
            slot=SLOTS[0],
            args=app["args"],
            options=(app.get("deployments") or [{}])[0],
            weight=100.0,
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def serves_direct(details: Mapping[str, Any] | None) -> bool:
    """Whether Serve's route application runs the direct-streaming app (the fast path)."""
    app = ((details or {}).get("applications") or {}).get(ROUTER_APP)
    if not isinstance(app, Mapping):
        return False
    config = app.get("deployed_app_config") or {}
    return bool(config.get("import_path") == DIRECT_APP_IMPORT_PATH)


def router_state(details: Mapping[str, Any] | None) -> str:
    """Why ``router_weights`` has no answer, in Serve's words ("" when it has one)."""
    if details is None:
        return "no answer from Ray's dashboard"
    app = (details.get("applications") or {}).get(ROUTER_APP)
    if not isinstance(app, Mapping):
        return f"no Serve application {ROUTER_APP!r}"
    deployment = (app.get("deployments") or {}).get(ROUTER_DEPLOYMENT) or {}
    if app.get("status") != AppState.RUNNING or deployment.get("status") != DEPLOYMENT_HEALTHY:
        said = f"router application {app.get('status')}, deployment {deployment.get('status')}"
        message = str(app.get("message") or deployment.get("message") or "").strip()
        return f"{said}: {message[:200]}" if message else said
    return ""


def router_weights(details: Mapping[str, Any] | None) -> dict[str, float] | None:
    """The weights the router runs now, by application (None: not settled on a config yet)."""
    app = ((details or {}).get("applications") or {}).get(ROUTER_APP)
    if not isinstance(app, Mapping) or app.get("status") != AppState.RUNNING:
        return None
    deployment = (app.get("deployments") or {}).get(ROUTER_DEPLOYMENT) or {}
    if deployment.get("status") != DEPLOYMENT_HEALTHY:
        return None
    for options in (app.get("deployed_app_config") or {}).get("deployments") or []:
        if options.get("name") == ROUTER_DEPLOYMENT:
            arms = (options.get("user_config") or {}).get("arms") or []
            return {str(a["app"]): float(a["weight"]) for a in arms}
    return None
