"""serve_app reaches the Ray pods as a ConfigMap on their PYTHONPATH (render/code.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from llmservice_operator.render import (
    DEFAULT_CPU_IMAGE,
    DEFAULT_GPU_IMAGE,
    container_env,
    render,
    render_rayservice,
)
from llmservice_operator.render.code import CODE_ROOT, CodeBundle, packaged
from llmservice_operator.validate import parse
from tests.unit.examples import ROOT, example_services

EXAMPLES = example_services()


def _pods(rs: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [g["template"] for g in groups]


def test_the_bundle_is_the_installed_serve_app() -> None:
    on_disk = {p.name: p.read_text() for p in (ROOT / "serve_app").glob("*.py")}
    assert dict(packaged().files) == on_disk
    assert {"__init__.py", "app.py", "router.py", "args.py"} <= set(on_disk)


def test_the_name_follows_the_contents_only() -> None:
    a = CodeBundle({"__init__.py": "", "app.py": "x = 1\n"})
    same = CodeBundle({"app.py": "x = 1\n", "__init__.py": ""})
    other = CodeBundle({"__init__.py": "", "app.py": "x = 2\n"})
    assert a.configmap_name == same.configmap_name != other.configmap_name
    assert a.configmap_name.startswith("llmservice-serve-app-") and len(a.digest) == 12


def test_a_bundle_without_a_package_or_too_big_is_refused() -> None:
    with pytest.raises(ValueError, match="__init__"):
        CodeBundle({"app.py": ""})
    with pytest.raises(ValueError, match="bytes"):
        CodeBundle({"__init__.py": "#" * (600 * 1024)})


@pytest.mark.parametrize("case", ["tiny", "llama-8b-l4", "two-pools", "autoscaling"])
def test_every_ray_pod_mounts_the_code_first_on_its_path(case: str) -> None:
    code = CodeBundle({"__init__.py": "", "app.py": "v = 1\n"})
    objs = render(parse(EXAMPLES[case]), code=code)
    rs, configmap = objs[0], objs[-1]
    assert configmap["kind"] == "ConfigMap" and configmap["immutable"] is True
    assert configmap["metadata"]["name"] == code.configmap_name
    assert configmap["metadata"]["namespace"] == rs["metadata"]["namespace"]
    assert "ownerReferences" not in configmap["metadata"]  # shared by the namespace
    assert configmap["data"] == dict(code.files)
    for pod in _pods(rs):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["serve-app"]["configMap"]["name"] == code.configmap_name
        (container,) = pod["spec"]["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["serve-app"] == {
            "name": "serve-app",
            "mountPath": f"{CODE_ROOT}/serve_app",
            "readOnly": True,
        }
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PYTHONPATH"] == CODE_ROOT
        assert pod["metadata"]["labels"]["llmservice.dev/serve-app"] == code.digest


def test_new_code_changes_the_pod_template_so_kuberay_rolls_the_cluster() -> None:
    svc = parse(EXAMPLES["tiny"])
    one = render_rayservice(svc, code=CodeBundle({"__init__.py": "", "app.py": "v = 1\n"}))
    two = render_rayservice(svc, code=CodeBundle({"__init__.py": "", "app.py": "v = 2\n"}))
    assert one["spec"]["serveConfigV2"] == two["spec"]["serveConfigV2"]
    assert one["spec"]["rayClusterConfig"] != two["spec"]["rayClusterConfig"]


def test_a_pythonpath_of_the_spec_comes_after_the_code() -> None:
    obj = copy.deepcopy(EXAMPLES["tiny"])
    obj["spec"]["env"] = [*obj["spec"].get("env", []), {"name": "PYTHONPATH", "value": "/mine"}]
    rs = render_rayservice(parse(obj))
    for pod in _pods(rs):
        env = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "PYTHONPATH"]
        assert env == [{"name": "PYTHONPATH", "value": f"{CODE_ROOT}:/mine"}]


def test_local_runs_do_not_take_the_pods_path() -> None:
    # `llmservice up` runs local Ray with the pods' env and its own serve_app.
    assert "PYTHONPATH" not in container_env(render_rayservice(parse(EXAMPLES["tiny"])))


def test_default_images_are_stock_ray_or_the_cpu_base_image() -> None:
    assert DEFAULT_GPU_IMAGE.startswith("rayproject/ray-llm:2.60.0-py311-cu")
    assert DEFAULT_CPU_IMAGE.startswith("ghcr.io/llmservice/ray-vllm-cpu:2.60.0-vllm")
    gpu = render_rayservice(parse(EXAMPLES["llama-8b-l4"]))
    cpu = render_rayservice(parse(EXAMPLES["tiny"]))
    assert {p["spec"]["containers"][0]["image"] for p in _pods(gpu)} == {DEFAULT_GPU_IMAGE}
    assert {p["spec"]["containers"][0]["image"] for p in _pods(cpu)} == {DEFAULT_CPU_IMAGE}


def test_the_serve_app_package_imports_nothing_from_the_operator() -> None:
    # The pods get serve_app alone: an import of the operator's package would fail there.
    for name, text in packaged().files.items():
        assert "llmservice_operator" not in text, name


def test_no_subpackages_are_left_behind() -> None:
    # A ConfigMap is flat: serve_app must stay one directory of modules.
    assert not [p for p in (ROOT / "serve_app").iterdir() if p.is_dir() and p.name != "__pycache__"]
