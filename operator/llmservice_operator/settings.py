"""Operator configuration: flags of `llmservice operator`, or env vars under `kopf run`."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import kubernetes

ENV_PREFIX = "LLMSERVICE_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)  # empty: cluster-wide
    timer_interval: float = 60.0
    watch_server_timeout: int = 270
    metrics_port: int = 8080  # 0: off
    liveness_endpoint: str | None = "http://0.0.0.0:8081/healthz"
    peering_name: str = "llmservice-operator"
    standalone: bool = False
    # kopf pauses every replica that sees a peer of the same priority: each replica needs its
    # own. Random by default, so replicas of one Deployment are a leader and hot standbys.
    priority: int = field(default_factory=lambda: random.randint(1, 2**30))
    max_workers: int = 8
    # How Ray Serve's state is read from each head's dashboard: "direct" over the pod network
    # (what KubeRay does by default), "proxy" through the API server's service proxy (KubeRay's
    # --use-kubernetes-proxy), "auto": direct in a pod, proxy from outside the cluster.
    serve_api: str = "auto"

    @classmethod
    def from_env(cls) -> OperatorConfig:
        namespaces = [n for n in _env("NAMESPACES", "").split(",") if n]
        return cls(
            namespaces=namespaces,
            timer_interval=float(_env("TIMER_INTERVAL", "60")),
            watch_server_timeout=int(_env("WATCH_SERVER_TIMEOUT", "270")),
            metrics_port=int(_env("METRICS_PORT", "8080")),
            liveness_endpoint=_env("LIVENESS_ENDPOINT", "http://0.0.0.0:8081/healthz") or None,
            peering_name=_env("PEERING", "llmservice-operator"),
            standalone=_env("STANDALONE", "false").lower() in ("1", "true", "yes"),
            priority=int(_env("PRIORITY", "0")) or random.randint(1, 2**30),
            max_workers=int(_env("MAX_WORKERS", "8")),
            serve_api=_env("SERVE_API", "auto"),
        )

    def to_env(self) -> dict[str, str]:
        """The same config as env vars (the timer interval is read when handlers register)."""
        return {
            ENV_PREFIX + "NAMESPACES": ",".join(self.namespaces),
            ENV_PREFIX + "TIMER_INTERVAL": str(self.timer_interval),
            ENV_PREFIX + "WATCH_SERVER_TIMEOUT": str(self.watch_server_timeout),
            ENV_PREFIX + "METRICS_PORT": str(self.metrics_port),
            ENV_PREFIX + "LIVENESS_ENDPOINT": self.liveness_endpoint or "",
            ENV_PREFIX + "PEERING": self.peering_name,
            ENV_PREFIX + "STANDALONE": str(self.standalone).lower(),
            ENV_PREFIX + "PRIORITY": str(self.priority),
            ENV_PREFIX + "MAX_WORKERS": str(self.max_workers),
            ENV_PREFIX + "SERVE_API": self.serve_api,
        }

    @staticmethod
    def load_kube_config() -> bool:
        """In a pod: its ServiceAccount; elsewhere: KUBECONFIG or ~/.kube/config.

        Returns whether the operator runs in a pod (inside the cluster network).
        """
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
            return False
        return True

    def serve_api_direct(self, in_cluster: bool) -> bool:
        """Whether to read Ray Serve's state over the pod network (see ``serve_api``)."""
        if self.serve_api not in ("auto", "direct", "proxy"):
            raise ValueError(f"serve API mode {self.serve_api!r}: expected auto, direct or proxy")
        return self.serve_api == "direct" or (self.serve_api == "auto" and in_cluster)
