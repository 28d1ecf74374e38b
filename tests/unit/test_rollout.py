"""rollout.decide: a canary's steps, gate, promotion, rollback and abort, from observations."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from llmservice_operator.api.models import AnalysisStatus, RolloutStatus, VersionStats
from llmservice_operator.canary import wanted
from llmservice_operator.gate import Verdict
from llmservice_operator.observe import LiveArm, Replica, ServeApp, live_arms
from llmservice_operator.plan import plan
from llmservice_operator.render import Layout, render_rayservice
from llmservice_operator.rollout import Decision, View, decide, split_counts
from llmservice_operator.validate import parse
from tests.unit.examples import example_services

CANARY = {"strategy": "Canary", "canary": {"steps": [10, 50, 100], "pauseSeconds": 60}}
T0 = 1_800_000_000.0


def svc(version: str = "v2", replicas: int = 1, **rollout: Any) -> Any:
    obj = copy.deepcopy(example_services()["tiny"])
    obj["spec"]["model"]["version"] = version
    obj["spec"]["replicas"] = replicas
    obj["spec"]["rollout"] = {**CANARY, **rollout}
    return parse(obj)


def live_of(layout: Layout | None, service: Any) -> tuple[LiveArm, ...]:
    """What the live RayService holds once `layout` was applied."""
    arms, _ = live_arms(render_rayservice(service, layout))
    return arms


def stable_v1(replicas: int = 1) -> tuple[LiveArm, ...]:
    return live_of(None, svc("v1", replicas, strategy="InPlace", canary=None))


def serve_app(running: int, status: str = "RUNNING") -> ServeApp:
    return ServeApp(status, "", "v", "HEALTHY", running, ())


def running(arms: tuple[LiveArm, ...]) -> View:
    """Serve runs exactly what the live config says (the router and every version)."""
    apps = {}
    for a in arms:
        n = int(a.options.get("num_replicas") or 1)
        replicas = tuple(Replica("RUNNING", f"10.0.0.{i}") for i in range(n))
        apps[f"llm-{a.slot}"] = ServeApp("RUNNING", "", "v", "HEALTHY", n, replicas)
    return View(arms, None, {f"llm-{a.slot}": a.weight for a in arms}, apps)


def step(
    service: Any, view: View, memory: RolloutStatus | None, now: float, analysis: Any = None
) -> Decision:
    p = plan(service.spec)
    return decide(service.spec, wanted(service, p), view, memory, analysis, now)


def analysis(v: Verdict, reason: str = "ok") -> tuple[Verdict, AnalysisStatus]:
    stats = VersionStats(version="x", requests=100, errors=0, error_rate=0.0)
    return v, AnalysisStatus(
        time="2027-01-15T08:00:00Z", window_seconds=60, verdict=v.value, reason=reason,
        stable=stats, canary=stats,
    )  # fmt: skip


def weights(layout: Layout | None) -> list[tuple[str, float, int | None]]:
    assert layout is not None
    return [(a.slot, a.weight, a.deployment.num_replicas) for a in layout.arms]


def test_a_new_version_starts_as_a_canary_beside_the_stable_one_with_no_traffic() -> None:
    new = svc("v2")
    d = step(new, running(stable_v1()), None, T0)
    assert weights(d.layout) == [("a", 100.0, 1), ("b", 0.0, 1)]
    assert d.rollout is not None and (d.rollout.phase, d.rollout.step) == ("Progressing", 0)
    assert (d.rollout.stable_version, d.rollout.canary_version) == ("v1", "v2")
    assert [e.reason for e in d.events] == ["CanaryStarted"]


def test_steps_wait_for_the_router_and_the_canary_then_the_pause_and_the_gate() -> None:
    new = svc("v2")
    d = step(new, running(stable_v1()), None, T0)
    arms = live_of(d.layout, new)
    # Applied, but Serve still deploys the canary: no traffic moves.
    deploying = View(
        arms, None, {"llm-a": 100.0, "llm-b": 0.0}, {"llm-b": serve_app(0, "DEPLOYING")}
    )
    held = step(new, deploying, d.rollout, T0 + 10)
    assert weights(held.layout) == [("a", 100.0, 1), ("b", 0.0, 1)]
    assert "waiting" in held.rollout.message  # type: ignore[union-attr]
    # It runs: step 1 (10 %).
    d = step(new, running(arms), held.rollout, T0 + 20)
    assert weights(d.layout) == [("a", 90.0, 1), ("b", 10.0, 1)]
    assert d.rollout is not None and d.rollout.step == 1 and d.events[0].reason == "CanaryStep"
    arms = live_of(d.layout, new)
    # The router runs 10 %: the step's clock starts; the gate passes but the pause is not over.
    d = step(new, running(arms), d.rollout, T0 + 30, analysis(Verdict.PASS))
    assert d.rollout is not None and d.rollout.step_started is not None
    assert weights(d.layout) == [("a", 90.0, 1), ("b", 10.0, 1)] and not d.events
    # Pause over, but the gate is inconclusive: still held.
    d = step(new, running(arms), d.rollout, T0 + 100, analysis(Verdict.INCONCLUSIVE, "3/20"))
    assert weights(d.layout)[1][1] == 10.0 and "3/20" in d.rollout.message  # type: ignore[union-attr]
    # Pause over and the gate passes: step 2.
    d = step(new, running(arms), d.rollout, T0 + 110, analysis(Verdict.PASS))
    assert weights(d.layout) == [("a", 50.0, 1), ("b", 50.0, 1)]
    assert d.rollout is not None and d.rollout.step == 2


def _at_last_step(new: Any) -> tuple[tuple[LiveArm, ...], RolloutStatus]:
    d = step(new, running(stable_v1()), None, T0)
    mem = d.rollout
    for i, now in enumerate((T0 + 10, T0 + 20, T0 + 100, T0 + 110, T0 + 200, T0 + 210)):
        arms = live_of(d.layout, new)
        d = step(new, running(arms), mem, now, analysis(Verdict.PASS))
        mem = d.rollout
        assert mem is not None, i
    assert mem is not None and mem.step == 3
    return live_of(d.layout, new), mem


def test_the_last_step_promotes_the_canary_and_removes_the_old_version() -> None:
    new = svc("v2")
    arms, mem = _at_last_step(new)
    assert [a.weight for a in arms] == [0.0, 100.0]
    d = step(new, running(arms), mem, T0 + 300, analysis(Verdict.PASS))
    assert d.rollout is not None and d.rollout.phase == "Promoted"
    assert weights(d.layout) == [("b", 100.0, 1)]  # the old slot's app is gone
    assert d.events[0].reason == "CanaryPromoted"
    # Promoted: the next version starts its canary in the slot just freed.
    after = live_of(d.layout, new)
    nxt = step(svc("v3"), running(after), d.rollout, T0 + 400)
    assert weights(nxt.layout) == [("b", 100.0, 1), ("a", 0.0, 1)]


def test_a_failed_gate_rolls_back_then_removes_the_canary_and_stays_degraded() -> None:
    new = svc("v2")
    d = step(new, running(stable_v1()), None, T0)
    d = step(new, running(live_of(d.layout, new)), d.rollout, T0 + 10)
    arms = live_of(d.layout, new)
    bad = analysis(Verdict.FAIL, "canary error rate 100.0% (30/30) over 1.0%")
    d = step(new, running(arms), d.rollout, T0 + 20, bad)
    assert weights(d.layout) == [("a", 100.0, 1), ("b", 0.0, 1)]
    assert d.rollout is not None and d.rollout.phase == "RolledBack"
    assert d.events[0].type == "Warning" and "30/30" in d.events[0].message
    # Once the router runs 0 % for it, the canary goes; the stable version stays.
    arms = live_of(d.layout, new)
    d = step(new, running(arms), d.rollout, T0 + 30)
    assert weights(d.layout) == [("a", 100.0, 1)]
    assert d.rollout is not None and d.rollout.canary_app is None
    # The same spec is not retried; a changed one is.
    same = step(new, running(live_of(d.layout, new)), d.rollout, T0 + 40)
    assert weights(same.layout) == [("a", 100.0, 1)]
    retry = step(svc("v3"), running(live_of(d.layout, new)), d.rollout, T0 + 50)
    assert weights(retry.layout) == [("a", 100.0, 1), ("b", 0.0, 1)]


def test_reverting_the_spec_mid_rollout_takes_traffic_back_before_removing_the_canary() -> None:
    new = svc("v2")
    d = step(new, running(stable_v1()), None, T0)
    d = step(new, running(live_of(d.layout, new)), d.rollout, T0 + 10)
    arms = live_of(d.layout, new)  # 10 % on the canary
    back = svc("v1")
    d = step(back, running(arms), d.rollout, T0 + 20)
    assert weights(d.layout) == [("a", 100.0, 1), ("b", 0.0, 1)]
    assert d.rollout is not None and d.rollout.phase == "Aborted"
    assert d.rollout.message == (
        "the spec is back to the stable version; taking the router's 10 % on llm-b back"
    )
    # While Serve's router is not settled on the 0 %, the canary stays and status says why.
    unsettled = dataclasses.replace(
        running(live_of(d.layout, back)), weights=None, router="router application DEPLOYING"
    )
    d = step(back, unsettled, d.rollout, T0 + 25)
    assert weights(d.layout) == [("a", 100.0, 1), ("b", 0.0, 1)]
    assert d.rollout is not None and d.rollout.canary_app == "llm-b"
    assert d.rollout.message.endswith(
        "waiting for Serve's router to run 0 % on llm-b (router application DEPLOYING)"
    )
    d = step(back, running(live_of(d.layout, back)), d.rollout, T0 + 30)
    assert weights(d.layout) == [("a", 100.0, 1)]


def test_a_lost_status_write_never_leaves_a_removed_canary_under_way() -> None:
    """The reconcile that removed the canary's app may fail before its status write; what is
    live then decides: the memory of the step before must not say "under way" for ever."""
    new = svc("v2")
    d = step(new, running(stable_v1()), None, T0)
    d = step(new, running(live_of(d.layout, new)), d.rollout, T0 + 10)
    at_10 = d.rollout
    back = svc("v1")
    d = step(back, running(live_of(d.layout, new)), at_10, T0 + 20)
    taking_back = d.rollout  # Aborted, the canary's app still named: its share is going
    assert taking_back is not None and taking_back.canary_app == "llm-b"
    one = running(stable_v1())  # the canary's app is gone; the status saying so was not written
    for memory in (taking_back, at_10):
        d = step(back, one, memory, T0 + 40)
        assert weights(d.layout) == [("a", 100.0, 1)]
        assert d.rollout is not None and d.rollout.canary_app is None, memory
        assert d.rollout.phase == "Aborted" and d.rollout.weight == 0.0
    # A promotion whose write was lost: the canary's config is the one that runs, alone.
    arms, mem = _at_last_step(new)
    promoted = step(new, running(arms), mem, T0 + 300, analysis(Verdict.PASS))
    d = step(new, running(live_of(promoted.layout, new)), mem, T0 + 310)
    assert weights(d.layout) == [("b", 100.0, 1)]
    assert d.rollout is not None and d.rollout.phase == "Promoted"
    assert (d.rollout.stable_version, d.rollout.stable_app, d.rollout.canary_app) == (
        "v2",
        "llm-b",
        None,
    )
    # Nothing of the router in the live config (the renderer's own one version) likewise.
    d = step(back, View((), None, None, {}), taking_back, T0 + 50)
    assert d.layout is None and d.rollout is not None and d.rollout.canary_app is None


def test_paused_holds_the_step() -> None:
    new = svc("v2", paused=True)
    d = step(new, running(stable_v1()), None, T0)
    d = step(new, running(live_of(d.layout, new)), d.rollout, T0 + 10)
    arms = live_of(d.layout, new)
    d = step(new, running(arms), d.rollout, T0 + 500, analysis(Verdict.PASS))
    assert d.rollout is not None and d.rollout.phase == "Paused"
    assert weights(d.layout)[1][1] == 10.0


def test_a_canary_app_that_fails_to_deploy_is_rolled_back() -> None:
    new = svc("v2")
    d = step(new, running(stable_v1()), None, T0)
    arms = live_of(d.layout, new)
    failed = View(
        arms, None, {"llm-a": 100.0, "llm-b": 0.0}, {"llm-b": serve_app(0, "DEPLOY_FAILED")}
    )
    d = step(new, failed, d.rollout, T0 + 10)
    assert d.rollout is not None and d.rollout.phase == "RolledBack"


def test_replicas_follow_the_weight_with_one_replica_of_surge() -> None:
    assert [split_counts(4, w) for w in (0, 10, 50, 100)] == [(4, 1), (4, 1), (3, 2), (1, 4)]
    new = svc("v2", replicas=4)
    d = step(new, running(stable_v1(4)), None, T0)
    assert weights(d.layout) == [("a", 100.0, 4), ("b", 0.0, 1)]


def test_other_strategies_update_the_version_where_it_runs() -> None:
    # A service whose stable version runs in slot b (after a promotion) stays there.
    new = svc("v2")
    arms, mem = _at_last_step(new)
    d = step(new, running(arms), mem, T0 + 300, analysis(Verdict.PASS))
    in_b = live_of(d.layout, new)
    inplace = svc("v3", strategy="InPlace", canary=None)
    d = step(inplace, running(in_b), d.rollout, T0 + 400)
    assert weights(d.layout) == [("b", 100.0, 1)]
    assert d.layout is not None and d.layout.arms[0].args["model_version"] == "v3"
    assert d.rollout is None


def test_the_router_state_says_why_there_are_no_weights() -> None:
    from llmservice_operator.observe import router_state, router_weights

    def details(app: str, deployment: str, message: str = "") -> dict[str, Any]:
        router = {"status": deployment, "message": "", "replicas": []}
        return {"applications": {"llm": {
            "status": app, "message": message, "deployments": {"OpenAIRouter": router},
            "deployed_app_config": {"deployments": [{
                "name": "OpenAIRouter", "user_config": {"arms": [{"app": "llm-a", "weight": 100}]},
            }]},
        }}}  # fmt: skip

    assert router_state(details("RUNNING", "HEALTHY")) == ""
    assert router_weights(details("RUNNING", "HEALTHY")) == {"llm-a": 100.0}
    failed = details("DEPLOY_FAILED", "DEPLOY_FAILED", "Failed to update the deployments")
    assert router_weights(failed) is None
    assert router_state(failed) == (
        "router application DEPLOY_FAILED, deployment DEPLOY_FAILED: "
        "Failed to update the deployments"
    )
    assert router_state(None) == "no answer from Ray's dashboard"
    assert router_state({"applications": {}}) == "no Serve application 'llm'"
