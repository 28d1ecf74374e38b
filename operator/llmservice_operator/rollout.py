"""Canary rollouts: which versions run and with which share, decided from what was observed.

Pure: the reconcile hands in the live RayService's versions (what was last applied), the
weights the router runs now (Ray Serve's own report), the state of each version's Serve
application, the gate's verdict and the rollout's memory (``status.rollout``); ``decide``
answers with the layout to render, the new ``status.rollout`` and the events to post.

Rules that keep users' requests whole:
- a version takes traffic only once its application runs, and is removed only once the
  router runs a weight of 0 for it (never in the same config change that takes its traffic);
- a step's analysis window starts when the router runs the step's weight and the canary runs
  the step's replica count, so start-up latency is never judged;
- the replicas follow the weights with one replica's worth of surge: at weight w of N, the
  canary runs ceil(N*w/100) (at least 1), the stable N - that + 1 (at least 1).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from llmservice_operator.api.models import (
    AnalysisStatus,
    LLMServiceSpec,
    RolloutStatus,
    RolloutStrategy,
)
from llmservice_operator.gate import Verdict
from llmservice_operator.observe import FAILED_APP_STATES, LiveArm, ServeApp
from llmservice_operator.render import Arm, Layout
from serve_app.args import AutoscalingArgs, DeploymentArgs
from serve_app.naming import SLOTS, version_app


class RolloutPhase(StrEnum):
    #: Set while a canary takes (or is about to take) a share of requests and steps on.
    PROGRESSING = "Progressing"
    #: Set while spec.rollout.paused holds a canary at its step.
    PAUSED = "Paused"
    #: Set once the canary became the stable version and the old version's app was removed.
    PROMOTED = "Promoted"
    #: Set when the gate failed: the stable version takes every request until the spec changes.
    ROLLED_BACK = "RolledBack"
    #: Set when the spec went back to the stable version (or left Canary) mid-rollout.
    ABORTED = "Aborted"


ACTIVE_PHASES = frozenset({RolloutPhase.PROGRESSING.value, RolloutPhase.PAUSED.value})


@dataclass(frozen=True)
class View:
    """What was observed of the versions."""

    arms: tuple[LiveArm, ...]  # the live RayService's, stable first (empty: none or no router)
    sticky: str | None
    weights: Mapping[str, float] | None  # the router's, by application (None: not settled)
    apps: Mapping[str, ServeApp]  # Serve's state of each version's application
    router: str = ""  # why `weights` is None, as Serve says (its router application's state)


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    layout: Layout | None  # None: the spec's own version, in slot a (nothing live to keep)
    rollout: RolloutStatus | None
    events: tuple[Event, ...] = field(default=())


def config_hash(args: Mapping[str, Any]) -> str:
    """Identity of a version's config (the model application's args)."""
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]


def split_counts(total: int, weight: float) -> tuple[int, int]:
    """(stable, canary) fixed replicas at ``weight`` percent: one replica of surge."""
    canary = max(1, math.ceil(total * weight / 100))
    return max(1, total - canary + 1), canary


def other_slot(slot: str) -> str:
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


def iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Wanted:
    """The spec's version: its args and counts (from the renderer)."""

    args: Mapping[str, Any]
    deployment: DeploymentArgs

    @property
    def hash(self) -> str:
        return config_hash(self.args)


def version_of(args: Mapping[str, Any]) -> str | None:
    v = args.get("model_version")
    return None if v is None else str(v)


