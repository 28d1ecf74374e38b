"""Every Kubernetes API call the operator makes, with errors classified for kopf.

Conflicts, throttling and server errors are transient (``kopf.TemporaryError`` with a delay);
a request the API server rejects as invalid will not get better by retrying
(``kopf.PermanentError``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import kopf
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from llmservice_operator import constants as c
from llmservice_operator import metrics
from llmservice_operator.refusals import FIELD_SELECTOR as REFUSALS_SELECTOR
from llmservice_operator.refusals import Refusals, latest, refusal

log = logging.getLogger(__name__)

RAY_GROUP, RAY_VERSION = c.RAY_API_VERSION.split("/")
RAYSERVICES = "rayservices"
RAYCLUSTERS = "rayclusters"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
# A GET that answers with the object's metadata only.
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
MERGE_PATCH = "application/merge-patch+json"

# Transient API failures: retry soon. Anything else 4xx means the request itself is wrong.
_RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
RETRY_DELAY_S = 5.0
# Every API call gets (connect, read) timeouts: a hung connection must fail and be retried,
# never hold a worker thread (or the resync loop) forever.
REQUEST_TIMEOUT_S = (10.0, 30.0)
TRANSPORT_ERRORS = (OSError, TimeoutError, urllib3.exceptions.HTTPError)
# Reads of Ray's own Serve API go through the API server's service proxy to the head's dashboard:
# short, because a cluster whose Ray is not up yet must not hold up the reconcile.
SERVE_API_TIMEOUT_S = 5.0
LIST_PAGE_SIZE = 500

# What a reconcile reads of an LLMService's metadata; the rest (managedFields, and the
# annotations where kopf and kubectl keep whole copies of the spec) is most of a listed object.
_LLMSERVICE_METADATA = (
    "name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp", "labels",
)  # fmt: skip


def slim_llmservice(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An LLMService as the resync needs it: identity, spec and status."""
    meta = obj.get("metadata") or {}
    out = {k: obj[k] for k in ("apiVersion", "kind", "spec", "status") if k in obj}
    out["metadata"] = {k: meta[k] for k in _LLMSERVICE_METADATA if k in meta}
    return out


SERVE_DETAILS_PATH = "api/serve/applications/"


class KubeRayMissing(Exception):
    """The API server does not serve a ray.io resource: KubeRay's CRDs are not installed.

    A GET then answers 404 like for a missing object, but with a plain "404 page not found"
    instead of a Status naming the object; retrying an apply would fail the same way until
    KubeRay is installed.
    """


def _missing_resource(exc: ApiException) -> bool:
    if exc.status != 404:
        return False
    try:
        status = json.loads(exc.body or "")
    except ValueError:
        return True  # not a Status at all: no handler serves the path
    details = status.get("details") if isinstance(status, dict) else None
    return not (isinstance(details, dict) and details.get("name"))


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


@contextmanager
def classified(what: str, verb: str = "", resource: str = "") -> Iterator[None]:
    """Turn API errors into kopf's retry semantics, naming what was attempted.

    With `verb` and `resource`, the call is also counted (llmservice_api_requests_total).
    """
    if verb:
        metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
    try:
        yield
    except ApiException as exc:
        # A namespace being deleted refuses new objects (403) until its LLMServices are gone
        # too: that settles by itself, it is not a permissions problem.
        terminating = exc.status == 403 and "being terminated" in _reason(exc)
        if exc.status in _RETRY_STATUSES or exc.status == 0 or terminating:
            raise kopf.TemporaryError(
                f"{what}: HTTP {exc.status} {_reason(exc)}", delay=RETRY_DELAY_S
            ) from exc
        raise kopf.PermanentError(f"{what}: HTTP {exc.status} {_reason(exc)}") from exc
    except TRANSPORT_ERRORS as exc:
        # Connection refused/reset while the API server restarts, a read timeout, urllib3's
        # MaxRetryError/ProtocolError (not OSErrors): the request never got an answer.
        raise kopf.TemporaryError(f"{what}: {exc!r}", delay=RETRY_DELAY_S) from exc


