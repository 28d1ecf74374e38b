"""Renderer properties users rely on, beyond the golden files."""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import yaml

from llmservice_operator.constants import ANNOTATION_SPEC_HASH
from llmservice_operator.render import render_rayservice
from llmservice_operator.validate import parse
from serve_app.args import LLMAppArgs
from tests.unit.examples import MODEL_IMPORT_PATHS, ROOT, example_services

EXAMPLES = example_services()


def _render(obj: dict[str, Any]) -> dict[str, Any]:
    return render_rayservice(parse(obj))


def _model_options(rs: dict[str, Any]) -> dict[str, Any]:
    """The `deployments` options of the model's application (its counts)."""
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    (app,) = [a for a in apps if a["import_path"] in MODEL_IMPORT_PATHS]
    (options,) = app["deployments"]
    assert options["name"].startswith("LLMServer:")
    return dict(options)


def _app_args(rs: dict[str, Any]) -> LLMAppArgs:
    apps = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    (app,) = [a for a in apps if a["import_path"] in MODEL_IMPORT_PATHS]
    return LLMAppArgs.model_validate(app["args"])


def test_same_input_same_output() -> None:
    obj = EXAMPLES["llama-70b-a100-tp4"]
    assert _render(obj) == _render(copy.deepcopy(obj))


def test_hf_token_is_only_a_secret_reference() -> None:
    obj = copy.deepcopy(EXAMPLES["llama-8b-l4"])
    rs = _render(obj)
    text = yaml.safe_dump(rs)
    assert "hf-token" in text  # the Secret's name, as a reference...
    envs = [
        c["env"]
        for c in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    ]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    } in envs[0]
    assert _app_args(rs).hf_token_env == "HF_TOKEN"  # ...and the app reads the env var name


def test_parent_metadata_is_never_copied() -> None:
    obj = copy.deepcopy(EXAMPLES["tiny"])
    obj["metadata"]["labels"] = {"argocd.argoproj.io/instance": "apps", "team": "a"}
    obj["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "apps:llmservice.dev/LLMService:default/tiny",
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
    }
    text = yaml.safe_dump(_render(obj))
    assert "argocd" not in text and "last-applied" not in text and "team" not in text


def test_spec_hash_follows_the_spec_only() -> None:
    obj = copy.deepcopy(EXAMPLES["tiny"])
    before = _render(obj)["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    obj["metadata"]["labels"] = {"x": "y"}
    assert _render(obj)["metadata"]["annotations"][ANNOTATION_SPEC_HASH] == before
    obj["spec"]["replicas"] = 3
    assert _render(obj)["metadata"]["annotations"][ANNOTATION_SPEC_HASH] != before


def test_serve_args_match_the_app_contract() -> None:
    for obj in EXAMPLES.values():
        args = _app_args(_render(obj))
        assert args.model_source == obj["spec"]["model"]["source"]


def test_autoscaling_enables_ray_autoscaler_and_omits_live_counts() -> None:
    rs = _render(EXAMPLES["autoscaling"])
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert all("replicas" not in g for g in cluster["workerGroupSpecs"])
    args, options = _app_args(rs), _model_options(rs)
    assert args.autoscaled and args.deployment is None  # counts are options, not args
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 24.0,
    }


