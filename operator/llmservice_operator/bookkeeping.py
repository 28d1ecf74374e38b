"""kopf's bookkeeping of each LLMService, kept in this process's memory instead of on the object.

With kopf's annotation storages every LLMService is patched once its handler has succeeded: kopf's
copy of the spec (the diff base) and a marker. At 10,000 creates that was a PATCH per object
(454 s of API server request time, bench/operator_bench.py) and a MODIFIED event echoed back to
every watcher. The API server already says when a spec changed: a custom resource with a status
subresource gets a new `metadata.generation` on every spec change and on nothing else. So the diff
base kept here is the generation last handled per object UID.

A restarted operator (or a standby that takes the lead) knows no generation, and handles every
object once more as a creation: reconcile() is idempotent, and that is what `on.resume` did.

A retrying handler's progress (attempts, when it is due) is kept here too. The one write left is
kopf's wake-up of a delayed retry (its `touch-dummy` annotation): kopf's retry is driven by the
watch event that write brings back. Successful handling writes nothing.

kopf calls these from its event loop only; `forget` too (the DELETED event's handler).
"""

from __future__ import annotations

import copy

import kopf


def _uid(body: kopf.Body) -> str:
    return str(body.metadata.uid)


class HandledGenerations(kopf.DiffBaseStorage):
    """The diff base as the generation last handled: same generation, nothing essential changed."""

    def __init__(self) -> None:
        super().__init__()
        self._handled: dict[str, int | None] = {}

    def __len__(self) -> int:
        return len(self._handled)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        uid = _uid(body)
        if uid not in self._handled:
            return None  # never handled by this process: a creation (or a resume) for kopf
        essence = self.build(body=body)
        if self._handled[uid] != body.metadata.get("generation"):
            # A newer spec: an essence without one makes kopf see the spec changed (an update).
            essence.pop("spec", None)
        return essence

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._handled[_uid(body)] = body.metadata.get("generation")

    def forget(self, uid: str) -> None:
        self._handled.pop(uid, None)


class RetryProgress(kopf.ProgressStorage):
    """Per-handler progress in memory; only the wake-up of a delayed retry touches the object."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        # Its annotations: the wake-up, the essence cleaning, and purging what an earlier
        # operator version left on an object (each written only where the object has one).
        self._annotations = kopf.AnnotationsProgressStorage(prefix=prefix)
        self._records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        record = self._records.get((_uid(body), key))
        return copy.deepcopy(record) if record is not None else None

    def store(
        self,
        *,
        key: kopf.HandlerId,
        record: kopf.ProgressRecord,
        body: kopf.Body,
        patch: kopf.Patch,
    ) -> None:
        self._records[(_uid(body), key)] = copy.deepcopy(record)

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records.pop((_uid(body), key), None)
        self._annotations.purge(key=key, body=body, patch=patch)

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        self._annotations.touch(body=body, patch=patch, value=value)

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return self._annotations.clear(essence=essence)

    def forget(self, uid: str) -> None:
        for key in [k for k in self._records if k[0] == uid]:
            del self._records[key]
