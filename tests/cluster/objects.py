"""LLMService and RayService objects on the test control plane: builders, reads, waits.

Shared by the cluster test modules (each of which owns its own fixtures).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmservice_operator import constants as c
from tests.cluster.harness import wait_for
from tests.unit.examples import example_services

RAY = ("ray.io", "v1")
WAIT_S = 60.0


def llmservice(namespace: str, name: str = "llama", **spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(example_services()["llama-8b-l4"])
    obj["metadata"] = {"name": name, "namespace": namespace}
    obj["spec"].update(spec)
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}  # None: drop the key
    return obj


def get_svc(api: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = api.get_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, name)
    return obj


def get_rs(api: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(*RAY, ns, "rayservices", name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return obj


def raycluster(api: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    """The RayCluster the RayService serves from (or, before the first switch, brings up)."""
    rs = get_rs(api, ns, name)
    status = (rs or {}).get("status") or {}
    cluster_name = (status.get("activeServiceStatus") or {}).get("rayClusterName") or (
        status.get("pendingServiceStatus") or {}
    ).get("rayClusterName")
    if not cluster_name:
        return None
    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(
            *RAY, ns, "rayclusters", cluster_name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return obj


def serve_args(rs: dict[str, Any]) -> dict[str, Any]:
    """The model's args (the application that runs it: the one with a model source)."""
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    args: dict[str, Any] = next(a["args"] for a in apps if "model_source" in a["args"])
    return args


def serve_replicas(rs: dict[str, Any]) -> int | None:
    """The model deployment's fixed replica count in the RayService's Serve config."""
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    app = next(a for a in apps if "model_source" in a["args"])
    count = app["deployments"][0].get("num_replicas")
    return None if count is None else int(count)


def worker_group(rs: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    return group


def patch_spec(api: client.CustomObjectsApi, ns: str, name: str, spec: dict[str, Any]) -> None:
    api.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.PLURAL, name, {"spec": spec},
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def wait_rs(
    api: client.CustomObjectsApi, ns: str, name: str, check: Any, what: str
) -> dict[str, Any]:
    return wait_for(
        what, lambda: (rs := get_rs(api, ns, name)) is not None and check(rs) and rs, WAIT_S
    )


def condition(svc: dict[str, Any], ctype: str) -> dict[str, Any]:
    for cond in (svc.get("status") or {}).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return {}


def wait_ready_reason(
    api: client.CustomObjectsApi, ns: str, name: str, reason: str, timeout: float = WAIT_S
) -> dict[str, Any]:
    """The LLMService once its Ready condition carries `reason`."""

    def reached() -> dict[str, Any] | None:
        svc = get_svc(api, ns, name)
        return svc if condition(svc, "Ready").get("reason") == reason else None

    return wait_for(f"Ready reason {reason}", reached, timeout)


def warned(core: client.CoreV1Api, ns: str, name: str, reason: str) -> bool:
    """A Warning Event with `reason` was posted about the LLMService `name`.

    The operator posts it just after the status write: wait for it, never read it once.
    """
    events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return any(e.reason == reason and e.type == "Warning" for e in events)