class _Layouts:
    """Layouts of one rollout: the stable version as live, the canary as wanted."""

    def __init__(self, stable: LiveArm, wanted: Wanted, sticky: str | None) -> None:
        self.stable, self.wanted, self.sticky = stable, wanted, sticky

    def steady(self, slot: str, args: Mapping[str, Any]) -> Layout:
        return Layout((Arm(slot, dict(args), self.wanted.deployment, 100.0),), self.sticky)

    def counts(self, weight: float) -> tuple[DeploymentArgs, DeploymentArgs]:
        dep = self.wanted.deployment
        if dep.autoscaling is not None:  # each version autoscales on its own share
            floor = max(1, dep.autoscaling.min_replicas)
            canary = AutoscalingArgs(
                min_replicas=1,
                max_replicas=max(floor, dep.autoscaling.max_replicas),
                target_ongoing_requests=dep.autoscaling.target_ongoing_requests,
            )
            return dep, dep.model_copy(update={"autoscaling": canary})
        stable, canary_n = split_counts(dep.num_replicas or 1, weight)
        return (
            dep.model_copy(update={"num_replicas": stable}),
            dep.model_copy(update={"num_replicas": canary_n}),
        )

    def split(self, canary_slot: str, canary_args: Mapping[str, Any], weight: float) -> Layout:
        stable_dep, canary_dep = self.counts(weight)
        return Layout(
            (
                Arm(self.stable.slot, dict(self.stable.args), stable_dep, 100.0 - weight),
                Arm(canary_slot, dict(canary_args), canary_dep, weight),
            ),
            self.sticky,
        )


