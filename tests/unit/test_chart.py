"""The Helm chart, offline: `helm lint` / `helm template` with bin/helm, no cluster.

What the cluster accepts (install, upgrade, Pod Security admission, RBAC that really suffices) is
tested on the local control plane in tests/cluster/test_install.py and test_rbac.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dashboard import DASHBOARD
from tests.unit.examples import ROOT

HELM = ROOT / "bin" / "helm"
CHART = ROOT / "charts" / "llmservice-operator"
CRD_FILE = ROOT / "manifests" / "crd" / "llmservices.llmservice.dev.yaml"
INSTALL_YAML = ROOT / "manifests" / "install.yaml"
GEN_MANIFESTS = ROOT / "hack" / "gen-manifests.sh"
RELEASE, NAMESPACE = "llmsvc", "llmservice-system"

# name -> extra `helm` arguments: the value combinations the chart promises to support.
MATRIX: dict[str, list[str]] = {
    "default": [],
    "cluster-mode": ["--set", "watchNamespaces=null"],
    "namespaced-mode": ["--set", "watchNamespaces={team-a,team-b}"],
    "metrics-off": ["--set", "metrics.enabled=false"],
    "service-monitor": ["--set", "metrics.serviceMonitor.enabled=true"],
    "crds-off": ["--set", "crds.install=false"],
    "peering-2-replicas": ["--set", "peering.enabled=true", "--set", "replicas=2"],
    "namespaced-peering": ["--set", "watchNamespaces={team-a}", "--set", "peering.enabled=true"],
}

# Every rule the operator may get, as (apiGroup, resource) -> verbs. Derived from the API calls
# in llmservice_operator/k8s.py plus kopf's watches, annotation patches, events and peering.
NAMESPACED_RULES = {
    ("llmservice.dev", "llmservices"): {"get", "list", "watch", "patch"},
    ("llmservice.dev", "llmservices/status"): {"patch"},
    ("llmservice.dev", "llmservices/finalizers"): {"update"},
    ("ray.io", "rayservices"): {"get", "list", "watch", "create", "patch", "delete"},
    ("ray.io", "rayclusters"): {"get", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"list"},
    ("", "configmaps"): {"create", "get"},  # get: of one name (test below)
    ("", "services/proxy"): {"get"},
    ("", "pods/proxy"): {"get"},
    ("", "events"): {"create", "list", "watch"},
    ("events.k8s.io", "events"): {"create"},
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
# capacityCheck.enabled (default): cluster-wide reads of what the nodes hold.
CAPACITY_RULES = {("", "nodes"): {"list"}, ("", "pods"): {"list"}}
# Namespaced mode only: kopf follows its namespaces (cluster mode never reads namespaces).
NAMESPACE_RULES = {("", "namespaces"): {"list", "watch"}}
PEERING_VERBS = {"list", "watch", "patch"}

RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.fixture(scope="module", autouse=True)
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep helm's cache/config/data out of the user's home."""
    if not HELM.is_file():
        pytest.fail(f"{HELM} not found: run `make tools`", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    saved = {
        k: os.environ.get(k) for k in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")
    }
    for key in saved:
        os.environ[key] = str(home / key.lower())
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def render(*extra: str) -> list[dict[str, Any]]:
    """`helm template` (release `llmsvc` in `llmservice-system`) as a list of objects."""
    result = subprocess.run(
        [str(HELM), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = by_kind(objs, kind)
    return obj


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# --- lint and render: every supported combination ---------------------------------------------


@pytest.mark.parametrize("case", MATRIX)
def test_lint(case: str) -> None:
    result = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *MATRIX[case]],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", MATRIX)
def test_template_renders_labelled_objects(case: str) -> None:
    objs = render(*MATRIX[case])
    kinds = {o["kind"] for o in objs}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= kinds
    for obj in objs:
        labels = obj["metadata"]["labels"]
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert labels.get(key), f"{where} lacks label {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "llmservice-operator-0.1.0"
        cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
        if obj["kind"] not in cluster_scoped | {"ClusterKopfPeering"}:
            # Explicit namespaces: `helm template | kubectl apply` lands where it should.
            assert obj["metadata"].get("namespace"), f"{where} has no namespace"


@pytest.mark.parametrize("case", MATRIX)
def test_deployment_meets_the_restricted_pod_security_profile(case: str) -> None:
    deployment = one(render(*MATRIX[case]), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"].items() >= RESTRICTED_POD.items()
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc.items() >= RESTRICTED_CONTAINER.items()
    assert sc.get("privileged") is not True
    assert sc.get("runAsNonRoot", pod["securityContext"]["runAsNonRoot"]) is True
    assert not sc.get("capabilities", {}).get("add")
    # Liveness on kopf's endpoint, which the args point at the same port.
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["port"] == "healthz"
    assert f"--liveness=http://0.0.0.0:{ports['healthz']}/healthz" in container["args"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert (
        pod["serviceAccountName"]
        == one(render(*MATRIX[case]), "ServiceAccount")["metadata"]["name"]
    )


# --- RBAC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MATRIX)
def test_rbac_has_no_wildcards_and_no_secrets(case: str) -> None:
    roles = [o for o in render(*MATRIX[case]) if o["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        text = json.dumps(role["rules"])
        assert "*" not in text, f"wildcard in {role['kind']}/{role['metadata']['name']}"
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"]
            assert "deletecollection" not in rule["verbs"]
            # The only deletes: our own NetworkPolicy when spec.networkPolicy.enabled turns false
            # (an allow-all policy instead would add to, and so undo, the user's own policies),
            # and the children a deleted LLMService of the same name left behind.
            if "delete" in rule["verbs"]:
                assert (rule["apiGroups"], rule["resources"]) in (
                    (["networking.k8s.io"], ["networkpolicies"]),
                    (["ray.io"], ["rayservices"]),
                )
            assert not rule.get("nonResourceURLs")


def test_cluster_mode_rbac_is_exactly_what_the_operator_does() -> None:
    objs = render()
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding")
    assert rules_of(one(objs, "ClusterRole")) == {**NAMESPACED_RULES, **CRD_RULES, **CAPACITY_RULES}
    binding = one(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == one(objs, "ClusterRole")["metadata"]["name"]


@pytest.mark.parametrize("case", MATRIX)
def test_configmaps_are_read_by_one_name_only_the_operators_own(case: str) -> None:
    from llmservice_operator.render.code import packaged

    roles = [o for o in render(*MATRIX[case]) if o["kind"] in ("Role", "ClusterRole")]
    reads = [
        rule
        for role in roles
        for rule in role["rules"]
        if "configmaps" in rule["resources"] and set(rule["verbs"]) - {"create"}
    ]
    assert reads
    for rule in reads:
        assert rule["verbs"] == ["get"] and rule["resources"] == ["configmaps"], rule
        assert rule["resourceNames"] == [packaged().configmap_name], rule


def test_cluster_mode_with_peering_adds_only_cluster_peerings() -> None:
    objs = render("--set", "peering.enabled=true")
    assert rules_of(one(objs, "ClusterRole")) == {
        **NAMESPACED_RULES,
        **CRD_RULES,
        **CAPACITY_RULES,
        ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS,
    }
    assert one(objs, "ClusterKopfPeering")["metadata"]["name"] == "llmservice-operator"


def test_namespaced_mode_rbac_is_a_role_per_namespace_and_crd_reads_only() -> None:
    objs = render(*MATRIX["namespaced-peering"], "--set", "watchNamespaces={team-a,team-b}")
    # Cluster-wide: nothing but the reads kopf makes of CRDs and namespaces, and the capacity
    # check's of nodes and pods.
    assert rules_of(one(objs, "ClusterRole")) == {**CRD_RULES, **NAMESPACE_RULES, **CAPACITY_RULES}
    roles = {r["metadata"]["namespace"]: r for r in by_kind(objs, "Role")}
    assert set(roles) == {"team-a", "team-b"}
    for role in roles.values():
        assert rules_of(role) == {**NAMESPACED_RULES, ("kopf.dev", "kopfpeerings"): PEERING_VERBS}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objs, "RoleBinding")}
    assert set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    peerings = {p["metadata"]["namespace"] for p in by_kind(objs, "KopfPeering")}
    assert peerings == {"team-a", "team-b"}
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--peering=llmservice-operator" in args and "--standalone" not in args


def test_capacity_check_off_drops_the_node_and_pod_reads() -> None:
    objs = render("--set", "capacityCheck.enabled=false", "--set", "watchNamespaces={team-a}")
    assert rules_of(one(objs, "ClusterRole")) == {**CRD_RULES, **NAMESPACE_RULES}


def test_rbac_off_renders_no_rbac() -> None:
    objs = render("--set", "rbac.create=false")
    assert not [o for o in objs if o["kind"].endswith(("Role", "RoleBinding"))]


# --- what each value changes -------------------------------------------------------------------


def _args(objs: list[dict[str, Any]]) -> list[str]:
    args: list[str] = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_default_args_are_standalone_cluster_wide_with_metrics() -> None:
    objs = render()
    args = _args(objs)
    assert "--standalone" in args and not any(a.startswith("--namespace") for a in args)
    assert "--metrics-port=8080" in args and "--timer-interval=60" in args
    service = one(objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one(objs, "Deployment")["spec"]["replicas"] == 1
    assert not by_kind(objs, "ServiceMonitor")


def test_metrics_off_removes_service_and_port() -> None:
    objs = render("--set", "metrics.enabled=false")
    assert not by_kind(objs, "Service")
    assert "--metrics-port=0" in _args(objs)
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["healthz"]


def test_service_monitor_selects_the_metrics_service() -> None:
    objs = render("--set", "metrics.serviceMonitor.enabled=true")
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = one(objs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_peering_with_two_replicas() -> None:
    objs = render(*MATRIX["peering-2-replicas"])
    assert one(objs, "Deployment")["spec"]["replicas"] == 2
    assert "--peering=llmservice-operator" in _args(objs) and "--standalone" not in _args(objs)
    env = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in env


def test_crd_is_the_generated_one_kept_on_uninstall() -> None:
    crd = one(render(), "CustomResourceDefinition")
    generated = yaml.safe_load(CRD_FILE.read_text())
    # Same object as the generated file; the chart only adds metadata.
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["name"] == generated["metadata"]["name"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert generated["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    extra = render(
        "--set", "crds.annotations.example\\.com/owner=team-a", "--set", "crds.labels.tier=platform"
    )  # fmt: skip
    meta = one(extra, "CustomResourceDefinition")["metadata"]
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep", "example.com/owner": "team-a"}
    assert meta["labels"]["tier"] == "platform"


def test_crds_off_renders_no_crd() -> None:
    assert not by_kind(render("--set", "crds.install=false"), "CustomResourceDefinition")


def test_kopf_peering_crds_are_in_crds_dir_only() -> None:
    # Installed by Helm before the templates (so the peering object can be built), never deleted.
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()))
    assert {d["metadata"]["name"] for d in docs} == {
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    objs = render("--set", "peering.enabled=true", "--include-crds")
    names = {o["metadata"]["name"] for o in by_kind(objs, "CustomResourceDefinition")}
    assert names == {"llmservices.llmservice.dev", "clusterkopfpeerings.kopf.dev",
                     "kopfpeerings.kopf.dev"}  # fmt: skip


# --- bad values fail with a plain message --------------------------------------------------------

# (extra helm args, message substring, where it is caught). "schema": values.schema.json, which
# fails template, install and lint alike. "template": a `fail` for a cross-value rule that a schema
# cannot phrase plainly; `helm lint` runs templates in lint mode, where a `fail` is reported as
# "[INFO] Fail: <message>" without failing the lint (template and install do fail).
BAD_VALUES = [
    (["--set-string", "replicas=two"], "at '/replicas': got string, want integer", "schema"),
    (["--set", "replicas=2"], "at '/replicas': maximum: got 2, want 1", "schema"),  # no peering
    (
        ["--set", "image.pullPolicy=Sometimes"],
        "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        "schema",
    ),
    (["--set", "watchNamespaces=ns"], "at '/watchNamespaces': got string, want array", "schema"),
    (
        ["--set", "resources.limts.cpu=1"],
        "at '/resources': additional properties 'limts' not allowed",
        "schema",
    ),
    (["--set", "watchNamespaces={Team_A}"], "'Team_A' does not match pattern", "schema"),
    (
        ["--set", "watchNamespaces={a,a}"],
        "at '/watchNamespaces': items at 0 and 1 are equal",
        "schema",
    ),
    (["--set", "resources.limits.memory=lots"], "at '/resources/limits/memory'", "schema"),
    (
        ["--set", "metrics.port=70000"],
        "at '/metrics/port': maximum: got 70,000, want 65,535",
        "schema",
    ),
    (["--set", "replica=2"], "additional properties 'replica' not allowed", "schema"),
    (["--set", "operator.timerInterval=0"], "at '/operator/timerInterval'", "schema"),
    (
        ["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
        "metrics.serviceMonitor.enabled=true needs metrics.enabled=true",
        "template",
    ),
    (
        ["--set", "serviceAccount.create=false"],
        "serviceAccount.name is required when serviceAccount.create=false",
        "template",
    ),
    (["--set", "liveness.port=8080"], "metrics.port and liveness.port are both 8080", "template"),
    (
        ["--set", "replicas=2", "--skip-schema-validation"],
        "replicas=2 needs peering.enabled=true",
        "template",
    ),
]


@pytest.mark.parametrize(
    ("args", "message", "caught_by"), BAD_VALUES, ids=[" ".join(v[0]) for v in BAD_VALUES]
)
def test_bad_values_are_rejected_with_a_plain_message(
    args: list[str], message: str, caught_by: str
) -> None:
    template = subprocess.run(
        [str(HELM), "template", "x", str(CHART), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert template.returncode != 0, f"helm template accepted {args}"
    assert message in template.stderr
    assert template.stderr.startswith("Error: ")  # one plain error, not a stack trace
    lint = subprocess.run(
        [str(HELM), "lint", str(CHART), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert message in lint.stdout + lint.stderr
    if caught_by == "schema":
        assert lint.returncode != 0, f"helm lint accepted {args}"


# --- generated files and docs ------------------------------------------------------------------


def test_gen_manifests_check_passes() -> None:
    result = subprocess.run(
        [str(GEN_MANIFESTS), "--check"], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_gen_manifests_check_names_a_stale_file(tmp_path: Path) -> None:
    # Run the script from a scratch copy of the files it reads, with the install.yaml edited.
    scratch = tmp_path / "repo"
    for rel in ("hack/gen-manifests.sh", "manifests", "charts/llmservice-operator"):
        src, dst = ROOT / rel, scratch / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-R", str(src), str(dst)], check=True)
    (scratch / "bin").mkdir()
    (scratch / "bin" / "helm").symlink_to(HELM)
    stale = scratch / "manifests" / "install.yaml"
    stale.write_text(stale.read_text() + "# hand edit\n")
    result = subprocess.run(
        [str(scratch / "hack" / "gen-manifests.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "PY": sys.executable},  # it names the ConfigMap with our code
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "manifests/install.yaml is stale: run hack/gen-manifests.sh and commit the result"
    ]


def test_install_yaml_is_namespace_then_the_default_release() -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL_YAML.read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == NAMESPACE
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    rendered = [
        d
        for d in yaml.safe_load_all(
            subprocess.run(
                [str(HELM), "template", "llmservice-operator", str(CHART), "-n", NAMESPACE],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        if d
    ]
    assert docs[1:] == rendered


def _documented_keys() -> tuple[set[str], set[str]]:
    """(every key path in values.yaml, the paths carrying a helm-docs `# --` comment)."""
    every: set[str] = set()
    documented: set[str] = set()
    stack: list[tuple[int, str]] = []
    pending = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        if re.match(r"^\s*# -- ", line):
            pending = True
            continue
        if re.match(r"^\s*#", line):
            continue
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            pending = pending and not line.strip()
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        path = ".".join(k for _, k in stack)
        every.add(path)
        if pending:
            documented.add(path)
        pending = False
    return every, documented


def test_every_value_is_documented_in_values_and_readme() -> None:
    every, documented = _documented_keys()

    def covered(path: str) -> bool:
        parts = path.split(".")
        if any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1)):
            return True
        children = [p for p in every if p.startswith(path + ".")]
        return bool(children) and all(covered(c) for c in children)

    assert sorted(p for p in every if not covered(p)) == []
    readme = (CHART / "README.md").read_text()
    rows = set(re.findall(r"^\| ([\w.]+) \| \w+ \| `", readme, flags=re.MULTILINE))
    assert rows == documented, "regenerate the README's values table"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) - {"global"} == {p.split(".")[0] for p in every}


def test_guardrails_are_off_by_default_and_on_render_a_policy_and_binding() -> None:
    assert not by_kind(render(), "ValidatingAdmissionPolicy")
    objs = render(
        "--set", "guardrails.enabled=true",
        "--set-json", 'guardrails.allowedImagePrefixes=["registry.example.com/"]',
        "--set-json", 'guardrails.validationActions=["Warn","Audit"]',
    )  # fmt: skip
    policy = one(objs, "ValidatingAdmissionPolicy")
    binding = one(objs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["images"]) == ["registry.example.com/"]  # a CEL list literal
    assert policy["spec"]["failurePolicy"] == "Fail"
    # Every rule's message starts with the field it is about.
    for rule in policy["spec"]["validations"]:
        text = rule.get("message") or rule["messageExpression"].lstrip('"')
        assert text.startswith("spec."), text


def test_the_dashboard_ships_for_grafanas_sidecar_and_ray_pods_are_scraped() -> None:
    objs = render("--set", "grafana.dashboard.enabled=true", "--set", "rayPodMonitor.enabled=true")
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["llmservice.json"]) == json.loads(DASHBOARD.read_text())
    pod_monitor = one(objs, "PodMonitor")
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"  # the port KubeRay adds to every Ray container
    relabeled = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabeled["llmservice"] == ["__meta_kubernetes_pod_label_llmservice_dev_name"]
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    scoped = render("--set", "rayPodMonitor.enabled=true", "--set", "watchNamespaces={team-a}")
    assert one(scoped, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    off = render()
    assert not by_kind(off, "PodMonitor")
    assert not [
        o for o in by_kind(off, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")
    ]
