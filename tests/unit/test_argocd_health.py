"""The Argo CD health check (manifests/argocd/llmservice-health.lua), run for real in Lua.

Argo CD evaluates health checks in gopher-lua (Lua 5.1) with only the base and table libraries
open; the runtime here is Lua 5.1 too, with string/math/io/os/debug removed and the string
metatable cleared, so a script that works here does not lean on anything Argo CD lacks. The
statuses come from the operator's own ``status`` functions, so the check reads exactly what the
operator writes.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lupa  # a dev dependency: a missing Lua runtime fails the suite, it never skips
import pytest
import yaml

from llmservice_operator import status as st
from llmservice_operator.api.models import RolloutStatus
from llmservice_operator.observe import Observation
from tests.unit.observations import cluster, observation, rayservice, serve, status

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "manifests" / "argocd"
LUA = ARGOCD / "llmservice-health.lua"
HEALTH_KEY = "resource.customizations.health.llmservice.dev_LLMService"
IGNORE_KEY = "resource.customizations.ignoreDifferences.llmservice.dev_LLMService"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# What Argo CD's Lua VM leaves out (util/lua: package, base, table and a safe `os` only).
SANDBOX = """
debug.setmetatable("", nil)
string, math, io, os, debug, coroutine = nil, nil, nil, nil, nil, nil
"""


def _lua_module() -> Any:
    try:
        from lupa import lua51  # Lua 5.1, like gopher-lua

        return lua51
    except ImportError:  # a lupa build without the bundled 5.1: its default Lua
        return lupa


LUA_MODULE = _lua_module()


def _runtime() -> Any:
    return LUA_MODULE.LuaRuntime()


def _to_lua(runtime: Any, value: Any) -> Any:
    """Python data as Lua tables, recursively; lists become 1-based arrays, None becomes nil."""
    if isinstance(value, Mapping):
        return runtime.table_from(
            {k: _to_lua(runtime, v) for k, v in value.items() if v is not None}
        )
    if isinstance(value, list | tuple):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def health(obj: Mapping[str, Any]) -> tuple[str, str]:
    """Run the health check like Argo CD: `obj` global in, `{status, message}` table out."""
    runtime = _runtime()
    runtime.execute(SANDBOX)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(LUA.read_text(encoding="utf-8"))
    return str(result["status"]), str(result["message"])


# --- fixtures: LLMServices with the status the operator writes -------------------------------

GEN = 3
DESIRED = st.Desired(
    generation=GEN, version="v2", replicas=2, rayservice_name="m", namespace="ns", workers=2
)


def llmservice(
    status: Mapping[str, Any] | None, spec: Mapping[str, Any] | None = None, generation: int = GEN
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "llmservice.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": "m", "namespace": "ns", "generation": generation},
        "spec": dict(spec or {"model": {"source": "org/model", "version": "v2"}, "replicas": 2}),
    }
    if status is not None:
        stored = dict(status)
        stored["conditions"] = st.merge_conditions(
            status.get("conditions") or [], [], "2026-01-01T00:00:00Z"
        )
        obj["status"] = stored
    return obj


def with_status(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["status"].update(changes)
    return out


NOT_READY = rayservice(ready="False", reason="Initializing")
SERVING = llmservice(status(DESIRED, observation(app=serve()), {"activeVersion": "v1"}))
CREATING = llmservice(status(DESIRED, Observation(rayservice=None)))
WAITING = llmservice(status(DESIRED, observation(NOT_READY, app=None)))
UPGRADING = llmservice(
    status(
        DESIRED,
        observation(
            rayservice(upgrading="True", pending="m-new"),
            app=serve(version="v1"),
            pending=cluster("m-new"),
        ),
        {"activeVersion": "v1"},
    )
)
HELD = llmservice(
    status(
        DESIRED,
        dataclasses.replace(
            observation(app=serve(version="v1")),
            insufficient_capacity="worker group l4 (pool=l4): 2 more GPUs (2 pod(s) do not fit)",
        ),
        {"activeVersion": "v1"},
    )
)
CANARY = llmservice(
    status(
        DESIRED,
        dataclasses.replace(
            observation(app=serve(version="v1")),
            rollout=RolloutStatus(
                strategy="Canary", phase="Progressing", step=1, steps=3, weight=10.0,
                message="step 1: 10 %; 12/20 canary answers in the window",
            ),
        ),
        {"activeVersion": "v1"},
    )
)  # fmt: skip
ROLLED_BACK = llmservice(
    status(
        DESIRED,
        dataclasses.replace(
            observation(app=serve(version="v1")),
            rollout=RolloutStatus(
                strategy="Canary", phase="RolledBack", weight=0.0,
                message="rolled back: canary error rate 100.0% (30/30) over 1.0%",
            ),
            canary_rolled_back=True,
        ),
        {"activeVersion": "v1"},
    )
)  # fmt: skip
INVALID = llmservice(
    st.to_wire(st.invalid_status(GEN, "spec.gpu.tensorParallelSize: must divide gpusPerNode", None))
)
DEPLOY_FAILED = llmservice(
    status(
        DESIRED,
        observation(
            rayservice(ready="False"),
            app=serve(status="DEPLOY_FAILED", running=0, message="vLLM engine failed to start"),
        ),
    )
)
TIMED_OUT = llmservice(
    status(
        DESIRED,
        observation(rayservice(ready="False", reason=st.Reason.INITIALIZING_TIMEOUT), app=None),
    )
)

ZERO_FIXED = dataclasses.replace(DESIRED, replicas=0, workers=0)
SCALED_TO_ZERO = llmservice(
    status(
        ZERO_FIXED, observation(NOT_READY, active=cluster(app=serve(running=0), ready_workers=0))
    ),
    spec={"model": {"source": "org/model"}, "replicas": 0},
)
AUTOSCALING_SPEC = {"model": {"source": "org/model"}, "autoscaling": {"minReplicas": 0}}
AUTOSCALED = dataclasses.replace(DESIRED, replicas=None, workers=None)
AUTOSCALED_TO_ZERO = llmservice(
    status(AUTOSCALED, observation(NOT_READY, app=serve(running=0))), spec=AUTOSCALING_SPEC
)
AUTOSCALED_CREATING = with_status(
    llmservice(status(AUTOSCALED, Observation(rayservice=None)), spec=AUTOSCALING_SPEC),
    replicas=0,
)
AUTOSCALED_IDLE_BUT_SERVING = llmservice(
    status(AUTOSCALED, observation(app=serve(running=1, target=0))), spec=AUTOSCALING_SPEC
)

OBSERVED_GENERATION_MISSING = copy.deepcopy(SERVING)
del OBSERVED_GENERATION_MISSING["status"]["observedGeneration"]
STALE = llmservice(SERVING["status"], generation=GEN + 1)
STALE_INVALID = llmservice(INVALID["status"], generation=GEN + 1)
STALE_CONDITION = copy.deepcopy(SERVING)
STALE_CONDITION["status"]["conditions"][2]["observedGeneration"] = GEN - 1

CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (LLMService, Argo CD status, substring of the message)
    "healthy": (SERVING, "Healthy", "2 Serve replica(s) running"),
    "healthy-shows-endpoint": (SERVING, "Healthy", "http://m-serve-svc.ns.svc:8000/v1"),
    "healthy-shows-version": (SERVING, "Healthy", "version v2"),
    "creating": (CREATING, "Progressing", "Creating: creating the RayService"),
    "waiting-for-serve": (WAITING, "Progressing", "waiting for the Serve app"),
    "waiting-says-why-not-ready": (WAITING, "Progressing", "not ready: NotServing"),
    "upgrade-in-progress": (UPGRADING, "Progressing", "Upgrading: rolling out version v2"),
    "upgrade-still-serving": (UPGRADING, "Progressing", "still serving"),
    "held-for-capacity": (HELD, "Progressing", "InsufficientCapacity: worker group l4"),
    "held-for-capacity-still-serving": (HELD, "Progressing", "still serving version v1"),
    "canary-in-progress": (CANARY, "Progressing", "CanaryProgressing: step 1: 10 %"),
    "canary-still-serving": (CANARY, "Progressing", "still serving"),
    "canary-rolled-back-until-the-spec-changes": (
        ROLLED_BACK,
        "Degraded",
        "CanaryRolledBack: rolled back: canary error rate 100.0% (30/30)",
    ),
    "generation-not-observed-missing": (
        OBSERVED_GENERATION_MISSING,
        "Progressing",
        f"waiting for the operator to observe generation {GEN}",
    ),
    "generation-not-observed-stale": (
        STALE,
        "Progressing",
        f"waiting for the operator to observe generation {GEN + 1}",
    ),
    "stale-invalid-spec-waits-for-the-fix": (
        STALE_INVALID,
        "Progressing",
        f"observe generation {GEN + 1}",
    ),
    "condition-generation-stale": (
        STALE_CONDITION,
        "Progressing",
        f"waiting for the operator to observe generation {GEN}",
    ),
    "no-status": (llmservice(None), "Progressing", f"observe generation {GEN}"),
    "invalid-spec": (INVALID, "Degraded", "InvalidSpec: spec.gpu.tensorParallelSize"),
    "serve-deploy-failed": (DEPLOY_FAILED, "Degraded", "ServeDeployFailed: active cluster"),
    "serve-deploy-failed-message": (DEPLOY_FAILED, "Degraded", "vLLM engine failed to start"),
    "initializing-timeout": (TIMED_OUT, "Degraded", "InitializingTimeout"),
    "scaled-to-zero": (SCALED_TO_ZERO, "Suspended", "scaled to zero (spec.replicas is 0)"),
    "autoscaled-to-zero": (AUTOSCALED_TO_ZERO, "Suspended", "scaled to zero by the autoscaler"),
    "autoscaled-creating-is-progressing": (AUTOSCALED_CREATING, "Progressing", "Creating"),
    "autoscaled-idle-but-serving": (AUTOSCALED_IDLE_BUT_SERVING, "Healthy", "replica(s) running"),
}


@pytest.mark.parametrize(("obj", "want", "message"), CASES.values(), ids=CASES.keys())
def test_health(obj: dict[str, Any], want: str, message: str) -> None:
    got, text = health(obj)
    assert (got, message in text) == (want, True), text


def test_every_argo_health_state_the_check_can_give_is_covered() -> None:
    assert {want for _, want, _ in CASES.values()} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }


@pytest.mark.parametrize("obj", [case[0] for case in CASES.values()], ids=CASES.keys())
def test_result_is_what_argo_cd_accepts(obj: dict[str, Any]) -> None:
    got, text = health(obj)
    assert got in ARGO_STATUSES
    assert text and text != "nil"


def test_invalid_spec_is_degraded_even_without_degraded_condition() -> None:
    obj = copy.deepcopy(INVALID)
    obj["status"]["conditions"] = [
        c for c in obj["status"]["conditions"] if c["type"] != "Degraded"
    ]
    assert health(obj)[0] == "Degraded"


def test_sandbox_has_no_string_library() -> None:
    runtime = _runtime()
    runtime.execute(SANDBOX)
    with pytest.raises(LUA_MODULE.LuaError):
        runtime.execute('return ("x"):upper()')
    assert runtime.eval("string") is None


# --- the generated argocd-cm patch and the Application examples -------------------------------


def test_gen_argocd_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen-argocd.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_patch_embeds_the_script_verbatim() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text(encoding="utf-8"))
    assert (patch["kind"], patch["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert patch["data"][HEALTH_KEY] == LUA.read_text(encoding="utf-8")


def _applications() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((ARGOCD / "application.yaml").read_text(encoding="utf-8"))
    return {d["metadata"]["name"]: d for d in docs if d and d.get("kind") == "Application"}


def test_applications_order_and_sync_options() -> None:
    apps = _applications()
    operator, services = apps["llmservice-operator"], apps["llmservices"]
    wave = "argocd.argoproj.io/sync-wave"
    assert int(operator["metadata"]["annotations"][wave]) < int(
        services["metadata"]["annotations"][wave]
    )
    assert operator["spec"]["source"]["path"] == "charts/llmservice-operator"
    options = set(services["spec"]["syncPolicy"]["syncOptions"])
    assert {
        "ServerSideApply=true",
        "RespectIgnoreDifferences=true",
        "SkipDryRunOnMissingResource=true",
    } <= options


def test_application_ignores_what_the_system_level_setting_ignores() -> None:
    """RespectIgnoreDifferences honours the Application's rules, so they repeat argocd-cm's."""
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text(encoding="utf-8"))
    system = yaml.safe_load(patch["data"][IGNORE_KEY])
    rules = [
        r
        for r in _applications()["llmservices"]["spec"]["ignoreDifferences"]
        if (r.get("group"), r.get("kind")) == ("llmservice.dev", "LLMService")
    ]
    jq = [e for r in rules for e in r.get("jqPathExpressions", [])]
    managers = [m for r in rules for m in r.get("managedFieldsManagers", [])]
    assert jq == system["jqPathExpressions"]
    assert "llmservice-operator" in managers
    for key in ("llmservice.dev/last-handled-configuration", "llmservice.dev/kopf-managed"):
        assert any(key in e for e in jq)