def decide(
    spec: LLMServiceSpec,
    wanted: Wanted,
    view: View,
    memory: RolloutStatus | None,
    analysis: tuple[Verdict, AnalysisStatus] | None,
    now: float,
) -> Decision:
    """The next layout and ``status.rollout`` (see the module's rules)."""
    if not view.arms:
        # Nothing live to keep (a new service, or a config from before the router): the
        # spec's version in the first slot, whatever the strategy.
        kept = memory if memory and memory.phase not in ACTIVE_PHASES else None
        return Decision(None, _one_version_runs(kept, None, None))
    stable = view.arms[0]
    live_canary = view.arms[1] if len(view.arms) > 1 else None
    canary_spec = spec.rollout.canary_or_default()
    sticky = canary_spec.sticky_header if spec.rollout.strategy is RolloutStrategy.CANARY else None
    layouts = _Layouts(stable, wanted, sticky)
    stable_hash = config_hash(stable.args)

    def removing(phase: RolloutPhase, why: str, settled_args: Mapping[str, Any]) -> Decision:
        """Take the live canary's traffic away, then remove it; then run `settled_args`."""
        base = memory or RolloutStatus(strategy=spec.rollout.strategy.value, phase=phase.value)
        if live_canary is not None:
            app = version_app(live_canary.slot)
            if (view.weights or {}).get(app, 1.0) != 0.0 or live_canary.weight != 0.0:
                message = why
                if phase is RolloutPhase.ABORTED:  # (a rollback's message is the gate's verdict)
                    message = f"{why}; {_taking_back(view, app)}"
                rollout = base.model_copy(
                    update={"phase": phase.value, "weight": _weight(view, app), "message": message}
                )
                return Decision(layouts.split(live_canary.slot, live_canary.args, 0.0), rollout)
        done = base.model_copy(
            update={
                "phase": phase.value,
                "weight": 0.0,
                "canary_app": None,
                "step_started": None,
                "message": why,
            }
        )
        return Decision(layouts.steady(stable.slot, settled_args), done)

    if spec.rollout.strategy is not RolloutStrategy.CANARY:
        if live_canary is not None:
            return removing(RolloutPhase.ABORTED, "strategy is no longer Canary", wanted.args)
        # InPlace and BlueGreen update the version where it runs (its slot stays).
        return Decision(layouts.steady(stable.slot, wanted.args), None)

    if wanted.hash == stable_hash:
        if live_canary is not None:
            return removing(
                RolloutPhase.ABORTED, "the spec is back to the stable version", stable.args
            )
        return Decision(
            layouts.steady(stable.slot, stable.args),
            _one_version_runs(memory, stable_hash, version_app(stable.slot)),
        )

    if memory is not None and memory.rolled_back_hash == wanted.hash:
        why = memory.message or "rolled back by the gate; change the spec to try again"
        return removing(RolloutPhase.ROLLED_BACK, why, stable.args)

    canary_slot = other_slot(stable.slot)
    canary_app = version_app(canary_slot)
    base = RolloutStatus(
        strategy=RolloutStrategy.CANARY.value,
        phase=RolloutPhase.PROGRESSING.value,
        steps=len(canary_spec.steps),
        stable_version=version_of(stable.args),
        canary_version=version_of(wanted.args),
        stable_app=version_app(stable.slot),
        canary_app=canary_app,
        canary_hash=wanted.hash,
    )
    ours = memory is not None and memory.canary_hash == wanted.hash
    if live_canary is None or config_hash(live_canary.args) != wanted.hash:
        if live_canary is not None and (
            live_canary.weight != 0.0 or (view.weights or {}).get(canary_app, 0.0) != 0.0
        ):
            # Another canary has traffic: take it away before its app is replaced.
            return Decision(
                layouts.split(live_canary.slot, live_canary.args, 0.0),
                base.model_copy(
                    update={
                        "step": 0,
                        "weight": _weight(view, canary_app),
                        "message": "the spec changed mid-rollout: the old canary's traffic "
                        "goes back to the stable version first",
                    }
                ),
            )
        version = base.canary_version or "the new config"
        return Decision(
            layouts.split(canary_slot, wanted.args, 0.0),
            base.model_copy(
                update={"step": 0, "weight": 0.0, "message": f"starting canary {version}"}
            ),
            (Event("Normal", "CanaryStarted", f"canary {version} starting in {canary_app}"),),
        )

    step = (memory.step or 0) if ours and memory is not None else 0
    target = float(canary_spec.steps[step - 1]) if step >= 1 else 0.0
    at_target = layouts.split(canary_slot, wanted.args, target)
    kept = memory if ours and memory is not None else base
    kept = kept.model_copy(update={"weight": _weight(view, canary_app), "steps": base.steps})
    state = view.apps.get(canary_app)
    if state is not None and state.status in FAILED_APP_STATES:
        why = f"canary app {state.status}: {state.message}".strip(": ")
        return _rolled_back(layouts, live_canary, kept, wanted, why, None)
    _, canary_dep = layouts.counts(target)
    settled = (
        view.weights is not None
        and view.weights.get(canary_app) == target
        and state is not None
        and state.settled
        and (canary_dep.num_replicas is None or state.running_replicas == canary_dep.num_replicas)
    )
    if not settled:
        message = f"step {step}: waiting for the router and the canary to run {target:g} %"
        if step == 0:
            message = f"waiting for canary {base.canary_version or ''} to run".replace("  ", " ")
        return Decision(at_target, kept.model_copy(update={"step": step, "message": message}))
    if step == 0:
        first = float(canary_spec.steps[0])
        return Decision(
            layouts.split(canary_slot, wanted.args, first),
            kept.model_copy(
                update={"step": 1, "step_started": None, "message": f"step 1: {first:g} %"}
            ),
            (Event("Normal", "CanaryStep", _step_text(1, canary_spec.steps)),),
        )
    started = kept.step_started or iso(now)
    kept = kept.model_copy(update={"step_started": started})
    if analysis is not None:
        kept = kept.model_copy(update={"last_analysis": analysis[1]})
        if analysis[0] is Verdict.FAIL:
            return _rolled_back(layouts, live_canary, kept, wanted, analysis[1].reason, analysis)
    if spec.rollout.paused:
        return Decision(
            at_target,
            kept.model_copy(
                update={"phase": RolloutPhase.PAUSED.value, "message": f"paused at {target:g} %"}
            ),
        )
    elapsed = now - epoch(started)
    passed = analysis is not None and analysis[0] is Verdict.PASS
    if elapsed < canary_spec.pause_seconds or not passed:
        wait = max(0.0, canary_spec.pause_seconds - elapsed)
        gate = analysis[1].reason if analysis is not None else "no analysis yet"
        message = f"step {step}: {target:g} %; {gate}" + (
            f"; {wait:.0f}s of pause left" if wait else ""
        )
        return Decision(
            at_target,
            kept.model_copy(update={"phase": RolloutPhase.PROGRESSING.value, "message": message}),
        )
    if step >= len(canary_spec.steps):
        version = base.canary_version or "the new config"
        promoted = kept.model_copy(
            update={
                "phase": RolloutPhase.PROMOTED.value,
                "stable_version": base.canary_version,
                "stable_app": canary_app,
                "canary_app": None,
                "step_started": None,
                "message": f"{version} promoted",
            }
        )
        return Decision(
            layouts.steady(canary_slot, wanted.args),
            promoted,
            (
                Event(
                    "Normal",
                    "CanaryPromoted",
                    f"{version} promoted: it takes every request; "
                    f"{version_app(stable.slot)} removed",
                ),
            ),
        )
    nxt = float(canary_spec.steps[step])
    return Decision(
        layouts.split(canary_slot, wanted.args, nxt),
        kept.model_copy(
            update={
                "phase": RolloutPhase.PROGRESSING.value,
                "step": step + 1,
                "step_started": None,
                "message": f"step {step + 1}: {nxt:g} %",
            }
        ),
        (Event("Normal", "CanaryStep", _step_text(step + 1, canary_spec.steps)),),
    )


