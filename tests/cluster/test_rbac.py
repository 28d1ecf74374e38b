"""The chart's RBAC is enough for the operator's whole job, and nothing more.

The chart is installed (its ServiceAccount, (Cluster)Roles and bindings), a token is minted for
that ServiceAccount (TokenRequest API), and the real operator process runs with a kubeconfig
holding only that token. It must do everything (create, update, status, Events, kopf's own
patches and peering) without one 403; the same token must get 403 for everything outside that
job (Secrets anywhere, Deployments, deletes, and in namespaced mode other namespaces).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmservice_operator import constants as c
from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.objects import condition, get_rs, get_svc, llmservice, patch_spec
from tests.cluster.operator_process import OperatorProcess, install_llmservice_crd
from tests.cluster.test_install import Helm, fullname, release_name

pytestmark = pytest.mark.cluster

RAY = ("ray.io", "v1", "rayservices")
WAIT_S = 60.0
# A refused request in the operator's log: urllib3's request line, kopf's APIForbiddenError, or
# the message of the API server's Status.
NAMESPACED_PATH = re.compile(r"/namespaces/([^/?\s]+)/")
REFUSED = re.compile(r'HTTP/1\.1" 403|status=403|[Ff]orbidden|[Nn]ot enough permissions')


@dataclass(frozen=True)
class Mode:
    namespaced: bool
    peering: bool


MODES = {
    "cluster": Mode(namespaced=False, peering=False),  # the chart's defaults
    "cluster-peering": Mode(namespaced=False, peering=True),
    "namespaced-peering": Mode(namespaced=True, peering=True),
}


@pytest.fixture
def helm(cluster: LocalCluster, tmp_path: Path) -> Helm:
    return Helm(cluster, tmp_path / "helm-home")


def token_kubeconfig(cluster: LocalCluster, token: str, path: Path) -> Path:
    """The harness's kubeconfig (server URL, CA) with the ServiceAccount's token as the user."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"},
            }
        ],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def token_client(cluster: LocalCluster, token: str) -> client.ApiClient:
    cfg = client.Configuration(host=cluster.server)
    cfg.ssl_ca_cert = str(cluster.pki.ca_crt)
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(cfg)


def status_of(call: Callable[[], Any]) -> int:
    """HTTP status of an API call: 200 if it went through, else the error's status."""
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


@pytest.fixture
def namespaces(core: client.CoreV1Api, namespace: str) -> Iterator[dict[str, str]]:
    """home: the release's namespace; watched: LLMServices; other: never the operator's."""
    names = {"home": namespace, "watched": f"{namespace}-w", "other": f"{namespace}-o"}
    for key in ("watched", "other"):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=names[key])))
    yield names
    for key in ("watched", "other"):
        core.delete_namespace(names[key])


@pytest.mark.parametrize("mode_name", MODES)
def test_chart_rbac_is_enough_for_the_operator_and_no_more(
    mode_name: str,
    cluster: LocalCluster,
    core: client.CoreV1Api,
    namespaces: dict[str, str],
    helm: Helm,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mode = MODES[mode_name]
    home, watched, other = namespaces["home"], namespaces["watched"], namespaces["other"]
    install_llmservice_crd(cluster.api_client)
    release = release_name("rbac")
    peering_name = f"rbac-{secrets.token_hex(3)}"
    values = ["--set", "crds.install=false"]
    if mode.namespaced:
        values += ["--set", f"watchNamespaces={{{watched}}}"]
    if mode.peering:
        values += ["--set", "peering.enabled=true", "--set", f"peering.name={peering_name}"]
    helm.install(release, home, *values)
    sa = fullname(release)

    token = core.create_namespaced_service_account_token(
        sa,
        home,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
        ),
    ).status.token
    kubeconfig = token_kubeconfig(cluster, token, tmp_path / "operator.kubeconfig")

    extra = ["--namespace", watched] if mode.namespaced else []
    proc = OperatorProcess(cluster, f"operator-{release}", *extra, kubeconfig=kubeconfig)
    if mode.peering:
        proc.args.remove("--standalone")
        proc.args += ["--peering", peering_name]
    identity = f"rbac-test-{mode_name}"
    monkeypatch.setenv("POD_ID", identity)  # kopf's peering identity
    proc.start()
    as_operator = token_client(cluster, token)
    try:
        do_the_whole_job(cluster, core, watched, mode, peering_name, identity)
        denied_outside_the_job(as_operator, mode, home, watched, other, sa)
        # Not one request of the operator was refused (kopf logs every 403 it meets).
        # Cluster-wide, it also sees objects that earlier tests left in namespaces being
        # deleted; writes there are refused for that reason, not for want of RBAC.
        ours = {home, watched, other}
        forbidden = [
            line
            for line in proc.tail(100000).splitlines()
            if REFUSED.search(line)
            and "being terminated" not in line
            and not ((m := NAMESPACED_PATH.search(line)) and m.group(1) not in ours)
        ]
        assert forbidden == [], "\n".join(forbidden[:20])
    except BaseException:
        print(f"\n--- operator log (tail) ---\n{proc.tail()}")
        raise
    finally:
        proc.stop()
        as_operator.close()  # type: ignore[no-untyped-call]
        helm.uninstall(release, home)


