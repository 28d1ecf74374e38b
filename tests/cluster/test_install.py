"""Install paths on the real API server: `helm install/upgrade/uninstall`, `kubectl apply` of
manifests/install.yaml, and Pod Security admission of the operator pod.

The operator pods are KWOK pods: scheduled, admitted and marked Running, but running no code. That
is enough here: what is tested is what the API server, its admission chain and the controllers do
with the chart's objects. tests/cluster/test_rbac.py runs the real operator with the chart's RBAC.
"""

from __future__ import annotations

import copy
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from llmservice_operator import constants as c
from tests.cluster.harness import DEFAULT_BIN_DIR, REPO_ROOT, LocalCluster, wait_for
from tests.cluster.objects import llmservice

pytestmark = pytest.mark.cluster

HELM = DEFAULT_BIN_DIR / "helm"
KUBECTL = DEFAULT_BIN_DIR / "kubectl"
CHART = REPO_ROOT / "charts" / "llmservice-operator"
INSTALL_YAML = REPO_ROOT / "manifests" / "install.yaml"
CRD_NAME = f"{c.PLURAL}.{c.GROUP}"
CHART_FILES_CRD = Path("files") / "crds" / f"{CRD_NAME}.yaml"
INSTANCE = "app.kubernetes.io/instance"
WAIT_S = 60.0
# What a release creates, by kind (the CRD is kept on uninstall, by policy).
RELEASE_KINDS = (
    "deployments.apps,replicasets.apps,pods,serviceaccounts,services,"
    "roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io,"
    "clusterroles.rbac.authorization.k8s.io,clusterrolebindings.rbac.authorization.k8s.io"
)


# --- helpers shared with test_rbac.py ---------------------------------------------------------


class Helm:
    """bin/helm against the local cluster, with its cache/config/data in a temp dir."""

    def __init__(self, cluster: LocalCluster, home: Path) -> None:
        self.kubeconfig = cluster.kubeconfig
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(HELM), *args, "--kubeconfig", str(self.kubeconfig)],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def install(self, release: str, namespace: str, *values: str, chart: Path = CHART) -> str:
        return self("install", release, str(chart), "--namespace", namespace, *values).stdout

    def uninstall(self, release: str, namespace: str) -> str:
        return self("uninstall", release, "--namespace", namespace, "--wait").stdout


@pytest.fixture
def helm(cluster: LocalCluster, tmp_path: Path) -> Helm:
    if not HELM.is_file():
        pytest.fail(f"{HELM} not found: run `make tools`", pytrace=False)
    return Helm(cluster, tmp_path / "helm-home")


