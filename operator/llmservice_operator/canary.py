"""The reads a rollout decision needs: Serve's view of the versions, and the gate's numbers.

``rollout.decide`` is pure; this module gathers its inputs for one reconcile. Serve's state and
the router's metrics are read only while two versions are live or a new one is wanted under
Canary, so a steady service costs nothing more than before.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from llmservice_operator.api.models import (
    AnalysisStatus,
    LLMService,
    RolloutStatus,
    RolloutStrategy,
)
from llmservice_operator.gate import History, Totals, parse_metrics, stats, verdict
from llmservice_operator.k8s import Kube
from llmservice_operator.observe import (
    LiveArm,
    cluster_names,
    direct_arm,
    live_arms,
    parse_cluster,
    parse_serve,
    router_state,
    router_weights,
    serves_direct,
)
from llmservice_operator.plan import Plan
from llmservice_operator.render import STABLE_SLOT, Arm, Layout, app_args, deployment_args
from llmservice_operator.rollout import (
    Decision,
    RolloutPhase,
    View,
    Wanted,
    config_hash,
    decide,
    epoch,
    iso,
    version_of,
)
from serve_app.naming import version_app

log = logging.getLogger(__name__)

# How often a running canary is looked at (the kopf timer's interval, and the slack a window
# may miss its length by: scrapes happen on these ticks).
TICK_S = 10.0

# Scrapes of the router's metrics per LLMService (namespace, name, uid): the gate's windows.
_HISTORY: dict[tuple[str, str, str], History] = {}
_HISTORY_GUARD = threading.Lock()


def forget(namespace: str, name: str) -> None:
    with _HISTORY_GUARD:
        for key in [k for k in _HISTORY if k[:2] == (namespace, name)]:
            del _HISTORY[key]


def wanted(svc: LLMService, p: Plan) -> Wanted:
    args = app_args(svc, p).model_dump(mode="json", exclude_none=True)
    return Wanted(args, deployment_args(svc.spec, p))


def plan_rollout(
    kube: Kube,
    svc: LLMService,
    p: Plan,
    live: Mapping[str, Any] | None,
    previous: Mapping[str, Any],
) -> Decision:
    """Which versions to run now (see ``rollout.decide``)."""
    memory_raw = previous.get("rollout")
    memory = RolloutStatus.model_validate(memory_raw) if memory_raw else None
    want = wanted(svc, p)
    arms, sticky = live_arms(live)
    if svc.spec.rollout.strategy is RolloutStrategy.CANARY and not arms:
        current = direct_arm(live)
        if current is not None and config_hash(current.args) != want.hash:
            return _onto_router(current, want)
    view = View(arms, sticky, None, {})
    now = time.time()
    canary_wanted = (
        svc.spec.rollout.strategy is RolloutStrategy.CANARY
        and bool(arms)
        and config_hash(arms[0].args) != want.hash
    )
    analysis = None
    if len(arms) > 1 or canary_wanted:
        details = _serve_details(kube, svc.metadata.namespace, live)
        apps = {
            version_app(a.slot): app
            for a in arms
            if (app := parse_serve(details, version_app(a.slot), version_app(a.slot))) is not None
        }
        if canary_wanted and len(arms) == 1 and serves_direct(details):
            # The move onto the router is applied, but Serve still runs the fast path (KubeRay's
            # second cluster is not serving yet): the canary waits for the router.
            return _onto_router(arms[0], want)
        view = View(arms, sticky, router_weights(details), apps, router_state(details))
        if len(arms) > 1 and memory is not None:
            analysis = _analyze(kube, svc, live, memory, now)
    decision = decide(svc.spec, want, view, memory, analysis, now)
    default = Layout((Arm(STABLE_SLOT, dict(want.args), want.deployment, 100.0),))
    if decision.layout == default:  # the renderer's own: no second render
        return dataclasses.replace(decision, layout=None)
    return decision


def _onto_router(current: LiveArm, want: Wanted) -> Decision:
    """A canary asked of a service on the fast path (direct streaming: no router, one version).

    The traffic split needs the router, so the live version (``current``) first moves onto it,
    unchanged; the Ray containers' environment changes with it, which KubeRay carries out with
    a second Ray cluster that takes the traffic once it serves. The canary then starts from
    there, as from any router config. Without this step the new version would replace the old
    one in that roll, with no canary at all.
    """
    version = version_of(current.args) or "the live version"
    rollout = RolloutStatus(
        strategy=RolloutStrategy.CANARY.value,
        phase=RolloutPhase.PROGRESSING.value,
        message=f"moving {version} onto the router before the canary (a canary needs it; "
        "the fast path has none): KubeRay rolls the Ray cluster once",
    )
    layout = Layout((Arm(STABLE_SLOT, dict(current.args), want.deployment, 100.0),))
    return Decision(layout, rollout)


def _serve_details(
    kube: Kube, namespace: str, live: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    active, _ = cluster_names(live)
    if active is None:
        return None
    raycluster = kube.get_raycluster(namespace, active)
    if raycluster is None:
        return None
    return kube.serve_details(namespace, parse_cluster(raycluster).head_service)


def _analyze(
    kube: Kube,
    svc: LLMService,
    live: Mapping[str, Any] | None,
    memory: RolloutStatus,
    now: float,
) -> Any:
    """The gate over the current step's window (None before the step started)."""
    if not memory.step or memory.stable_app is None or memory.canary_app is None:
        return None
    active, _ = cluster_names(live)
    if active is None:
        return None
    spec = svc.spec.rollout.canary_or_default().analysis
    texts = kube.ray_pod_metrics(svc.metadata.namespace, active)
    key = (svc.metadata.namespace, svc.metadata.name, svc.metadata.uid or "")
    with _HISTORY_GUARD:
        history = _HISTORY.setdefault(key, History())
        history.add(now, parse_metrics(texts), keep_s=spec.window_seconds + 2 * TICK_S)
        since = epoch(memory.step_started) if memory.step_started else now
        covered, window = history.window(now, spec.window_seconds, since)
    stable_totals = _sum(window, memory.stable_app)
    canary_totals = _sum(window, memory.canary_app)
    full = covered >= spec.window_seconds - TICK_S
    result, reason = verdict(spec, stable_totals, canary_totals, full)
    return result, AnalysisStatus(
        time=iso(now),
        window_seconds=round(covered, 1),
        verdict=result.value,
        reason=reason,
        stable=stats(stable_totals, memory.stable_version),
        canary=stats(canary_totals, memory.canary_version),
    )


def _sum(window: Mapping[tuple[str, str], Totals], app: str) -> Totals:
    out = Totals()
    for (name, _version), totals in window.items():
        if name == app:
            out.add(totals)
    return out
