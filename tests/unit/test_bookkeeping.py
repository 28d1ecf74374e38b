"""kopf's bookkeeping in memory (bookkeeping.py): what kopf sees through it, and what it writes."""

from __future__ import annotations

from typing import Any, cast

import kopf
from kopf._cogs.structs import diffs

from llmservice_operator.bookkeeping import HandledGenerations, RetryProgress


def _body(generation: int, uid: str = "u1", **meta: Any) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "llmservice.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "a", "namespace": "ns", "uid": uid, "generation": generation} | meta,
        "spec": {"replicas": generation},
        "status": {"observedGeneration": generation - 1},
    }
    return kopf.Body(cast(kopf.RawBody, raw))


def _diff(store: HandledGenerations, body: kopf.Body) -> diffs.Diff:
    return diffs.diff(store.fetch(body=body), store.build(body=body))


def test_a_generation_once_handled_is_no_change_and_a_newer_one_is_a_spec_change() -> None:
    store = HandledGenerations()
    first = _body(1)
    assert store.fetch(body=first) is None  # unknown here: kopf sees a creation
    patch = kopf.Patch()
    store.store(body=first, patch=patch, essence=store.build(body=first))
    assert not patch  # nothing written to the object
    # The echo of our status write, a label edit: same generation, nothing essential.
    assert not _diff(store, _body(1, labels={"team": "x"}))
    # A spec edit: kopf's update handlers with field="spec" see the spec change.
    changed = _diff(store, _body(2))
    assert [(d.operation, d.field) for d in changed] == [(diffs.DiffOperation.ADD, ("spec",))]
    # Another object (or this name recreated: a new UID) is unknown.
    assert store.fetch(body=_body(1, uid="u2")) is None
    store.forget("u1")
    assert store.fetch(body=first) is None and len(store) == 0


def test_retry_progress_is_kept_in_memory_and_only_the_wake_up_is_written() -> None:
    progress = RetryProgress(prefix="llmservice.dev")
    body = _body(1)
    record: kopf.ProgressRecord = {"retries": 1, "delayed": "2026-11-28T05:00:00.000000"}
    patch = kopf.Patch()
    progress.store(key=kopf.HandlerId("h"), record=record, body=body, patch=patch)
    assert not patch
    assert progress.fetch(key=kopf.HandlerId("h"), body=body) == record
    assert progress.fetch(key=kopf.HandlerId("h"), body=_body(1, uid="u2")) is None
    progress.purge(key=kopf.HandlerId("h"), body=body, patch=patch)
    assert not patch and progress.fetch(key=kopf.HandlerId("h"), body=body) is None
    # The wake-up of a delayed retry is a write: kopf's retry comes with the event it brings.
    progress.touch(body=body, patch=patch, value="now")
    assert patch["metadata"]["annotations"]["llmservice.dev/touch-dummy"] == "now"
    progress.store(key=kopf.HandlerId("h"), record=record, body=body, patch=kopf.Patch())
    progress.forget("u1")
    assert len(progress) == 0


def test_what_an_older_operator_left_on_an_object_is_purged_and_kept_out_of_the_essence() -> None:
    progress = RetryProgress(prefix="llmservice.dev")
    left = {"llmservice.dev/h": '{"retries":2}', "team": "x"}
    body = _body(1, annotations=left)
    patch = kopf.Patch()
    progress.purge(key=kopf.HandlerId("h"), body=body, patch=patch)
    assert patch["metadata"]["annotations"] == {"llmservice.dev/h": None}
    essence = progress.clear(essence=HandledGenerations().build(body=body))
    assert essence["metadata"]["annotations"] == {"team": "x"}