def _rolled_back(
    layouts: _Layouts,
    live_canary: LiveArm | None,
    kept: RolloutStatus,
    wanted: Wanted,
    why: str,
    analysis: tuple[Verdict, AnalysisStatus] | None,
) -> Decision:
    assert live_canary is not None
    rollout = kept.model_copy(
        update={
            "phase": RolloutPhase.ROLLED_BACK.value,
            "rolled_back_hash": wanted.hash,
            "step_started": None,
            "message": f"rolled back: {why}",
        }
    )
    detail = ""
    if analysis is not None and analysis[1].canary is not None and analysis[1].stable is not None:
        c, s = analysis[1].canary, analysis[1].stable
        detail = (
            f" (canary {c.requests} answers, {c.errors} failed, TTFT p95 {c.ttft_p95_seconds}s; "
            f"stable {s.requests} answers, {s.errors} failed, TTFT p95 {s.ttft_p95_seconds}s)"
        )
    event = Event(
        "Warning",
        "CanaryRolledBack",
        f"canary {kept.canary_version or ''} rolled back: {why}{detail}".replace("  ", " "),
    )
    return Decision(layouts.split(live_canary.slot, live_canary.args, 0.0), rollout, (event,))


def _one_version_runs(
    memory: RolloutStatus | None, stable_hash: str | None, stable_app: str | None
) -> RolloutStatus | None:
    """The rollout's memory once the live config runs one version and the spec asks for it.

    The reconcile that removed a canary's application writes the memory saying so, but a
    reconcile can fail between its apply and its status write (a conflict, a timeout), and the
    next ones would then repeat a memory that still names the removed application: status
    "under way" for ever. What is live decides: no canary runs, so none is under way.
    """
    if memory is None or (memory.phase not in ACTIVE_PHASES and not memory.canary_app):
        return memory
    update: dict[str, Any] = {"canary_app": None, "weight": 0.0, "step_started": None}
    if memory.phase in ACTIVE_PHASES:
        if stable_hash is not None and memory.canary_hash == stable_hash:
            # The promotion's own write was lost: the canary's config is the one that runs.
            version = memory.canary_version or "the new config"
            update.update(
                phase=RolloutPhase.PROMOTED.value,
                stable_version=memory.canary_version,
                stable_app=stable_app,
                weight=100.0,
                message=f"{version} promoted",
            )
        else:
            update.update(
                phase=RolloutPhase.ABORTED.value, message="the spec is back to the stable version"
            )
    return memory.model_copy(update=update)


def _taking_back(view: View, app: str) -> str:
    """What taking a canary's share back waits for, as observed."""
    if view.weights is None:
        return f"waiting for Serve's router to run 0 % on {app} ({view.router or 'not settled'})"
    return f"taking the router's {view.weights.get(app, 0.0):g} % on {app} back"


def _weight(view: View, app: str) -> float | None:
    return None if view.weights is None else view.weights.get(app, 0.0)


def _step_text(step: int, steps: list[int]) -> str:
    return f"step {step}/{len(steps)}: the canary takes {steps[step - 1]} % of requests"