def kubectl(
    cluster: LocalCluster, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result


def release_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def fullname(release: str) -> str:
    return f"{release}-llmservice-operator"


def delete_llmservice_crd(api_client: client.ApiClient) -> None:
    """Remove the LLMService CRD (left by other tests, or kept by a release) and wait until gone.

    A release that renders the CRD can only create it, or adopt one carrying its own release's
    ownership annotations; this makes "helm install creates the CRD" a real statement.
    """
    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.delete_custom_resource_definition(CRD_NAME)
    except ApiException as exc:
        if exc.status != 404:
            raise

    def gone() -> bool:
        try:
            ext.read_custom_resource_definition(CRD_NAME)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(f"CRD {CRD_NAME} deleted", gone, WAIT_S)


def read_crd(api_client: client.ApiClient) -> dict[str, Any]:
    raw: dict[str, Any] = client.ApiClient().sanitize_for_serialization(
        client.ApiextensionsV1Api(api_client).read_custom_resource_definition(CRD_NAME)
    )
    return raw


def crd_established(api_client: client.ApiClient) -> bool:
    conditions = read_crd(api_client).get("status", {}).get("conditions", [])
    return any(x["type"] == "Established" and x["status"] == "True" for x in conditions)


def release_objects(cluster: LocalCluster, release: str) -> list[str]:
    """Every object (of the kinds a release makes, CRD aside) labelled with this release."""
    out = kubectl(cluster, "get", RELEASE_KINDS, "-A", "-l", f"{INSTANCE}={release}", "-o", "name")
    return out.stdout.split()


def operator_pods(core: client.CoreV1Api, namespace: str, release: str) -> list[client.V1Pod]:
    pods: list[client.V1Pod] = core.list_namespaced_pod(
        namespace, label_selector=f"{INSTANCE}={release}"
    ).items
    return pods


def pod_security_failures(core: client.CoreV1Api, namespace: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector="reason=FailedCreate").items
    return [e.message for e in events if "violates PodSecurity" in (e.message or "")]


# --- helm install / upgrade / uninstall -------------------------------------------------------


@pytest.mark.compat
def test_helm_install_upgrade_uninstall(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str, helm: Helm, tmp_path: Path
) -> None:
    api_client = cluster.api_client
    delete_llmservice_crd(api_client)
    release = release_name("lso")
    name = fullname(release)

    notes = helm.install(release, namespace)
    assert "kubectl -n default get llmsvc" in notes  # NOTES.txt: what to run next
    assert f"{name}-metrics.{namespace}.svc:8080/metrics" in notes

    # The CRD, created by the release, served, and kept on uninstall by policy.
    wait_for("LLMService CRD Established", lambda: crd_established(api_client), WAIT_S)
    crd = read_crd(api_client)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"][INSTANCE] == release
    columns = [col["name"] for col in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Model", "Version", "Replicas", "Ready", "Status", "Canary", "Age"]

    # RBAC, ServiceAccount, Service, Deployment.
    rbac = client.RbacAuthorizationV1Api(api_client)
    role = rbac.read_cluster_role(name)
    assert {r.api_groups[0] for r in role.rules} == {
        "apiextensions.k8s.io", "llmservice.dev", "ray.io", "", "events.k8s.io",
        "networking.k8s.io",
    }  # fmt: skip
    binding = rbac.read_cluster_role_binding(name)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
        ("ServiceAccount", name, namespace)
    ]
    core.read_namespaced_service_account(name, namespace)
    assert core.read_namespaced_service(f"{name}-metrics", namespace).spec.ports[0].port == 8080
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    assert deployment.spec.replicas == 1 and deployment.spec.strategy.type == "Recreate"
    pods = wait_for(
        "operator pod Running (KWOK)",
        lambda: [p for p in operator_pods(core, namespace, release) if p.status.phase == "Running"],
        WAIT_S,
    )
    assert pods[0].spec.service_account_name == name

    # An LLMService that must survive both the upgrade and the uninstall.
    api = client.CustomObjectsApi(api_client)
    api.create_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, llmservice(namespace)
    )

    # helm upgrade with a changed CRD: a chart whose copy of the generated CRD has one more printer
    # column (as after `make crd` + hack/gen-manifests.sh), plus a CRD annotation from values.
    chart = tmp_path / "chart"
    subprocess.run(["cp", "-R", str(CHART), str(chart)], check=True)
    changed = yaml.safe_load((chart / CHART_FILES_CRD).read_text())
    changed["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Source", "type": "string", "jsonPath": ".spec.model.source", "priority": 1}
    )
    (chart / CHART_FILES_CRD).write_text(yaml.safe_dump(changed, sort_keys=False))
    helm(
        "upgrade", release, str(chart), "--namespace", namespace,
        "--set", "crds.annotations.llmservice\\.dev/upgraded=yes",
    )  # fmt: skip
    crd = read_crd(api_client)
    columns = [col["name"] for col in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[-1] == "Source", "helm upgrade did not upgrade the CRD"
    assert crd["metadata"]["annotations"]["llmservice.dev/upgraded"] == "yes"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    listed = kubectl(cluster, "get", "llmsvc", "-n", namespace, "-o", "wide").stdout
    assert "SOURCE" in listed.splitlines()[0]  # the new column is served

    # helm uninstall: every object of the release goes; the CRD (and the LLMService) stay.
    out = helm.uninstall(release, namespace)
    assert "kept due to the resource policy" in out and CRD_NAME in out
    wait_for("no object of the release left", lambda: not release_objects(cluster, release), WAIT_S)
    assert helm("list", "--namespace", namespace, "-q").stdout.strip() == ""
    assert read_crd(api_client)["metadata"]["name"] == CRD_NAME
    assert api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "llama")