ALL_NAMESPACES = "*"


def _higher_peer_alive(peers: Mapping[str, Any], priority: int) -> bool:
    now = dt.datetime.now(dt.UTC)
    for peer in peers.values():
        if not isinstance(peer, Mapping) or int(peer.get("priority", 0)) <= priority:
            continue
        seen = dt.datetime.fromisoformat(str(peer.get("lastseen")))
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.UTC)
        if seen + dt.timedelta(seconds=int(peer.get("lifetime", 60))) > now:
            return True
    return False


class Kube:
    """Thin typed facade over the generated client for the few calls we need."""

    def __init__(
        self, api_client: client.ApiClient | None = None, serve_direct: bool = False
    ) -> None:
        # serve_direct: read Ray Serve's state from http://<head svc>.<ns>.svc:8265 (an operator
        # in a pod, as KubeRay does), else through the API server's service proxy.
        self.serve_direct = serve_direct
        self._http = urllib3.PoolManager(retries=False) if serve_direct else None
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        # KubeRay's refusals, kept by refusals.keep_watching once the operator starts it.
        self.refusals = Refusals()

    def llmservice_pages(self, namespaces: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every LLMService in the watched namespaces (all namespaces when none are given), a
        page of LIST_PAGE_SIZE at a time, each object slimmed (``slim_llmservice``).

        Pages, and only one held at a time: at 10,000 objects the whole list parsed is ~130 MiB,
        which the resync pass would hold for as long as it takes (bench/operator_bench.py).
        """
        scopes: list[str | None] = list(namespaces) or [None]
        for ns in scopes:
            token: str | None = None
            while True:
                extra: dict[str, Any] = {"_continue": token} if token else {}
                with classified("list LLMServices", "list", "llmservices"):
                    if ns is None:
                        page = self.custom.list_cluster_custom_object(
                            c.GROUP, c.VERSION, c.PLURAL, limit=LIST_PAGE_SIZE,
                            _request_timeout=REQUEST_TIMEOUT_S, **extra,
                        )  # fmt: skip
                    else:
                        page = self.custom.list_namespaced_custom_object(
                            c.GROUP, c.VERSION, ns, c.PLURAL, limit=LIST_PAGE_SIZE,
                            _request_timeout=REQUEST_TIMEOUT_S, **extra,
                        )  # fmt: skip
                page = cast(dict[str, Any], page)
                yield [slim_llmservice(obj) for obj in page.get("items") or []]
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break

    @staticmethod
    def _paged(list_call: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            extra = {"_continue": token} if token else {}
            page = cast(
                dict[str, Any],
                list_call(limit=LIST_PAGE_SIZE, _request_timeout=REQUEST_TIMEOUT_S, **extra),
            )
            items += page["items"]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def outranked(self, peering: str, namespaces: list[str], priority: int) -> set[str]:
        """Where a live kopf peer with a higher priority exists, and so does the work.

        kopf pauses its own handlers there; this lets the resync loop stand by the same way.
        Cluster-wide peering gives {ALL_NAMESPACES}; namespaced peering is per namespace, so
        each watched namespace's KopfPeering is read. No peering CRDs (standalone), or an
        unreadable peering object: nobody outranks us.
        """
        if not namespaces:
            got = self._peers(peering, None)
            return {ALL_NAMESPACES} if _higher_peer_alive(got, priority) else set()
        return {ns for ns in namespaces if _higher_peer_alive(self._peers(peering, ns), priority)}

    def _peers(self, peering: str, namespace: str | None) -> Mapping[str, Any]:
        metrics.API_REQUESTS.labels(verb="get", resource="kopfpeerings").inc()
        try:
            if namespace is None:
                obj = self.custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", peering,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )  # fmt: skip
            else:
                obj = self.custom.get_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", peering,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )  # fmt: skip
        except (ApiException, *TRANSPORT_ERRORS) as exc:
            log.debug("peering %s in %s not readable: %r", peering, namespace or "cluster", exc)
            return {}
        return cast(Mapping[str, Any], cast(dict[str, Any], obj).get("status") or {})

    def post_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """A Kubernetes Event about ``involved``. Best effort: never fails a reconcile."""
        meta = involved["metadata"]
        now = dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
            involved_object=client.V1ObjectReference(
                api_version=involved.get("apiVersion"),
                kind=involved.get("kind"),
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta.get("uid"),
            ),
            type=event_type,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=c.FIELD_MANAGER),
            reporting_component=c.FIELD_MANAGER,
        )
        metrics.API_REQUESTS.labels(verb="create", resource="events").inc()
        try:
            self.core.create_namespaced_event(
                meta["namespace"], event, _request_timeout=REQUEST_TIMEOUT_S
            )
        except (ApiException, *TRANSPORT_ERRORS) as exc:
            log.warning("could not post event %s on %s: %r", reason, meta["name"], exc)

    def _get_ray(self, kind: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with classified(f"get {kind} {namespace}/{name}", "get", plural):
            try:
                obj = self.custom.get_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, namespace, plural, name,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )  # fmt: skip
            except ApiException as exc:
                if _missing_resource(exc):
                    raise KubeRayMissing(
                        f"the API server does not serve {RAY_GROUP}/{RAY_VERSION} {plural}: "
                        "KubeRay's CRDs are not installed"
                    ) from exc
                if exc.status == 404:
                    return None
                raise
            return cast(dict[str, Any], obj)

    def get_rayservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_ray("RayService", RAYSERVICES, namespace, name)

    def apply_rayservice(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply with our one field manager; force takes back fields we own."""
        meta = obj["metadata"]
        with classified(
            f"apply RayService {meta['namespace']}/{meta['name']}", "apply", RAYSERVICES
        ):
            # Raw body: the generated client maps only HTTP 200 of a PATCH to a return value,
            # so an apply that creates the object (201) would come back as None.
            resp = self.custom.patch_namespaced_custom_object(
                RAY_GROUP,
                RAY_VERSION,
                meta["namespace"],
                RAYSERVICES,
                meta["name"],
                dict(obj),
                field_manager=c.FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
                _request_timeout=REQUEST_TIMEOUT_S,
                _preload_content=False,
            )
            return cast(dict[str, Any], json.loads(cast(Any, resp).data))

    def delete_rayservice(self, namespace: str, name: str, uid: str) -> None:
        """Delete a RayService left by a deleted LLMService (UID precondition: only that one)."""
        with classified(f"delete RayService {namespace}/{name}", "delete", RAYSERVICES):
            try:
                self.custom.delete_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, namespace, RAYSERVICES, name,
                    body=client.V1DeleteOptions(
                        preconditions=client.V1Preconditions(uid=uid),
                        propagation_policy="Background",
                    ),
                    _request_timeout=REQUEST_TIMEOUT_S,
                )  # fmt: skip
            except ApiException as exc:
                if exc.status not in (404, 409):  # gone, or replaced meanwhile: not that one
                    raise

    def get_networkpolicy(self, namespace: str, name: str) -> dict[str, Any] | None:
        with classified(f"get NetworkPolicy {namespace}/{name}", "get", "networkpolicies"):
            try:
                obj = self.networking.read_namespaced_network_policy(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT_S
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return cast(dict[str, Any], self.core.api_client.sanitize_for_serialization(obj))

    def apply_networkpolicy(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply, like the RayService's (same field manager, force)."""
        meta = obj["metadata"]
        with classified(
            f"apply NetworkPolicy {meta['namespace']}/{meta['name']}", "apply", "networkpolicies"
        ):
            applied = self.networking.patch_namespaced_network_policy(
                meta["name"],
                meta["namespace"],
                dict(obj),
                field_manager=c.FIELD_MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
            return cast(dict[str, Any], self.core.api_client.sanitize_for_serialization(applied))

    def configmap_exists(self, namespace: str, name: str) -> bool | None:
        """Whether the ConfigMap exists (None: RBAC does not let us look at that name).

        Only its metadata is asked for (PartialObjectMetadata): serve_app's sources are ~45 KiB
        that a look does not need. The chart grants `get` on the one name its operator version
        renders; an operator of another version (an image.tag from another release) is refused
        the look and creates instead, as before.
        """
        what = f"get ConfigMap {namespace}/{name}"
        with classified(what, "get", "configmaps"):
            api = self.core.api_client
            request = api.param_serialize(
                "GET",
                f"/api/v1/namespaces/{namespace}/configmaps/{name}",
                header_params={"Accept": PARTIAL_METADATA},
                auth_settings=["BearerToken"],
            )
            resp = api.call_api(*request, _request_timeout=REQUEST_TIMEOUT_S)
            resp.read()
            if resp.status == 200:
                return True
            if resp.status == 404:
                return False
            if resp.status == 403:
                return None
            raise ApiException(http_resp=resp)

    def create_configmap(self, obj: Mapping[str, Any]) -> bool:
        """Create the ConfigMap unless one of that name exists (True: created). For immutable
        ConfigMaps named by their contents, where existing means in place."""
        meta = obj["metadata"]
        with classified(
            f"create ConfigMap {meta['namespace']}/{meta['name']}", "create", "configmaps"
        ):
            try:
                self.core.create_namespaced_config_map(
                    meta["namespace"],
                    cast(Any, dict(obj)),  # the client sends a dict body as it is
                    field_manager=c.FIELD_MANAGER,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
            return True

    def delete_networkpolicy(self, namespace: str, name: str, uid: str) -> None:
        """Delete our NetworkPolicy (UID precondition: never a same-named successor)."""
        with classified(f"delete NetworkPolicy {namespace}/{name}", "delete", "networkpolicies"):
            try:
                self.networking.delete_namespaced_network_policy(
                    name,
                    namespace,
                    body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)),
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except ApiException as exc:
                if exc.status not in (404, 409):  # gone, or replaced meanwhile: not ours
                    raise

    def get_llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        with classified(f"get LLMService {namespace}/{name}", "get", "llmservices"):
            try:
                obj = self.custom.get_namespaced_custom_object(
                    c.GROUP, c.VERSION, namespace, c.PLURAL, name,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )  # fmt: skip
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return cast(dict[str, Any], obj)

    def patch_llmservice_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> bool:
        """Write status; with `resource_version`, only over that very version of the object.

        Returns False when the object changed since (HTTP 409) or is gone (404).
        """
        patch: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        with classified(
            f"update status of LLMService {namespace}/{name}", "patch", "llmservices/status"
        ):
            try:
                self.custom.patch_namespaced_custom_object_status(
                    c.GROUP,
                    c.VERSION,
                    namespace,
                    c.PLURAL,
                    name,
                    patch,
                    field_manager=c.FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except ApiException as exc:
                # 404: deleted meanwhile, nothing left to report on; 409: written since.
                if exc.status in (404, 409):
                    return False
                raise
            return True

    def get_raycluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_ray("RayCluster", RAYCLUSTERS, namespace, name)

    def patch_raycluster(
        self, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """JSON patch of a RayCluster under the replicas field manager (see ``scale``)."""
        with classified(f"scale RayCluster {namespace}/{name}", "patch", RAYCLUSTERS):
            try:
                patched = self.custom.patch_namespaced_custom_object(
                    RAY_GROUP,
                    RAY_VERSION,
                    namespace,
                    RAYCLUSTERS,
                    name,
                    ops,
                    field_manager=c.REPLICAS_FIELD_MANAGER,
                    _content_type=JSON_PATCH,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except ApiException as exc:
                # A failed `test` op: the worker groups changed under us. Read again, retry.
                if exc.status == 422 and "test" in _reason(exc).lower():
                    raise kopf.TemporaryError(
                        f"RayCluster {name} changed meanwhile", delay=1
                    ) from exc
                raise
            return cast(dict[str, Any], patched)

    def nodes_and_pods(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """Every node, and every pod that has not ended (for the capacity check), or None
        when RBAC does not let us read them (the chart's capacityCheck.enabled=false)."""

        def raw(call: Any, **kw: Any) -> dict[str, Any]:
            # Plain JSON: turning thousands of pods into client models costs seconds.
            return cast(dict[str, Any], json.loads(call(_preload_content=False, **kw).data))

        try:
            with classified("list nodes", "list", "nodes"):
                nodes = self._paged(lambda **kw: raw(self.core.list_node, **kw))
            with classified("list pods of all namespaces", "list", "pods"):
                pods = self._paged(
                    lambda **kw: raw(
                        self.core.list_pod_for_all_namespaces,
                        field_selector="status.phase!=Succeeded,status.phase!=Failed",
                        **kw,
                    )
                )
        except kopf.PermanentError as exc:
            if "HTTP 403" in str(exc):
                return None
            raise
        return nodes, pods

    def _cluster_pods(self, namespace: str, cluster: str, workers_only: bool) -> list[Any]:
        """The live (not terminating) pods of one RayCluster."""
        selector = f"ray.io/cluster={cluster}"
        if workers_only:
            selector += ",ray.io/node-type=worker"
        with classified(f"list pods of RayCluster {namespace}/{cluster}", "list", "pods"):
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S
            )
        return [
            pod
            for pod in pods.items
            if pod.metadata is not None and pod.metadata.deletion_timestamp is None
        ]

    def worker_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        """The live (not terminating) worker pods of one RayCluster."""
        return [
            {
                "name": pod.metadata.name,
                "ip": pod.status.pod_ip if pod.status else None,
                "group": (pod.metadata.labels or {}).get("ray.io/group", ""),
            }
            for pod in self._cluster_pods(namespace, cluster, workers_only=True)
        ]

    def serve_details(self, namespace: str, head_service: str) -> dict[str, Any] | None:
        """Ray Serve's view of its applications, or None when Ray does not answer.

        The same call KubeRay makes (``GET /api/serve/applications/?api_type=declarative``):
        directly to the head's dashboard from a pod (the rendered NetworkPolicy lets the
        operator's pods in), else through the API server's service proxy, which needs no route
        into the pod network. Not answering is a normal state (Ray still starting), never an
        error.
        """
        if self._http is not None:
            return self._serve_details_direct(namespace, head_service)
        metrics.API_REQUESTS.labels(verb="get", resource="services/proxy").inc()
        path = (
            f"/api/v1/namespaces/{namespace}/services/{head_service}:dashboard/proxy/"
            f"{SERVE_DETAILS_PATH}"
        )
        api = self.core.api_client
        try:
            request = api.param_serialize(
                "GET",
                path,
                query_params=[("api_type", "declarative")],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            resp = api.call_api(*request, _request_timeout=SERVE_API_TIMEOUT_S)
            if resp.status != 200:
                log.debug("Serve API of %s/%s: HTTP %s", namespace, head_service, resp.status)
                return None
            body = json.loads(resp.read() or b"{}")
        except (ApiException, ValueError, *TRANSPORT_ERRORS) as exc:
            log.debug("Serve API of %s/%s not answering: %s", namespace, head_service, exc)
            return None
        return body if isinstance(body, dict) else None

    def _serve_details_direct(self, namespace: str, head_service: str) -> dict[str, Any] | None:
        assert self._http is not None
        url = (
            f"http://{head_service}.{namespace}.svc:{c.DASHBOARD_PORT}/{SERVE_DETAILS_PATH}"
            "?api_type=declarative"
        )
        try:
            resp = self._http.request(
                "GET", url, headers={"Accept": "application/json"}, timeout=SERVE_API_TIMEOUT_S
            )
            if resp.status != 200:
                log.debug("Serve API of %s/%s: HTTP %s", namespace, head_service, resp.status)
                return None
            body = json.loads(resp.data or b"{}")
        except (ValueError, *TRANSPORT_ERRORS) as exc:
            log.debug("Serve API of %s/%s not answering: %s", namespace, head_service, exc)
            return None
        return body if isinstance(body, dict) else None

    def ray_pod_metrics(self, namespace: str, cluster: str) -> list[str]:
        """The Prometheus text of every running Ray pod of a RayCluster (port 8080, where Ray's
        metrics agent exports); pods that do not answer are left out (the gate then sees fewer
        answers, never wrong ones)."""
        texts = []
        for pod in self._cluster_pods(namespace, cluster, workers_only=False):
            status = pod.status
            if status is None or status.phase != "Running":
                continue
            text = self._pod_metrics(namespace, str(pod.metadata.name), status.pod_ip)
            if text is not None:
                texts.append(text)
        return texts

    def _pod_metrics(self, namespace: str, pod: str, ip: str | None) -> str | None:
        try:
            if self._http is not None and ip:
                resp = self._http.request(
                    "GET", f"http://{ip}:{c.METRICS_PORT}/metrics", timeout=SERVE_API_TIMEOUT_S
                )
                return resp.data.decode(errors="replace") if resp.status == 200 else None
            metrics.API_REQUESTS.labels(verb="get", resource="pods/proxy").inc()
            api = self.core.api_client
            request = api.param_serialize(
                "GET",
                f"/api/v1/namespaces/{namespace}/pods/{pod}:{c.METRICS_PORT}/proxy/metrics",
                header_params={"Accept": "text/plain"},
                auth_settings=["BearerToken"],
            )
            resp = api.call_api(*request, _request_timeout=SERVE_API_TIMEOUT_S)
            if resp.status != 200:
                return None
            return bytes(resp.read() or b"").decode(errors="replace")
        except (ApiException, ValueError, *TRANSPORT_ERRORS) as exc:
            log.debug("metrics of pod %s/%s not answering: %s", namespace, pod, exc)
            return None

    def list_warning_events(self, namespace: str) -> tuple[list[dict[str, Any]], str]:
        """Warning events about RayServices in `namespace` ("" for all), and the list's version."""
        what = f"list RayService warnings in {namespace or 'all namespaces'}"
        with classified(what, "list", "events"):
            kw: dict[str, Any] = {
                "field_selector": REFUSALS_SELECTOR,
                "_request_timeout": REQUEST_TIMEOUT_S,
                "_preload_content": False,
            }
            resp: Any = (
                self.core.list_namespaced_event(namespace, **kw)
                if namespace
                else self.core.list_event_for_all_namespaces(**kw)
            )
            body = json.loads(resp.data)  # the raw response (_preload_content=False)
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def watch_warning_events(
        self, namespace: str, resource_version: str, timeout_s: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Changes of those events from `resource_version` on, for up to `timeout_s`.

        An ERROR notification (410 Gone: the version is too old) is raised as ApiException."""
        metrics.API_REQUESTS.labels(verb="watch", resource="events").inc()
        core = self.core
        call, args = (
            (core.list_namespaced_event, (namespace,))
            if namespace
            else (core.list_event_for_all_namespaces, ())
        )
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            call, *args, field_selector=REFUSALS_SELECTOR, resource_version=resource_version,
            timeout_seconds=timeout_s, allow_watch_bookmarks=True,
            _request_timeout=(REQUEST_TIMEOUT_S[0], timeout_s + 30),
        )  # fmt: skip
        for change in stream:
            raw = change.get("raw_object") or {}
            if change["type"] == "ERROR":
                raise ApiException(status=int(raw.get("code") or 500), reason=raw.get("message"))
            yield str(change["type"]), raw

    def kuberay_rejection(self, namespace: str, uid: str) -> str | None:
        """The latest message of KubeRay refusing this RayService, if it did (Warning events):
        from the watch's store once it has listed the namespace, else one filtered LIST."""
        if self.refusals.synced(namespace):
            return self.refusals.latest(uid)
        with classified(f"list events of RayService {namespace}", "list", "events"):
            resp: Any = self.core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.uid={uid}",
                _request_timeout=REQUEST_TIMEOUT_S,
                _preload_content=False,
            )
            items = json.loads(resp.data).get("items") or []
        return latest(r for r in map(refusal, items) if r is not None)
