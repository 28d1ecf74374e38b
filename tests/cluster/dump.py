"""What a namespace held when a test failed: LLMServices, RayServices, RayClusters, Pods,
Services and Events as YAML (what KubeRay's test/support prints for a failed e2e test).

The cluster tests' conftest calls this for every failed test that used the `namespace`
fixture. Other tests against a cluster (e.g. serve tests) can call it themselves:

    from tests.cluster.dump import write_namespace_dump
    from tests.cluster.harness import LocalCluster

    cluster = LocalCluster.from_state(cluster_dir)      # or the `cluster` fixture
    text = write_namespace_dump(cluster.api_client, "llm", cluster.log_dir / "dumps" / "x.yaml")

A dump never raises: a kind that cannot be listed (CRD not installed, API server down) is
named with the reason instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from llmservice_operator import constants as c

# Per list call: a dump must not hang a failed test on an API server that does not answer.
REQUEST_TIMEOUT_S = 10
# Terminal output stops after this many lines; the file always has everything.
TERMINAL_LINES = 400

Lister = Callable[[client.ApiClient, str], list[dict[str, Any]]]


def _custom(group: str, version: str, plural: str) -> Lister:
    def list_(api_client: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
        listed: Any = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            group, version, namespace, plural, _request_timeout=REQUEST_TIMEOUT_S
        )
        return list(listed.get("items") or [])

    return list_


def _core(method: str) -> Lister:
    def list_(api_client: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
        # The raw JSON: exactly what the API server returned (camelCase, no model round trip).
        raw: Any = getattr(client.CoreV1Api(api_client), method)(
            namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return list(json.loads(raw.data).get("items") or [])

    return list_


KINDS: tuple[tuple[str, Lister], ...] = (
    ("LLMServices", _custom(c.GROUP, c.VERSION, c.PLURAL)),
    ("RayServices", _custom("ray.io", "v1", "rayservices")),
    ("RayClusters", _custom("ray.io", "v1", "rayclusters")),
    ("Pods", _core("list_namespaced_pod")),
    ("Services", _core("list_namespaced_service")),
    ("Events", _core("list_namespaced_event")),
)


def collect(api_client: client.ApiClient, namespace: str) -> dict[str, list[dict[str, Any]] | str]:
    """Kind -> its objects in `namespace` (Events oldest first), or why they could not be listed."""
    found: dict[str, list[dict[str, Any]] | str] = {}
    for kind, list_ in KINDS:
        try:
            objects = list_(api_client, namespace)
        except client.exceptions.ApiException as exc:
            found[kind] = f"not listed: HTTP {exc.status} {exc.reason}"
            continue
        except Exception as exc:  # connection refused, timeout, bad JSON: say so, go on
            found[kind] = f"not listed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        if kind == "Events":
            objects.sort(key=_event_time)
        else:
            objects.sort(key=lambda o: str(o.get("metadata", {}).get("name", "")))
        found[kind] = objects
    return found


def _event_time(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("metadata", {}).get("creationTimestamp")
        or ""
    )


def _brief_event(event: dict[str, Any]) -> dict[str, Any]:
    involved = event.get("involvedObject") or {}
    source = event.get("source") or {}
    return {
        "time": _event_time(event),
        "type": event.get("type"),
        "reason": event.get("reason"),
        "object": f"{involved.get('kind')}/{involved.get('name')}",
        "count": event.get("count"),
        "from": source.get("component") or event.get("reportingComponent"),
        "message": event.get("message"),
    }


def _without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def render(
    namespace: str, found: dict[str, list[dict[str, Any]] | str], *, full: bool = True
) -> str:
    """YAML documents, one per object, under a comment per kind.

    `full=False` (for the terminal): no managedFields, and Events as one short mapping each.
    """
    parts = []
    for kind, objects in found.items():
        if isinstance(objects, str):
            parts.append(f"# ===== {kind} in {namespace}: {objects}\n")
            continue
        parts.append(f"# ===== {kind} in {namespace} ({len(objects)})\n")
        if not full:
            if kind == "Events":
                objects = [_brief_event(e) for e in objects]
            else:
                objects = [_without_managed_fields(o) for o in objects]
        for obj in objects:
            parts.append("---\n" + yaml.safe_dump(obj, sort_keys=False, width=100))
    return "".join(parts)


def dump_namespace(api_client: client.ApiClient, namespace: str, *, full: bool = False) -> str:
    """The namespace's objects as YAML (see render); never raises."""
    return render(namespace, collect(api_client, namespace), full=full)


def write_namespace_dump(api_client: client.ApiClient, namespace: str, path: Path) -> str:
    """Write the full dump to `path`; return the short form for a terminal (capped, naming the
    file). Never raises: a file that cannot be written is named in the returned text."""
    found = collect(api_client, namespace)
    where = f"# full dump: {path}\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(namespace, found, full=True))
    except OSError as exc:
        where = f"# full dump not written to {path}: {exc}\n"
    lines = render(namespace, found, full=False).splitlines(keepends=True)
    if len(lines) > TERMINAL_LINES:
        cut = len(lines) - TERMINAL_LINES
        lines = [*lines[:TERMINAL_LINES], f"# ... {cut} more lines in the file\n"]
    return where + "".join(lines)


def dump_file_name(nodeid: str) -> str:
    """A file name for a test's dump: its node id with everything unusual made '-'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-")[:150] + ".yaml"
