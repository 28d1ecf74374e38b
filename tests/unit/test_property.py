"""Property test: validate/render never crash; each result is a render or field-path errors."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmservice_operator.errors import InvalidSpecError
from llmservice_operator.render import render
from llmservice_operator.validate import parse

small_int = st.integers(min_value=-2, max_value=40)
text = st.text(alphabet="abcAZ09/._-:s3g ", max_size=20)
maybe = st.one_of  # readability

engine = st.fixed_dictionaries(
    {},
    optional={
        "tensorParallelSize": small_int,
        "pipelineParallelSize": small_int,
        "maxModelLen": st.integers(min_value=0, max_value=100_000),
        "gpuMemoryUtilization": st.floats(min_value=-1, max_value=2, allow_nan=False),
        "dtype": st.sampled_from(["auto", "bfloat16", "half", "int4"]),
        "quantization": st.sampled_from(["awq", "fp8", "magic"]),
        "extraArgs": st.dictionaries(
            st.sampled_from(["swap_space", "dtype", "Bad", "x_y"]), small_int
        ),
    },
)
gpu = st.fixed_dictionaries(
    {"acceleratorType": st.sampled_from(["A100", "L4", "H100", "Z100", ""])},
    optional={
        "gpusPerNode": small_int,
        "nodeSelector": st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(["x", "y"])),
        "pools": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["p1", "p2", "Bad_Name"])},
                optional={"maxWorkers": small_int},
            ),
            max_size=3,
        ),
    },
)
spec = st.fixed_dictionaries(
    {
        "model": st.fixed_dictionaries(
            {"source": maybe(st.sampled_from(["org/m", "s3://bkt/m", "/m"]), text)}
        )
    },
    optional={
        "replicas": small_int,
        "autoscaling": st.fixed_dictionaries(
            {"maxReplicas": small_int}, optional={"minReplicas": small_int}
        ),
        "engine": engine,
        "gpu": gpu,
        "maxOngoingRequests": small_int,
        "routePrefix": st.sampled_from(["/", "/v1", "x", "/a b"]),
        "rollout": st.fixed_dictionaries(
            {"strategy": st.sampled_from(["InPlace", "BlueGreen", "Canary"])}
        ),
    },
)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=spec)
def test_validate_and_render_never_crash(spec: dict[str, Any]) -> None:
    obj = {
        "apiVersion": "llmservice.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": spec,
    }
    try:
        svc = parse(obj)
    except InvalidSpecError as exc:
        assert exc.errors and all(e.path and e.reason for e in exc.errors)
        return
    rs, *rest = render(svc)
    assert rs["kind"] == "RayService"
    policies = ["NetworkPolicy"] * svc.spec.network_policy.enabled
    assert [o["kind"] for o in rest] == [*policies, "ConfigMap"]
    yaml.safe_load(rs["spec"]["serveConfigV2"])
