"""One LLMService on the real-Ray ground, and what a user would look at: status, RayClusters,
pods, Ray Serve's own state and live traffic.

The ground: the local control plane (KWOK nodes and pods), the real KubeRay operator, our
operator, and tests.support.raypods giving every Ray pod of the LLMService its own real Ray node
(network namespace, pod IP, `ray start` from the pod's rayStartParams and limits). Traffic goes
the way a user's does: `kubectl proxy` -> kube-apiserver -> the serve Service -> Ray Serve ->
vLLM, with the real `openai` client.

A ``Timeline`` samples, side by side, what the LLMService status claims and what Ray reports,
so a test can check that status never ran ahead of reality at any moment, not just at the end.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes import client

from llmservice_operator.k8s import Kube
from llmservice_operator.observe import (
    ServeApp,
    cluster_names,
    direct_arm,
    live_arms,
    parse_cluster,
    parse_serve,
)
from llmservice_operator.render import SERVE_APP_NAME, STABLE_SLOT
from llmservice_operator.rollout import epoch
from serve_app.naming import version_app
from tests.cluster.harness import wait_for
from tests.cluster.objects import condition

LLMSVC = ("llmservice.dev", "v1alpha1", "llmservices")
# How far status may trail Ray: the tests' operator resyncs every 5 s (TIMER_INTERVAL_S).
STATUS_LAG_S = 6.0
RAY = ("ray.io", "v1")
T = TypeVar("T")


class NotYet(Exception):
    """Raised by a wait check: its message is what the timeout error quotes."""


@dataclass(frozen=True)
class Sample:
    """One moment: what status said, and what Ray and Kubernetes had."""

    t: float
    ready: str
    progressing: str
    ready_replicas: int
    active_version: str | None
    pending_version: str | None
    running: int | None  # RUNNING model replicas on the active cluster (None: Ray did not answer)
    serve_version: str | None  # the version the active cluster's Serve app has settled on
    clusters: tuple[str, ...]
    worker_pods: int
    # Every version Serve runs settled that takes traffic: the stable one, and during a canary
    # the canary once the router sends it a share (a promotion switches the stable slot while
    # the router reconfigures, so serve_version alone is briefly None then).
    serving: frozenset[str] = frozenset()


@dataclass
class Timeline:
    samples: list[Sample] = field(default_factory=list)
    skipped: int = 0  # samples whose reads failed (a read racing a delete)
    last_error: str = ""

    def overstated_replicas(self, lag_s: float = STATUS_LAG_S) -> list[Sample]:
        """Samples where status claimed more ready replicas than Ray ran at any moment of the
        `lag_s` before (status is written from an observation made a moment earlier, and the
        operator learns of a change through KubeRay's status or its resync)."""
        bad = []
        for i, now in enumerate(self.samples):
            window = [s.running for s in self.samples[: i + 1] if now.t - s.t <= lag_s]
            seen = [x for x in window if x is not None]
            if now.ready_replicas > (max(seen) if seen else 0):
                bad.append(now)
        return bad

    def early_versions(self, lag_s: float = STATUS_LAG_S) -> list[Sample]:
        """Samples where status switched activeVersion to a version Serve had not settled on
        (running it, every replica HEALTHY) within the `lag_s` before."""
        bad = []
        for i, now in enumerate(self.samples):
            if i == 0 or now.active_version in (None, self.samples[i - 1].active_version):
                continue
            settled: set[str | None] = set()
            for s in self.samples[: i + 1]:
                if now.t - s.t <= lag_s:
                    settled |= {s.serve_version, *s.serving}
            if now.active_version not in settled:
                bad.append(now)
        return bad

    def first(self, pred: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in self.samples if pred(s)), None)

    def table(self, last: int = 12) -> str:
        rows = [
            f"{s.t:7.1f}s Ready={s.ready} Prog={s.progressing} ready={s.ready_replicas} "
            f"running={s.running} active={s.active_version} pending={s.pending_version} "
            f"serve={s.serve_version} clusters={len(s.clusters)} workers={s.worker_pods}"
            for s in self.samples[-last:]
        ]
        return "\n".join(rows)


def serving_versions(details: dict[str, Any] | None) -> frozenset[str]:
    """The versions in ``details`` whose application runs settled and which get traffic:
    a share in the router's deployed config (whatever the router's own state: while it
    reconfigures, old and new weights both hold), or the one app of direct streaming."""
    apps = (details or {}).get("applications") or {}
    router = apps.get(SERVE_APP_NAME) or {}
    weights: dict[str, float] = {}
    for options in (router.get("deployed_app_config") or {}).get("deployments") or []:
        for arm in (options.get("user_config") or {}).get("arms") or []:
            weights[str(arm["app"])] = float(arm["weight"])
    names = [a for a, w in weights.items() if w > 0] if weights else [SERVE_APP_NAME]
    found = set()
    for name in names:
        app = parse_serve(details, name)
        if app is not None and app.settled and app.version is not None:
            found.add(app.version)
    return frozenset(found)


def on_monotonic(stamp: str | datetime.datetime) -> float:
    """A status or event time (whole seconds, this machine's clock) on time.monotonic()."""
    seconds = stamp.timestamp() if isinstance(stamp, datetime.datetime) else epoch(stamp)
    return seconds - time.time() + time.monotonic()