def test_helm_install_refuses_bad_values_and_creates_nothing(
    cluster: LocalCluster, namespace: str, helm: Helm
) -> None:
    release = release_name("bad")
    result = helm(
        "install", release, str(CHART), "--namespace", namespace, "--set", "replicas=2",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "at '/replicas': maximum: got 2, want 1" in result.stderr
    assert helm("list", "--namespace", namespace, "-q").stdout.strip() == ""
    assert release_objects(cluster, release) == []


# --- kubectl apply -f manifests/install.yaml -------------------------------------------------


@pytest.mark.compat
def test_kubectl_apply_install_yaml(cluster: LocalCluster, core: client.CoreV1Api) -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL_YAML.read_text()) if d]
    system_ns = docs[0]["metadata"]["name"]
    # A reused cluster may still hold a previous run's namespace.
    if core.list_namespace(field_selector=f"metadata.name={system_ns}").items:
        core.delete_namespace(system_ns)
        wait_for(
            f"namespace {system_ns} gone",
            lambda: not core.list_namespace(field_selector=f"metadata.name={system_ns}").items,
            WAIT_S,
        )
    delete_llmservice_crd(cluster.api_client)
    try:
        kubectl(cluster, "apply", "-f", str(INSTALL_YAML))

        # Every object of the file exists, and the file holds what the chart renders.
        live = yaml.safe_load(kubectl(cluster, "get", "-f", str(INSTALL_YAML), "-o", "yaml").stdout)
        want = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
        have = {
            (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
            for o in live["items"]
        }
        assert have == want
        assert {kind for kind, _, _ in want} == {
            "Namespace", "ServiceAccount", "CustomResourceDefinition", "ClusterRole",
            "ClusterRoleBinding", "Service", "Deployment",
        }  # fmt: skip
        wait_for("CRD Established", lambda: crd_established(cluster.api_client), WAIT_S)

        # llmservice-system enforces the restricted Pod Security profile, and admits the pod.
        labels = core.read_namespace(system_ns).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        pods = wait_for(
            "operator pod created in llmservice-system",
            lambda: operator_pods(core, system_ns, "llmservice-operator"),
            WAIT_S,
        )
        assert pods[0].spec.security_context.run_as_non_root is True
        assert pod_security_failures(core, system_ns) == []
    finally:
        # Everything but the CRD (as `helm uninstall` would): later tests may use it.
        for doc in docs:
            if doc["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
                kubectl(
                    cluster, "delete", doc["kind"], doc["metadata"]["name"],
                    "--ignore-not-found", "--wait=false",
                )  # fmt: skip


# --- Pod Security admission -------------------------------------------------------------------


PRIVILEGED_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "privileged"},
    "spec": {
        "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}],
    },
}


@pytest.fixture
def restricted_namespace(core: client.CoreV1Api, namespace: str) -> Iterator[str]:
    core.patch_namespace(
        namespace,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )
    yield namespace


def test_operator_pod_is_admitted_under_restricted_pod_security(
    cluster: LocalCluster, core: client.CoreV1Api, restricted_namespace: str, helm: Helm
) -> None:
    ns = restricted_namespace
    # Control: the namespace really enforces "restricted".
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(ns, copy.deepcopy(PRIVILEGED_POD))
    assert rejected.value.status == 403
    assert "violates PodSecurity" in (rejected.value.body or "")

    release = release_name("psa")
    helm.install(release, ns, "--set", "crds.install=false")
    try:
        # The ReplicaSet controller (not us) creates the pod: admission passed.
        pods = wait_for(
            "operator pod created by the ReplicaSet controller",
            lambda: operator_pods(core, ns, release),
            WAIT_S,
        )
        owner = pods[0].metadata.owner_references[0]
        assert owner.kind == "ReplicaSet" and owner.name.startswith(fullname(release))
        assert pod_security_failures(core, ns) == []

        # Control on the chart itself: the same pod with one restricted field weakened is refused
        # by admission, which the ReplicaSet controller reports as a FailedCreate Event.
        weak = release_name("psa-weak")
        helm.install(
            weak, ns, "--set", "crds.install=false", "--set", "rbac.create=false",
            "--set", "securityContext.allowPrivilegeEscalation=true",
        )  # fmt: skip
        failures = wait_for(
            "FailedCreate (PodSecurity) for the weakened pod",
            lambda: pod_security_failures(core, ns),
            WAIT_S,
        )
        assert "allowPrivilegeEscalation != false" in failures[0]
        assert operator_pods(core, ns, weak) == []
        helm.uninstall(weak, ns)
    finally:
        helm.uninstall(release, ns)