def test_head_has_no_gpus_and_workers_request_them() -> None:
    cluster = _render(EXAMPLES["llama-70b-a100-tp4"])["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert group["rayStartParams"]["num-gpus"] == "8"


def test_blue_green_puts_version_into_the_cluster_spec_in_place_does_not() -> None:
    bg = copy.deepcopy(EXAMPLES["llama-70b-a100-tp4"])
    ip = copy.deepcopy(bg)
    ip["spec"]["rollout"] = {"strategy": "InPlace"}

    def cluster_changes(obj: dict[str, Any]) -> bool:
        a = _render(obj)["spec"]["rayClusterConfig"]
        obj["spec"]["model"]["version"] = "v2"
        return _render(obj)["spec"]["rayClusterConfig"] != a

    assert cluster_changes(bg) is True
    assert cluster_changes(ip) is False


def _containers(rs: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    return [c for p in pods for c in p["template"]["spec"]["containers"]]


def _env_of(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def _topology(rs: dict[str, Any]) -> list[str]:
    return [a["import_path"] for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]]


def test_gpu_services_get_the_serve_fast_path_and_cpu_services_do_not() -> None:
    from serve_app.tuning import GPU_FAST_PATH_ENV, GPU_SERVE_ENV

    gpu = _render(EXAMPLES["llama-8b-l4"])
    for container in _containers(gpu):
        env = _env_of(container)
        assert {k: env.get(k) for k in GPU_SERVE_ENV} == GPU_SERVE_ENV
        assert {k: env.get(k) for k in GPU_FAST_PATH_ENV} == GPU_FAST_PATH_ENV
    assert _topology(gpu) == ["serve_app.app:build"]  # the model's replica is the ingress
    assert _app_args(gpu).stream_batching_interval_ms == 0.0
    cpu = _render(EXAMPLES["tiny"])
    for container in _containers(cpu):
        assert not _env_of(container).keys() & (GPU_SERVE_ENV.keys() | GPU_FAST_PATH_ENV.keys())
    assert _topology(cpu)[0] == "serve_app.router:build"
    assert _app_args(cpu).stream_batching_interval_ms is None  # Ray's own default on CPU


def test_a_gpu_canary_keeps_the_router_and_a_user_can_turn_the_fast_path_off() -> None:
    from serve_app.tuning import GPU_FAST_PATH_ENV

    canary = _render(EXAMPLES["llama-8b-l4-canary"])  # the split needs the router
    assert _topology(canary)[0] == "serve_app.router:build"
    for container in _containers(canary):
        assert not _env_of(container).keys() & GPU_FAST_PATH_ENV.keys()
    off = copy.deepcopy(EXAMPLES["llama-8b-l4"])
    off["spec"]["env"] = [{"name": "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "value": "0"}]
    rs = _render(off)
    assert _topology(rs)[0] == "serve_app.router:build"
    for container in _containers(rs):
        env = _env_of(container)
        assert env.get("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING") == "0"  # the user's, once
        assert "RAY_SERVE_ENABLE_HA_PROXY" not in env


def test_while_a_canarys_traffic_goes_back_the_pods_stay_off_the_fast_path() -> None:
    """Leaving Canary mid-rollout renders two versions until the canary has no traffic: the
    router stays and so does the pods' environment (no roll then); the fast path comes with the
    config that runs one version again."""
    from llmservice_operator.plan import plan
    from llmservice_operator.render import Layout, model_app_name, steady_layout
    from serve_app.tuning import GPU_FAST_PATH_ENV

    svc = parse(EXAMPLES["llama-8b-l4"])  # InPlace
    p = plan(svc.spec)
    (stable,) = steady_layout(svc, p).arms
    canary = dataclasses.replace(stable, slot="b", weight=0.0)
    two = Layout((stable, canary))
    rs = render_rayservice(svc, two)
    assert _topology(rs)[0] == "serve_app.router:build"
    for container in _containers(rs):
        assert not _env_of(container).keys() & GPU_FAST_PATH_ENV.keys()
    assert model_app_name(svc.spec, two) == "llm-a"
    one = Layout((dataclasses.replace(stable, slot="b"),))  # the promoted slot, alone again
    assert _topology(render_rayservice(svc, one)) == ["serve_app.app:build"]
    assert model_app_name(svc.spec, one) == "llm"


def test_every_gpu_default_the_docs_promise_is_in_the_rendered_pods() -> None:
    """docs/performance.md's table "What the renderer sets for GPU LLMServices": each
    `NAME=value` it lists as on is in every Ray container of every GPU example (the fast path's
    rows say "not with Canary": not in the Canary example's)."""
    doc = (ROOT / "docs" / "performance.md").read_text()
    section = doc.split("### What the renderer sets for GPU LLMServices", 1)[1].split("\n#", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| `RAY_")]
    promised = []
    for row in rows:
        m = re.match(r"\| `(RAY_[A-Z_]+)=(\w+)` \| ([^|]+)\|", row)
        assert m, row
        promised.append((m[1], m[2], "not with Canary" in m[3]))
    assert {"RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"} <= {
        name for name, _, _ in promised
    }
    gpu_cases = [k for k, v in EXAMPLES.items() if v["spec"].get("gpu")]
    assert len(gpu_cases) >= 4
    for case in gpu_cases:
        canary = EXAMPLES[case]["spec"].get("rollout", {}).get("strategy") == "Canary"
        for container in _containers(_render(EXAMPLES[case])):
            env = _env_of(container)
            for name, value, not_with_canary in promised:
                if canary and not_with_canary:
                    assert name not in env, (case, name)
                else:
                    assert env.get(name) == value, (case, name)


def test_user_env_and_spec_override_the_gpu_defaults() -> None:
    obj = copy.deepcopy(EXAMPLES["llama-8b-l4"])
    obj["spec"]["env"] = [{"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "0"}]
    obj["spec"]["streamBatchingIntervalMs"] = 25
    rs = _render(obj)
    for container in _containers(rs):
        values = [
            e["value"] for e in container["env"] if e["name"] == "RAY_SERVE_THROUGHPUT_OPTIMIZED"
        ]
        assert values == ["0"]  # the user's, once
    assert _app_args(rs).stream_batching_interval_ms == 25.0


def test_max_ongoing_requests_follows_the_engine_batch_unless_set() -> None:
    obj = copy.deepcopy(EXAMPLES["llama-8b-l4"])
    obj["spec"].pop("maxOngoingRequests", None)
    assert _model_options(_render(obj))["max_ongoing_requests"] == 256
    obj["spec"]["engine"]["maxNumSeqs"] = 512
    assert _model_options(_render(obj))["max_ongoing_requests"] == 512
    obj["spec"]["maxOngoingRequests"] = 100
    assert _model_options(_render(obj))["max_ongoing_requests"] == 100


def test_a_replica_count_change_leaves_the_model_args_alone() -> None:
    # Ray Serve redeploys every replica of an application whose args change; options are
    # applied to the running ones. So a scale must change options only.
    obj = copy.deepcopy(EXAMPLES["tiny"])
    before = _render(obj)
    obj["spec"]["replicas"] = 3
    after = _render(obj)
    apps = [yaml.safe_load(r["spec"]["serveConfigV2"])["applications"] for r in (before, after)]
    assert [a["args"] for a in apps[0]] == [a["args"] for a in apps[1]]
    assert (_model_options(before)["num_replicas"], _model_options(after)["num_replicas"]) == (1, 3)


def test_model_version_labels_are_valid_and_never_shared() -> None:
    from llmservice_operator.api.models import LABEL_VALUE_RE
    from llmservice_operator.render import _label_value

    versions = ["v1", "0e9e39f249a16976918f6564b8830bc894c89659", "é-2024", "a" * 64,
                "a" * 63 + "b", "release/2024.07", "-x-"]  # fmt: skip
    labels = [_label_value(v) for v in versions]
    assert labels[:2] == versions[:2]  # already label values: kept as they are
    assert all(re.fullmatch(LABEL_VALUE_RE, lab) and lab for lab in labels), labels
    assert len(set(labels)) == len(labels)  # 64 x "a" and 63 x "a" + "b" differ


def test_the_router_application_never_changes_with_the_models_config() -> None:
    # New args would redeploy the router (every request passes it): only model apps change.
    obj = copy.deepcopy(EXAMPLES["tiny"])
    before = yaml.safe_load(_render(obj)["spec"]["serveConfigV2"])["applications"]
    obj["spec"]["engine"]["maxModelLen"] = 256
    obj["spec"]["model"]["version"] = "v9"
    after = yaml.safe_load(_render(obj)["spec"]["serveConfigV2"])["applications"]
    assert before[0]["name"] == after[0]["name"] == "llm"
    assert before[0]["args"] == after[0]["args"]
    assert before[0]["import_path"] == "serve_app.router:build"
    (split,) = after[0]["deployments"]
    assert split["user_config"]["max_request_context_length"] == 256
    assert split["user_config"]["arms"] == [{"app": "llm-a", "version": "v9", "weight": 100.0}]
