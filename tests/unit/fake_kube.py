"""An in-memory stand-in for ``llmservice_operator.k8s.Kube``: reconcile() without a cluster.

It keeps objects in dicts, applies JSON patches (test/add/replace, the ops the operator sends)
and records every write and event, so tests assert on what the operator did.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import yaml

from llmservice_operator.k8s import KubeRayMissing


def _walk(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for op in ops:
        parent, key = _walk(out, op["path"])
        index: Any = int(key) if isinstance(parent, list) else key
        if op["op"] == "test":
            if parent[index] != op["value"]:
                raise kopf.TemporaryError(f"test failed at {op['path']}", delay=1)
        elif op["op"] in ("add", "replace"):
            parent[index] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unexpected op {op}")
    return out


class FakeKube:
    def __init__(self) -> None:
        self.rayservices: dict[tuple[str, str], dict[str, Any]] = {}
        self.rayclusters: dict[tuple[str, str], dict[str, Any]] = {}
        self.networkpolicies: dict[tuple[str, str], dict[str, Any]] = {}
        self.policy_writes: list[tuple[str, str]] = []  # (apply|delete, name)
        self.pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.serve: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, head service) -> details
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.cluster_patches: list[tuple[str, list[dict[str, Any]]]] = []
        self.rejections: dict[str, str] = {}
        self.rejection_lookups = 0  # event LISTs: the API server scans the namespace's events
        self.apply_hook: Callable[[Mapping[str, Any]], None] | None = None
        self.kuberay_installed = True
        self.llmservice_version: str | None = None  # the LLMService's live resourceVersion
        self.llmservices: dict[tuple[str, str], dict[str, Any]] = {}  # for get_llmservice
        self.reads: list[str] = []  # kinds of the children read (GET), in order
        self.parent_reads = 0  # GETs of an LLMService
        self.deleted: list[tuple[str, str]] = []  # (kind, name) of RayServices deleted
        # (nodes, pods) for the capacity check; None: not allowed to list them
        self.metrics: dict[tuple[str, str], list[str]] = {}  # (ns, cluster) -> pods' /metrics
        self.room: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmap_creates = 0  # create calls, whether or not one existed
        self.configmap_gets = 0
        self.configmap_get_forbidden = False  # RBAC without get on the ConfigMap's name

    # --- the Kube facade -----------------------------------------------------------
    def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        if not self.kuberay_installed:
            raise KubeRayMissing(
                "ray.io/v1 rayservices not served: KubeRay's CRDs are not installed"
            )
        self.reads.append("RayService")
        obj = self.rayservices.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def apply_rayservice(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if self.apply_hook is not None:
            self.apply_hook(obj)
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        live = self.rayservices.get(key, {"status": {}})
        gen = int(live.get("metadata", {}).get("generation", 0)) + 1
        new = copy.deepcopy(dict(obj))
        new["metadata"] = {
            **new["metadata"],
            "generation": gen,
            "uid": f"uid-{meta['name']}",
            "resourceVersion": str(gen),
        }
        new["status"] = live.get("status", {})
        self.rayservices[key] = new
        return copy.deepcopy(new)

    def delete_rayservice(self, namespace: str, name: str, uid: str) -> None:
        live = self.rayservices.get((namespace, name))
        if live is not None and live["metadata"].get("uid") == uid:
            del self.rayservices[(namespace, name)]
            self.deleted.append(("RayService", name))

    def nodes_and_pods(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        return copy.deepcopy(self.room)

    def get_networkpolicy(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append("NetworkPolicy")
        obj = self.networkpolicies.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def apply_networkpolicy(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if self.apply_hook is not None:
            self.apply_hook(obj)
        meta = obj["metadata"]
        live = self.networkpolicies.get((meta["namespace"], meta["name"]), {})
        gen = int(live.get("metadata", {}).get("generation", 0)) + 1
        new = copy.deepcopy(dict(obj))
        new["metadata"] = {
            **new["metadata"],
            "uid": f"uid-np-{meta['name']}",
            "generation": gen,
            "resourceVersion": f"np{gen}",
        }
        self.networkpolicies[(meta["namespace"], meta["name"])] = new
        self.policy_writes.append(("apply", meta["name"]))
        return copy.deepcopy(new)

    def configmap_exists(self, namespace: str, name: str) -> bool | None:
        self.configmap_gets += 1
        if self.configmap_get_forbidden:
            return None
        return (namespace, name) in self.configmaps

    def create_configmap(self, obj: Mapping[str, Any]) -> bool:
        if self.apply_hook is not None:
            self.apply_hook(obj)
        self.configmap_creates += 1
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.configmaps:
            return False
        self.configmaps[key] = copy.deepcopy(dict(obj))
        return True

    def delete_networkpolicy(self, namespace: str, name: str, uid: str) -> None:
        live = self.networkpolicies.get((namespace, name))
        if live is not None and live["metadata"].get("uid") == uid:
            del self.networkpolicies[(namespace, name)]
            self.policy_writes.append(("delete", name))

    def get_llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.parent_reads += 1
        obj = self.llmservices.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def get_raycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.rayclusters.get((namespace, name))
        return copy.deepcopy(obj) if obj else None

    def patch_raycluster(
        self, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        self.cluster_patches.append((name, ops))
        patched = json_patch(self.rayclusters[(namespace, name)], ops)
        self.rayclusters[(namespace, name)] = patched
        return copy.deepcopy(patched)

    def worker_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.pods.get((namespace, cluster), []))

    def serve_details(self, namespace: str, head_service: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.serve.get((namespace, head_service)))

    def kuberay_rejection(self, namespace: str, uid: str) -> str | None:
        self.rejection_lookups += 1
        return self.rejections.get(uid)

    def ray_pod_metrics(self, namespace: str, cluster: str) -> list[str]:
        return list(self.metrics.get((namespace, cluster), []))

    def post_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        self.events.append((event_type, reason, message))

    def patch_llmservice_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> bool:
        if resource_version is not None and resource_version != self.llmservice_version:
            return False  # HTTP 409: the object has been modified
        self.statuses.append(copy.deepcopy(dict(status)))
        return True

    # --- test helpers --------------------------------------------------------------
    def serve_runs_config(self, namespace: str, rayservice: str, cluster: str) -> None:
        """Ray Serve on `cluster` runs exactly the live RayService's serveConfigV2."""
        rs = self.rayservices[(namespace, rayservice)]
        apps: dict[str, Any] = {}
        for app in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]:
            deployments: dict[str, Any] = {}
            for options in app.get("deployments") or []:
                n = options.get("num_replicas") or 1
                deployments[options["name"]] = {
                    "status": "HEALTHY",
                    "target_num_replicas": n,
                    "replicas": [{"state": "RUNNING", "node_ip": f"10.0.0.{i}"} for i in range(n)],
                }
            apps[app["name"]] = {
                "name": app["name"],
                "status": "RUNNING",
                "message": "",
                "deployed_app_config": copy.deepcopy(app),
                "deployments": deployments,
            }
        self.serve[(namespace, f"{cluster}-head-svc")] = {"applications": apps}

    def add_cluster(
        self, namespace: str, name: str, groups: list[dict[str, Any]], ready_workers: int = 0
    ) -> None:
        self.rayclusters[(namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"workerGroupSpecs": copy.deepcopy(groups)},
            "status": {
                "readyWorkerReplicas": ready_workers,
                "head": {"serviceName": f"{name}-head-svc"},
            },
        }
