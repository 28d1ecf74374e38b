"""KubeRay's refusals of RayServices, kept from one watch of Warning events.

KubeRay refuses an invalid RayService before it writes any status: its Warning event
(``InvalidRayServiceSpec``/``InvalidRayServiceMetadata``) is the only record. Listing one
RayService's events per reconcile makes the API server scan every event of the namespace (field
selectors on events are not indexed), so N objects whose status lags (a burst, KubeRay down) cost
O(N^2). Instead one watch per watched namespace, filtered by the server to Warning events about
RayServices, keeps the latest refusal of each RayService UID here.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

# KubeRay's Warning events when it refuses a RayService (utils.InvalidRayServiceSpec/Metadata).
KUBERAY_REJECTIONS = frozenset({"InvalidRayServiceSpec", "InvalidRayServiceMetadata"})
# What the server sends the watch: every Warning about a RayService (few), refusals among them.
FIELD_SELECTOR = "involvedObject.kind=RayService,type=Warning"
# A watch ends server-side after this long and is resumed from its last resourceVersion.
WATCH_TIMEOUT_S = 300
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Refusal:
    """One refusal event: which RayService, when, and KubeRay's words."""

    namespace: str
    event: str  # the Event's name
    uid: str  # the refused RayService's UID
    time: dt.datetime
    text: str  # "<reason>: <message>"


def refusal(event: Mapping[str, Any]) -> Refusal | None:
    """The refusal an Event (as the API serves it, a dict) records, if it is one."""
    if event.get("type") != "Warning" or event.get("reason") not in KUBERAY_REJECTIONS:
        return None
    meta, involved = event.get("metadata") or {}, event.get("involvedObject") or {}
    if involved.get("kind") != "RayService" or not involved.get("uid"):
        return None
    stamps = (event.get(k) for k in ("lastTimestamp", "eventTime", "firstTimestamp"))
    stamp = next((s for s in stamps if s), None)
    return Refusal(
        namespace=str(meta.get("namespace") or involved.get("namespace") or ""),
        event=str(meta.get("name") or ""),
        uid=str(involved["uid"]),
        time=_parse(stamp),
        text=f"{event['reason']}: {event.get('message') or ''}".rstrip(": "),
    )


def latest(refusals: Iterable[Refusal]) -> str | None:
    """KubeRay's words in the most recent of these refusals (None: there are none)."""
    newest = max(refusals, key=lambda r: r.time, default=None)
    return None if newest is None else newest.text


def _parse(stamp: object) -> dt.datetime:
    if isinstance(stamp, dt.datetime):
        return stamp
    if not stamp:
        return _EPOCH
    try:
        return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return _EPOCH


class Refusals:
    """The latest refusal per RayService UID, for namespaces whose watch has listed once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[tuple[str, str], Refusal] = {}  # (namespace, event name)
        self._synced: set[str] = set()  # namespaces, or "" for all of them

    def synced(self, namespace: str) -> bool:
        """Whether this store knows every refusal in `namespace` (its first LIST is in)."""
        with self._lock:
            return "" in self._synced or namespace in self._synced

    def latest(self, uid: str) -> str | None:
        with self._lock:
            return latest(r for r in self._events.values() if r.uid == uid)

    def replace(self, scope: str, events: Iterable[Mapping[str, Any]]) -> None:
        """A fresh LIST of `scope` (a namespace, or "" for all): what it holds is all there is."""
        found = [r for r in map(refusal, events) if r is not None]
        with self._lock:
            self._events = {k: r for k, r in self._events.items() if scope and r.namespace != scope}
            self._events.update({(r.namespace, r.event): r for r in found})
            self._synced.add(scope)

    def apply(self, kind: str, event: Mapping[str, Any]) -> Refusal | None:
        """One watch notification (ADDED, MODIFIED or DELETED) of an Event; the refusal it
        brought, if any."""
        meta = event.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        found = None if kind == "DELETED" else refusal(event)
        with self._lock:
            if found is None:
                self._events.pop(key, None)
            else:
                self._events[key] = found
        return found

    def unsynced(self, scope: str) -> None:
        with self._lock:
            self._synced.discard(scope)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


class EventSource(Protocol):
    """The two calls the watch needs (``Kube`` has them)."""

    def list_warning_events(self, namespace: str) -> tuple[list[dict[str, Any]], str]: ...

    def watch_warning_events(
        self, namespace: str, resource_version: str, timeout_s: int
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...


def keep_watching(
    source: EventSource,
    refusals: Refusals,
    scope: str,
    stop: threading.Event,
    on_refusal: Callable[[str, str], None] = lambda namespace, name: None,
    backoff: Callable[[int], float] = lambda n: random.uniform(1, min(60, 2 ** (n + 1))),
) -> None:
    """List then watch `scope` ("" for all namespaces) until `stop`; relist when the watch's
    resourceVersion is too old (410 Gone), back off on API trouble. Never raises.

    ``on_refusal(namespace, rayservice)`` is called for each refusal the watch brings (not for
    those the LIST found: the operator reconciles everything when it starts anyway)."""
    version: str | None = None
    failures = 0
    while not stop.is_set():
        try:
            if version is None:
                events, version = source.list_warning_events(scope)
                refusals.replace(scope, events)
            began = time.monotonic()
            for kind, event in source.watch_warning_events(scope, version, WATCH_TIMEOUT_S):
                if stop.is_set():
                    return
                version = (event.get("metadata") or {}).get("resourceVersion") or version
                if kind == "BOOKMARK":
                    continue
                found = refusals.apply(kind, event)
                if found is not None:
                    _tell(on_refusal, found.namespace, event)
            failures = 0
            if time.monotonic() - began < 1:
                stop.wait(1)  # a watch the server ends at once must not become a busy loop
        except ApiException as exc:
            if exc.status == 410:  # expired: list again, the store is replaced from it
                version = None
                continue
            failures += 1
            log.warning("refusal watch of %s: HTTP %s %s", scope or "all namespaces",
                        exc.status, exc.reason)  # fmt: skip
            if exc.status in (401, 403, 404):
                # Cannot list/watch events (RBAC) or no such namespace: the store no longer
                # speaks for this scope, and reconciles fall back to listing per RayService.
                refusals.unsynced(scope)
                version = None
            stop.wait(backoff(failures))
        except Exception as exc:
            # Transport errors while the API server restarts (kopf.TemporaryError from Kube),
            # a bug: never the end of the watch.
            failures += 1
            log.warning("refusal watch of %s: %r", scope or "all namespaces", exc)
            stop.wait(backoff(failures))


def _tell(on_refusal: Callable[[str, str], None], namespace: str, event: Mapping[str, Any]) -> None:
    name = str((event.get("involvedObject") or {}).get("name") or "")
    try:
        on_refusal(namespace, name)
    except Exception as exc:  # its own trouble must not end the watch; the resync reports it
        log.warning("reporting KubeRay's refusal of %s/%s: %r", namespace, name, exc)