def do_the_whole_job(
    cluster: LocalCluster,
    core: client.CoreV1Api,
    ns: str,
    mode: Mode,
    peering_name: str,
    identity: str,
) -> None:
    """Create -> RayService + status + Event; update -> applied; delete -> gone."""
    api = client.CustomObjectsApi(cluster.api_client)
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, llmservice(ns))
    rs = wait_for("RayService created", lambda: get_rs(api, ns, "llama"), WAIT_S)
    svc = get_svc(api, ns, "llama")
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("LLMService", svc["metadata"]["uid"])

    svc = wait_for(
        "status written through the status subresource",
        lambda: (s := get_svc(api, ns, "llama")).get("status", {}).get("observedGeneration") and s,
        WAIT_S,
    )
    assert condition(svc, "Ready") and condition(svc, "Progressing")

    def events(reason: str) -> list[client.CoreV1Event]:
        found: list[client.CoreV1Event] = core.list_namespaced_event(
            ns, field_selector=f"involvedObject.name=llama,reason={reason}"
        ).items
        return [e for e in found if e.source and e.source.component == c.FIELD_MANAGER]

    applied = wait_for("Applied Event posted by the operator", lambda: events("Applied"), WAIT_S)
    assert "created" in applied[0].message

    # Update: the new spec is server-side applied.
    before = rs["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]
    patch_spec(api, ns, "llama", {"replicas": 3})
    wait_for(
        "update applied to the RayService",
        lambda: (
            (r := get_rs(api, ns, "llama")) is not None
            and r["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH] != before
        ),
        WAIT_S,
    )
    wait_for(
        "status follows the update",
        lambda: get_svc(api, ns, "llama")["status"].get("replicas") == 3,
        WAIT_S,
    )
    wait_for(
        "'updated' Event",
        lambda: [e for e in events("Applied") if "updated" in (e.message or "")],
        WAIT_S,
    )
    # kopf's bookkeeping stays in the operator's memory (bookkeeping.py): two generations
    # handled, and not one of kopf's annotations patched onto the LLMService (kopf handles an
    # object's events one after another, so the first one's patch would be there by now).
    kept = get_svc(api, ns, "llama")["metadata"].get("annotations") or {}
    assert [k for k in kept if k.startswith(f"{c.GROUP}/")] == [], kept

    if mode.peering:
        # kopf found its peering object and patched its keep-alive into it.
        if mode.namespaced:
            peering = api.get_namespaced_custom_object(
                "kopf.dev", "v1", ns, "kopfpeerings", peering_name
            )
        else:
            peering = api.get_cluster_custom_object(
                "kopf.dev", "v1", "clusterkopfpeerings", peering_name
            )
        assert identity in (peering.get("status") or {}), peering

    # Delete: never needs the operator (no finalizer); the garbage collector (or the operator,
    # sooner) removes the child.
    assert not get_svc(api, ns, "llama")["metadata"].get("finalizers")
    api.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, "llama")
    wait_for("RayService garbage-collected", lambda: get_rs(api, ns, "llama") is None, WAIT_S)


def denied_outside_the_job(
    as_operator: client.ApiClient, mode: Mode, home: str, watched: str, other: str, sa: str
) -> None:
    core = client.CoreV1Api(as_operator)
    apps = client.AppsV1Api(as_operator)
    custom = client.CustomObjectsApi(as_operator)
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="x"), string_data={"k": "v"})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "intruder"},
        "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "x", "image": "busybox"}]},
            },
        },
    }
    denied: dict[str, Callable[[], Any]] = {
        # Secrets: no access at all, anywhere.
        "list secrets, all namespaces": lambda: core.list_secret_for_all_namespaces(),
        "list secrets, own namespace": lambda: core.list_namespaced_secret(home),
        "list secrets, watched namespace": lambda: core.list_namespaced_secret(watched),
        "get a secret": lambda: core.read_namespaced_secret("hf-token", watched),
        "create a secret": lambda: core.create_namespaced_secret(watched, secret),
        # Workloads: none, not even its own Deployment.
        "create a Deployment elsewhere": lambda: apps.create_namespaced_deployment(
            other, deployment
        ),
        "patch its own Deployment": lambda: apps.patch_namespaced_deployment(
            sa, home, {"spec": {"replicas": 5}}
        ),
        # Pods: listed (to pick an idle worker on a scale-down), never read, exec'd or deleted.
        "read a pod": lambda: core.read_namespaced_pod("x", watched),
        "read a node": lambda: core.read_node("x"),
        "patch a node": lambda: core.patch_node("x", {"metadata": {"labels": {"x": "y"}}}),
        "delete pods": lambda: core.delete_collection_namespaced_pod(watched),
        # Pods' metrics (a canary's gate) are read through the proxy, never written.
        "POST through a pod proxy": lambda: core.connect_post_namespaced_pod_proxy(
            "x:8080", watched
        ),
        # ConfigMaps: serve_app's is looked up by its one name; no other is read or listed.
        "read another ConfigMap": lambda: core.read_namespaced_config_map(
            "kube-root-ca.crt", watched
        ),
        "list ConfigMaps": lambda: core.list_namespaced_config_map(watched),
        # Services: only proxied GETs (Ray Serve's state), never written through the proxy.
        "POST through a service proxy": lambda: core.connect_post_namespaced_service_proxy(
            "x:dashboard", watched
        ),
        # RayClusters: KubeRay's to create and delete; only their sizes are patched.
        "delete a RayCluster": lambda: custom.delete_namespaced_custom_object(
            *RAY[:2], watched, "rayclusters", "x"
        ),
        # Deletion is the garbage collector's job, never the operator's.
        "delete an LLMService": lambda: custom.delete_namespaced_custom_object(
            c.GROUP, c.VERSION, watched, c.PLURAL, "llama"
        ),
        # RayServices: one at a time by UID precondition (the children a deleted LLMService
        # left behind, as the garbage collector would), never a collection.
        "delete all RayServices": lambda: custom.delete_collection_namespaced_custom_object(
            *RAY[:2], watched, RAY[2]
        ),
        "write the CRD": lambda: client.ApiextensionsV1Api(
            as_operator
        ).patch_custom_resource_definition(
            f"{c.PLURAL}.{c.GROUP}", {"metadata": {"labels": {"x": "y"}}}
        ),
    }
    if not mode.namespaced:  # cluster mode never reads namespaces; namespaced kopf follows them
        denied["list namespaces"] = lambda: core.list_namespace()
    if mode.namespaced:
        denied |= {
            "list LLMServices elsewhere": lambda: custom.list_namespaced_custom_object(
                c.GROUP, c.VERSION, other, c.PLURAL
            ),
            "list LLMServices cluster-wide": lambda: custom.list_cluster_custom_object(
                c.GROUP, c.VERSION, c.PLURAL
            ),
            "create an LLMService elsewhere": lambda: custom.create_namespaced_custom_object(
                c.GROUP, c.VERSION, other, c.PLURAL, llmservice(other)
            ),
            "patch an LLMService elsewhere": lambda: custom.patch_namespaced_custom_object(
                c.GROUP,
                c.VERSION,
                other,
                c.PLURAL,
                "llama",
                {"metadata": {"labels": {"x": "y"}}},
                _content_type="application/merge-patch+json",
            ),
            "patch LLMService status elsewhere": lambda: (
                custom.patch_namespaced_custom_object_status(
                    c.GROUP,
                    c.VERSION,
                    other,
                    c.PLURAL,
                    "llama",
                    {"status": {}},
                    _content_type="application/merge-patch+json",
                )
            ),
            "delete a RayService elsewhere": lambda: custom.delete_namespaced_custom_object(
                *RAY[:2], other, RAY[2], "llama"
            ),
            "create a RayService elsewhere": lambda: custom.create_namespaced_custom_object(
                *RAY[:2],
                other,
                RAY[2],
                {
                    "apiVersion": "ray.io/v1",
                    "kind": "RayService",
                    "metadata": {"name": "x"},
                    "spec": {},
                },
            ),
            "post an Event elsewhere": lambda: core.create_namespaced_event(
                other,
                client.CoreV1Event(
                    metadata=client.V1ObjectMeta(generate_name="x."),
                    involved_object=client.V1ObjectReference(kind="Pod", name="x", namespace=other),
                ),
            ),
        }
    got = {what: status_of(call) for what, call in denied.items()}
    assert got == dict.fromkeys(denied, 403)

    # ... while the calls of its job are allowed (where it has them).
    allowed: dict[str, Callable[[], Any]] = {
        "list LLMServices": lambda: custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, watched, c.PLURAL
        ),
        "list RayServices": lambda: custom.list_namespaced_custom_object(*RAY[:2], watched, RAY[2]),
        "list pods": lambda: core.list_namespaced_pod(watched),
        "list events": lambda: core.list_namespaced_event(watched),
        # The capacity check (capacityCheck.enabled, the default): nodes and every pod on them.
        "list nodes": lambda: core.list_node(limit=1),
        "list pods, all namespaces": lambda: core.list_pod_for_all_namespaces(limit=1),
        "list CRDs": lambda: client.ApiextensionsV1Api(as_operator).list_custom_resource_definition(
            limit=1
        ),
    }
    assert {what: status_of(call) for what, call in allowed.items()} == dict.fromkeys(allowed, 200)
