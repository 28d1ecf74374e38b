"""Failures of the API are classified and the resync loop outlives every one of them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmservice_operator import metrics
from llmservice_operator.k8s import ALL_NAMESPACES, Kube, KubeRayMissing, classified
from llmservice_operator.reconcile import _resync_forever, backoff_delay
from llmservice_operator.settings import OperatorConfig
from tests.unit.loops import run_until


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.MaxRetryError(None, "/api", "connection refused"),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("connection aborted"),
        urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out"),  # type: ignore[arg-type]
        ConnectionResetError(),
        TimeoutError(),
        ApiException(status=503),
        ApiException(status=409),
    ],
)
def test_transport_failures_and_busy_servers_are_temporary(error: Exception) -> None:
    with pytest.raises(kopf.TemporaryError), classified("get x"):
        raise error


def test_a_rejected_request_is_permanent() -> None:
    with pytest.raises(kopf.PermanentError), classified("apply x"):
        raise ApiException(status=422)


def test_backoff_grows_to_a_cap_with_jitter() -> None:
    assert all(2.5 <= backoff_delay(0) <= 5.0 for _ in range(50))
    late = [backoff_delay(10) for _ in range(200)]
    assert max(late) <= 300.0 and min(late) >= 2.5
    assert len({round(d, 3) for d in late}) > 100  # jittered, not in step


class FlakyKube:
    """Each pass meets another failure: a bug, an unclassified error, a classified one."""

    def __init__(self) -> None:
        self.calls = 0

    def outranked(self, *_: Any) -> set[str]:
        return set()

    def llmservice_pages(self, namespaces: list[str]) -> Iterator[list[dict[str, Any]]]:
        self.calls += 1
        if self.calls == 1:
            raise urllib3.exceptions.ProtocolError("API server restarting")
        if self.calls == 2:
            raise kopf.TemporaryError("list LLMServices: HTTP 503", delay=1)
        yield []


def _passes(outcome: str) -> float:
    return metrics.RESYNC_PASSES.labels(outcome=outcome)._value.get()  # type: ignore[no-any-return]


def test_the_resync_loop_outlives_every_failure() -> None:
    before = {o: _passes(o) for o in ("error", "list_failed", "ok")}
    kube = FlakyKube()
    config = OperatorConfig(timer_interval=0.01, standalone=True, metrics_port=0)

    run_until(_resync_forever(kube, config), lambda: kube.calls >= 4)  # type: ignore[arg-type]
    after = {o: _passes(o) - before[o] for o in before}
    assert after["error"] >= 1 and after["list_failed"] >= 1 and after["ok"] >= 1, after


class Outranked(FlakyKube):
    def outranked(self, *_: Any) -> set[str]:
        return {ALL_NAMESPACES}


def test_a_standby_lists_nothing() -> None:
    before = _passes("standby")
    kube = Outranked()
    config = OperatorConfig(timer_interval=0.01, standalone=False, metrics_port=0)

    async def run() -> None:
        task = asyncio.create_task(_resync_forever(kube, config))  # type: ignore[arg-type]
        while _passes("standby") < before + 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run())
    assert kube.calls == 0


def test_serve_state_is_read_directly_from_the_head_in_a_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a pod the operator calls the head's dashboard like KubeRay (the NetworkPolicy lets it)."""
    kube = Kube(client.ApiClient(), serve_direct=True)
    asked: list[str] = []

    class Answer:
        status = 200
        data = b'{"applications": {}}'

    def request(method: str, url: str, **_: object) -> Answer:
        asked.append(f"{method} {url}")
        return Answer()

    monkeypatch.setattr(kube._http, "request", request)
    assert kube.serve_details("team", "tiny-abc-head-svc") == {"applications": {}}
    assert asked == [
        "GET http://tiny-abc-head-svc.team.svc:8265/api/serve/applications/?api_type=declarative"
    ]

    def refused(method: str, url: str, **_: object) -> Answer:
        raise urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]

    monkeypatch.setattr(kube._http, "request", refused)
    assert kube.serve_details("team", "tiny-abc-head-svc") is None  # Ray not up: nothing runs


