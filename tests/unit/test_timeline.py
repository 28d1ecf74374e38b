"""The e2e timeline's own judgement: when is an activeVersion early (tests/e2e/world.py)."""

from __future__ import annotations

from typing import Any

from tests.e2e.world import Sample, Timeline, serving_versions


def _sample(
    t: float, active: str, serve: str | None, serving: frozenset[str] = frozenset()
) -> Sample:
    return Sample(
        t=t, ready="True", progressing="True", ready_replicas=1, active_version=active,
        pending_version=None, running=1, serve_version=serve, clusters=("c",), worker_pods=1,
        serving=serving,
    )  # fmt: skip


def _app(version: str, status: str = "RUNNING") -> dict[str, Any]:
    return {
        "status": status,
        "deployed_app_config": {"args": {"model_version": version}},
        "deployments": {"LLMServer:m": {"status": "HEALTHY", "replicas": [{"state": "RUNNING"}]}},
    }


def _details(weights: dict[str, float], router_status: str = "RUNNING") -> dict[str, Any]:
    arms = [{"app": app, "weight": w} for app, w in weights.items()]
    router = {
        "status": router_status,
        "deployed_app_config": {
            "deployments": [{"name": "OpenAIRouter", "user_config": {"arms": arms}}]
        },
    }
    return {"applications": {"llm": router, "llm-a": _app("v2"), "llm-b": _app("v2-c1")}}


def test_serving_counts_only_versions_given_a_share() -> None:
    assert serving_versions(_details({"llm-a": 100, "llm-b": 0})) == {"v2"}
    assert serving_versions(_details({"llm-a": 50, "llm-b": 50})) == {"v2", "v2-c1"}
    # While the router reconfigures (a promotion), its deployed weights still tell who serves.
    promoting = _details({"llm-b": 100}, router_status="DEPLOYING")
    assert serving_versions(promoting) == {"v2-c1"}


def test_serving_without_a_router_is_the_one_app() -> None:
    details = {"applications": {"llm": _app("v1")}}
    assert serving_versions(details) == {"v1"}
    details = {"applications": {"llm": _app("v1", status="DEPLOYING")}}
    assert serving_versions(details) == frozenset()


def test_a_promoted_canary_that_served_before_is_not_early() -> None:
    line = Timeline(
        samples=[
            _sample(0.0, "v2", "v2", frozenset({"v2-c1"})),  # stable at 0 %, canary at 100 %
            _sample(1.0, "v2-c1", None),  # promoted while the router reconfigures
        ]
    )
    assert line.early_versions() == []


def test_a_version_no_sample_saw_serving_is_early() -> None:
    line = Timeline(samples=[_sample(0.0, "v1", "v1", frozenset({"v1"})), _sample(1.0, "v2", None)])
    assert [s.t for s in line.early_versions()] == [1.0]