class World:
    """The LLMService ``name`` in ``namespace`` and everything a test reads about it."""

    def __init__(self, api_client: client.ApiClient, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.kube = Kube(api_client)

    # --- reads -------------------------------------------------------------------------
    def svc(self) -> dict[str, Any]:
        obj: Any = self.custom.get_namespaced_custom_object(
            *LLMSVC[:2], self.namespace, LLMSVC[2], self.name
        )
        return dict(obj)

    def rayservice(self) -> dict[str, Any] | None:
        return self.kube.get_rayservice(self.namespace, self.name)

    def rayclusters(self) -> list[dict[str, Any]]:
        listed: Any = self.custom.list_namespaced_custom_object(*RAY, self.namespace, "rayclusters")
        return [rc for rc in listed["items"] if not rc["metadata"].get("deletionTimestamp")]

    def active_cluster(self) -> dict[str, Any] | None:
        active, _ = cluster_names(self.rayservice())
        return self.kube.get_raycluster(self.namespace, active) if active else None

    def serve(self) -> ServeApp | None:
        """Ray Serve's own view of the app on the active cluster (None: Ray did not answer)."""
        rc = self.active_cluster()
        if rc is None:
            return None
        details = self.kube.serve_details(self.namespace, parse_cluster(rc).head_service)
        return parse_serve(details, SERVE_APP_NAME, self.stable_app())

    def stable_app(self) -> str:
        """The Serve application of the version that serves (its slot moves on a promotion;
        on the fast path the one application is the model's)."""
        live = self.rayservice()
        if direct_arm(live) is not None:
            return SERVE_APP_NAME
        arms, _ = live_arms(live)
        return version_app(arms[0].slot if arms else STABLE_SLOT)

    def serve_details(self) -> dict[str, Any] | None:
        rc = self.active_cluster()
        if rc is None:
            return None
        return self.kube.serve_details(self.namespace, parse_cluster(rc).head_service)

    def worker_pods(self, cluster: str | None = None) -> list[Any]:
        selector = "ray.io/node-type=worker"
        if cluster:
            selector += f",ray.io/cluster={cluster}"
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return [p for p in pods if p.metadata and p.metadata.deletion_timestamp is None]

    def step_event(self, prefix: str) -> Any:
        """The first CanaryStep event whose message starts with ``prefix`` ("step 2/"). The
        operator posts it just after applying the step's weight."""
        events = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.name},reason=CanaryStep"
        ).items
        found = [e for e in events if str(e.message).startswith(prefix)]
        assert found, [e.message for e in events]
        return min(found, key=lambda e: e.first_timestamp)

    def sample(self, t0: float) -> Sample:
        svc = self.svc()
        status = svc.get("status") or {}
        rc = self.active_cluster()
        details = (
            None if rc is None
            else self.kube.serve_details(self.namespace, parse_cluster(rc).head_service)
        )  # fmt: skip
        serve = None if details is None else parse_serve(details, SERVE_APP_NAME, self.stable_app())
        return Sample(
            t=time.monotonic() - t0,
            ready=condition(svc, "Ready").get("status", "?"),
            progressing=condition(svc, "Progressing").get("status", "?"),
            ready_replicas=int(status.get("readyReplicas") or 0),
            active_version=status.get("activeVersion"),
            pending_version=status.get("pendingVersion"),
            running=None if serve is None else serve.running_replicas,
            serve_version=serve.version if serve is not None and serve.settled else None,
            serving=serving_versions(details),
            clusters=tuple(sorted(rc["metadata"]["name"] for rc in self.rayclusters())),
            worker_pods=len(self.worker_pods()),
        )

    # --- writes ------------------------------------------------------------------------
    def patch(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            *LLMSVC[:2], self.namespace, LLMSVC[2], self.name, {"spec": spec},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    def scale(self, replicas: int) -> None:
        """What `kubectl scale llmsvc/<name> --replicas=N` does: the scale subresource."""
        self.custom.patch_namespaced_custom_object_scale(
            *LLMSVC[:2], self.namespace, LLMSVC[2], self.name, {"spec": {"replicas": replicas}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip

    # --- waits -------------------------------------------------------------------------
    def settled(self) -> dict[str, Any]:
        """The LLMService has caught up: Ready, and what runs is the spec (Progressing=False,
        Reconciled; False with InsufficientCapacity is a change held, not done), for its
        current generation."""
        svc = self.svc()
        status = svc.get("status") or {}
        ready, prog = condition(svc, "Ready"), condition(svc, "Progressing")
        if (
            status.get("observedGeneration") == svc["metadata"]["generation"]
            and ready.get("status") == "True"
            and prog.get("status") == "False"
            and prog.get("reason") == "Reconciled"
        ):
            return svc
        raise NotYet(
            f"Ready={ready.get('status')} ({ready.get('message')}); "
            f"Progressing={prog.get('status')} ({prog.get('reason')}: {prog.get('message')})"
        )

    def wait(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        return wait_for(what, check, timeout)

    @contextmanager
    def timeline(self, interval: float = 1.0) -> Iterator[Timeline]:
        """Sample status and Ray side by side in the background while the block runs."""
        line = Timeline()
        stop = threading.Event()
        t0 = time.monotonic()

        def run() -> None:
            while not stop.is_set():
                try:
                    line.samples.append(self.sample(t0))
                except Exception as exc:  # a read racing a delete: skip it, say so on timeout
                    line.skipped += 1
                    line.last_error = f"{type(exc).__name__}: {exc}"[:300]
                stop.wait(interval)

        thread = threading.Thread(target=run, name="timeline", daemon=True)
        thread.start()
        try:
            yield line
        finally:
            stop.set()
            thread.join(timeout=30)