@pytest.mark.parametrize(
    ("mode", "in_cluster", "direct"),
    [("auto", True, True), ("auto", False, False), ("proxy", True, False), ("direct", False, True)],
)
def test_serve_api_mode(mode: str, in_cluster: bool, direct: bool) -> None:
    assert OperatorConfig(serve_api=mode).serve_api_direct(in_cluster) is direct


def test_a_missing_crd_is_told_from_a_missing_object() -> None:
    """The API server answers both with 404: only a missing object comes as a named Status."""
    kube = Kube(client.ApiClient())

    def answer(status: int, body: str) -> Any:
        def raising(*args: object, **kwargs: object) -> None:
            exc = ApiException(status=status, reason="Not Found")
            exc.body = body
            raise exc

        return raising

    kube.custom.get_namespaced_custom_object = answer(404, "404 page not found\n")  # type: ignore[method-assign]
    with pytest.raises(KubeRayMissing, match="CRDs are not installed"):
        kube.get_rayservice("ns", "x")
    named = '{"kind":"Status","reason":"NotFound","details":{"name":"x","kind":"rayservices"}}'
    kube.custom.get_namespaced_custom_object = answer(404, named)  # type: ignore[method-assign]
    assert kube.get_rayservice("ns", "x") is None


def test_the_resync_lists_in_pages() -> None:
    kube = Kube(client.ApiClient())
    pages = {None: (["a", "b"], "t1"), "t1": (["c"], "t2"), "t2": (["d"], None)}
    asked: list[tuple[str | None, int]] = []

    def listing(*_: object, limit: int, _continue: str | None = None, **__: object) -> Any:
        asked.append((_continue, limit))
        names, token = pages[_continue]
        meta = {"continue": token} if token else {}
        return {"items": [{"metadata": {"name": n}} for n in names], "metadata": meta}

    kube.custom.list_cluster_custom_object = listing  # type: ignore[method-assign]
    listed = kube.llmservice_pages([])
    assert [o["metadata"]["name"] for o in next(listed)] == ["a", "b"]
    assert [t for t, _ in asked] == [None]  # the next page only once this one is done
    got = [o["metadata"]["name"] for page in listed for o in page]
    assert got == ["c", "d"]
    assert [t for t, _ in asked] == [None, "t1", "t2"] and {n for _, n in asked} == {500}


def test_the_resync_keeps_only_what_a_reconcile_reads_of_a_listed_object() -> None:
    from llmservice_operator.k8s import slim_llmservice

    listed = {
        "apiVersion": "llmservice.dev/v1alpha1", "kind": "LLMService",
        "metadata": {
            "name": "a", "namespace": "ns", "uid": "u", "generation": 3,
            "resourceVersion": "9", "labels": {"team": "x"},
            "annotations": {"llmservice.dev/last-handled-configuration": "{...the spec...}"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"replicas": 1}, "status": {"phase": "Ready"},
    }  # fmt: skip
    slim = slim_llmservice(listed)
    assert slim["metadata"] == {
        "name": "a", "namespace": "ns", "uid": "u", "generation": 3, "resourceVersion": "9",
        "labels": {"team": "x"},
    }  # fmt: skip
    assert {k: slim[k] for k in ("apiVersion", "kind", "spec", "status")} == {
        k: listed[k] for k in ("apiVersion", "kind", "spec", "status")
    }


def test_api_requests_are_counted_by_verb_and_resource() -> None:
    counter = metrics.API_REQUESTS.labels(verb="get", resource="rayservices")
    before = counter._value.get()
    with pytest.raises(kopf.TemporaryError), classified("get x", "get", "rayservices"):
        raise ApiException(status=503)
    with classified("get y", "get", "rayservices"):
        pass
    assert counter._value.get() == before + 2  # failed requests count too: they hit the server
