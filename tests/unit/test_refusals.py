"""KubeRay's refusals kept from a watch of Warning events: the store and the watch loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from llmservice_operator.refusals import Refusals, keep_watching, refusal


def event(
    name: str,
    uid: str,
    reason: str = "InvalidRayServiceSpec",
    at: str = "10",
    ns: str = "ns",
    kind: str = "RayService",
    type_: str = "Warning",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": f"rv-{name}"},
        "involvedObject": {"kind": kind, "name": f"rs-{uid}", "namespace": ns, "uid": uid},
        "type": type_,
        "reason": reason,
        "message": f"{name} says no",
        "lastTimestamp": f"2026-11-27T12:00:{at}Z",
    }


def test_only_kuberays_refusals_of_rayservices_count() -> None:
    assert refusal(event("e1", "u1")) is not None
    assert refusal(event("e1", "u1", reason="FailedToCreateRayCluster")) is None
    assert refusal(event("e1", "u1", type_="Normal")) is None
    assert refusal(event("e1", "u1", kind="RayCluster")) is None
    found = refusal(event("e1", "u1", reason="InvalidRayServiceMetadata"))
    assert found is not None and found.text == "InvalidRayServiceMetadata: e1 says no"


def test_the_latest_refusal_of_a_uid_wins_and_deleted_events_are_forgotten() -> None:
    store = Refusals()
    assert not store.synced("ns")
    store.replace("ns", [event("old", "u1", at="10"), event("new", "u1", at="20")])
    assert store.synced("ns") and not store.synced("other")
    assert store.latest("u1") == "InvalidRayServiceSpec: new says no"
    assert store.latest("u2") is None
    store.apply("DELETED", event("new", "u1"))
    assert store.latest("u1") == "InvalidRayServiceSpec: old says no"
    # A relist replaces what its scope held; other namespaces keep theirs.
    store.apply("ADDED", event("x", "u3", ns="other"))
    store.replace("ns", [])
    assert store.latest("u1") is None and store.latest("u3") is not None
    store.replace("", [])  # all namespaces
    assert store.synced("anything") and len(store) == 0


class FakeSource:
    """A list, then watches that each yield their scripted notifications or raise."""

    def __init__(
        self, listed: list[dict[str, Any]], watches: list[Any], stop: threading.Event
    ) -> None:
        self.listed, self.watches, self.stop = listed, watches, stop
        self.lists = 0
        self.resumed_from: list[str] = []

    def list_warning_events(self, namespace: str) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return list(self.listed), f"list-{self.lists}"

    def watch_warning_events(
        self, namespace: str, resource_version: str, timeout_s: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self.resumed_from.append(resource_version)
        if not self.watches:
            self.stop.set()  # the script is over
            return
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        yield from script


def test_the_watch_keeps_the_store_relists_on_410_and_reports_new_refusals() -> None:
    stop = threading.Event()
    source = FakeSource(
        listed=[event("e0", "u0")],
        watches=[
            [("ADDED", event("e1", "u1")), ("BOOKMARK", {"metadata": {"resourceVersion": "b1"}})],
            ApiException(status=410, reason="Gone"),
            ConnectionResetError("API server restarting"),
            [("ADDED", event("e2", "u2", reason="Unrelated"))],
        ],
        stop=stop,
    )
    store, told = Refusals(), []

    def on_refusal(namespace: str, name: str) -> None:
        told.append((namespace, name))
        if name == "rs-u1":
            raise RuntimeError("the reporter's own trouble")  # must not end the watch

    keep_watching(source, store, "ns", stop, on_refusal, backoff=lambda n: 0.0)
    # Listed once at the start and once after 410 Gone; the first watch resumed from the
    # list's version, a later one from the bookmark's; a transport error just backs off.
    assert source.lists == 2
    assert source.resumed_from[:2] == ["list-1", "b1"]
    assert told == [("ns", "rs-u1")]  # the watch's refusal, not the listed one nor non-refusals
    assert store.latest("u0") and store.latest("u2") is None and store.synced("ns")


def test_a_watch_it_may_not_read_hands_lookups_back_to_listing() -> None:
    stop = threading.Event()
    source = FakeSource([], [ApiException(status=403, reason="Forbidden")], stop)
    store = Refusals()
    seen_synced: list[bool] = []

    def backoff(n: int) -> float:
        seen_synced.append(store.synced("ns"))
        stop.set()
        return 0.0

    keep_watching(source, store, "ns", stop, backoff=backoff)
    assert seen_synced == [False]
