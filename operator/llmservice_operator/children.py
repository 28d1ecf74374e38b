"""What the operator knows of its children (RayService, NetworkPolicy) between reads.

kopf's watches deliver every change of an owned child, and each apply answers with the object
as written. Keeping the latest of those lets a reconcile brought by an event skip the GETs it
would otherwise make for each child, the way a client-go informer's cache does.

Only a slim copy is kept (the metadata that ownership and drift checks read, and the status):
a whole RayService with its managedFields is tens of KiB as Python objects, times 10,000. The
spec is never cached; whether the live spec is still what we rendered is known by generation:
the API server bumps `metadata.generation` on every spec change, so a spec found in line (by a
GET or by our own apply) at generation G is in line for as long as the generation stays G and
the render does not change (`spec_digest`).

A cache can miss a change (a watch that broke): the periodic resync reads every child fresh, so
whatever the cache missed is repaired within one interval.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str, str]  # (kind, namespace, name)

_SLIM_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "labels",
    "annotations",
    "ownerReferences",
    "deletionTimestamp",
)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind")), str(meta.get("namespace")), str(meta.get("name")))


def slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a child that reconcile reads besides its spec (a copy: the caller's object
    may change after)."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta[k] for k in _SLIM_METADATA if k in meta},
    }
    if "status" in obj:
        out["status"] = obj["status"]
    return copy.deepcopy(out)


def spec_digest(spec: Any) -> str:
    """A digest of a rendered spec: equal digests, equal renders."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _newer_or_equal(a: str | None, b: str | None) -> bool:
    """resourceVersion a is not older than b. They are etcd revisions (integers) on every API
    server we know; when one is not, trust the later-delivered one (what an informer does)."""
    if a is None or b is None or not (a.isdigit() and b.isdigit()):
        return True
    return int(a) >= int(b)


@dataclass
class _Known:
    body: dict[str, Any]  # slim
    ours: bool  # this version is the answer to our own write (its watch event is an echo)
    verified: tuple[str, int, str] | None  # (uid, generation, spec digest) found in line


class Children:
    """The latest slim state of each child, from watch events, GETs and our writes."""

    def __init__(self) -> None:
        self._known: dict[Key, _Known] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._known)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()

    def observed(self, obj: Mapping[str, Any], event_type: str | None) -> bool:
        """A watch event. True when it is the echo of our own last write (nothing new)."""
        key = key_of(obj)
        meta = obj.get("metadata") or {}
        version = meta.get("resourceVersion")
        with self._lock:
            known = self._known.get(key)
            if event_type == "DELETED":
                if known is not None and known.body["metadata"].get("uid") == meta.get("uid"):
                    del self._known[key]
                return False
            if known is not None:
                have = known.body["metadata"].get("resourceVersion")
                if known.ours and version is not None and version == have:
                    return True
                if not _newer_or_equal(version, have):
                    return False  # a late event of an older version: keep the newer state
            self._known[key] = _Known(slim(obj), ours=False, verified=self._carried(known, obj))
            return False

    def written(self, obj: Mapping[str, Any] | None, want_spec: Any) -> None:
        """Our apply's answer: the spec is the render, as of the object's new generation."""
        if not obj:
            return
        with self._lock:
            self._known[key_of(obj)] = _Known(slim(obj), ours=True, verified=_stamp(obj, want_spec))

    def fetched(self, key: Key, obj: Mapping[str, Any] | None, in_line_with: Any = None) -> None:
        """A GET's answer (None: absent); `in_line_with` the render its spec was found to match."""
        with self._lock:
            if obj is None:
                self._known.pop(key, None)
                return
            known = self._known.get(key)
            stamp = _stamp(obj, in_line_with) if in_line_with is not None else None
            ours = bool(known and known.ours and _same_version(known.body, obj))
            self._known[key] = _Known(slim(obj), ours=ours, verified=stamp)

    def in_line(self, key: Key, want_spec: Any) -> dict[str, Any] | None:
        """The slim child, only if its spec is known to be the render `want_spec` (else None:
        read it)."""
        with self._lock:
            known = self._known.get(key)
            if known is None or known.verified is None:
                return None
            meta = known.body["metadata"]
            uid, generation, digest = known.verified
            if (meta.get("uid"), meta.get("generation"), spec_digest(want_spec)) != (
                uid,
                generation,
                digest,
            ):
                return None
            return known.body

    def ours(self, key: Key, version: str | None) -> bool:
        """`version` of the child is the answer to our own write (an echo, however it raced)."""
        with self._lock:
            known = self._known.get(key)
            have = known.body["metadata"].get("resourceVersion") if known else None
            return bool(known and known.ours and version is not None and version == have)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            for kind in ("RayService", "NetworkPolicy"):
                self._known.pop((kind, namespace, name), None)

    @staticmethod
    def _carried(known: _Known | None, obj: Mapping[str, Any]) -> tuple[str, int, str] | None:
        """A new version keeps the verdict on its spec while its uid and generation are those
        the verdict was made at (a status write, a label added)."""
        if known is None or known.verified is None:
            return None
        meta = obj.get("metadata") or {}
        uid, generation, _ = known.verified
        return (
            known.verified
            if (meta.get("uid"), meta.get("generation")) == (uid, generation)
            else None
        )


def _stamp(obj: Mapping[str, Any], want_spec: Any) -> tuple[str, int, str] | None:
    meta = obj.get("metadata") or {}
    if meta.get("uid") is None or meta.get("generation") is None:
        return None
    return (str(meta["uid"]), int(meta["generation"]), spec_digest(want_spec))


def _same_version(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return bool(
        (a.get("metadata") or {}).get("resourceVersion")
        == (b.get("metadata") or {}).get("resourceVersion")
    )
