"""Real ray.serve.llm OpenAI apps on one local Ray, serving the tiny model with vLLM on CPU.

Two apps share the session's Ray: stock `build_openai_app` under /stock (the ground truth)
and our serve_app under / (deployed from the very serveConfigV2 the renderer writes for
manifests/examples/tiny.yaml). On two cores each takes a minute or more to start, so every
test in this folder shares them. Nothing here reaches a model hub: the model is generated
locally by tests.support.tinymodel, and the hub libraries are told to stay offline.

Tunables (environment): SERVE_TEST_DEPLOY_TIMEOUT_S (default 600) bounds the deploy wait;
SERVE_TEST_KEEP_LOGS=1 keeps the Ray temp dir (logs) even when everything passed.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / ".cache" / "tiny-model"
DEPLOY_TIMEOUT_S = float(os.environ.get("SERVE_TEST_DEPLOY_TIMEOUT_S", "600"))
HTTP_READY_TIMEOUT_S = 60.0
# Set in the driver and in the replicas: any attempt to reach a hub fails at once
# instead of hanging on a network this machine does not have.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# Set once the Ray session exists, so that failure reports can say where its logs are.
_ray_logs: Path | None = None
_failed = False


@dataclass(frozen=True)
class ServeEndpoint:
    base_url: str  # http://127.0.0.1:<port>/v1, for openai.OpenAI(base_url=...)
    model: str
    logs_dir: Path


def _free_port() -> int:
    # The port is released before Serve binds it; another process grabbing it in that
    # instant is possible but unlikely on a test machine, and would fail loudly.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tails(logs: Path, lines: int = 40, max_files: int = 6) -> str:
    """The ends of the logs most likely to hold the cause of a failed deploy."""
    replica_logs = sorted(
        (logs / "serve").glob("replica_*.log"), key=lambda p: "LLMServer" not in p.name
    )
    # Actor stderr: the vLLM engine's own output and any traceback end up there.
    actor_errs = [
        p
        for p in sorted(logs.glob("worker-*.err"))
        if any(word in p.read_text(errors="replace") for word in ("ServeReplica", "Traceback"))
    ]
    chunks = []
    for path in (replica_logs + actor_errs)[:max_files]:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        chunks.append(f"---- {path} (last {len(tail)} lines) ----\n" + "\n".join(tail))
    return "\n".join(chunks) or f"(no replica or worker error logs under {logs})"


def _fail_missing_stack(e: ImportError) -> NoReturn:
    # A failure, not a skip: a skip would let CI pass without the serving stack installed.
    pytest.fail(f"serving stack missing ({e}): run hack/install-serve-deps.sh", pytrace=False)


def _fail_deploy(why: str, logs: Path) -> NoReturn:
    global _failed
    _failed = True  # before the fixture's teardown runs, so the logs are kept
    pytest.fail(
        f"{why}\nRay/Serve logs: {logs} (serve/ for Serve, worker-*.err for actors)\n"
        + _log_tails(logs),
        pytrace=False,
    )


def _wait_app_running(logs: Path, deadline: float, name: str = "llm") -> None:
    from ray import serve

    last = "no status yet"
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None:
            status = str(app.status.value if hasattr(app.status, "value") else app.status)
            last = f"{status}: {app.message}" if app.message else status
            if status == "RUNNING":
                return
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                _fail_deploy(f"Serve app {name!r} is {last}", logs)
        time.sleep(2)
    _fail_deploy(
        f"Serve app {name!r} not RUNNING after {DEPLOY_TIMEOUT_S:.0f} s (last: {last})", logs
    )


def _wait_http_ready(base_url: str, logs: Path) -> None:
    # RUNNING means the replicas are up; the proxy may still be learning the routes.
    deadline = time.monotonic() + HTTP_READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=10) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as e:
            last = repr(e)
        time.sleep(1)
    _fail_deploy(
        f"{base_url}/models not answering after {HTTP_READY_TIMEOUT_S:.0f} s: {last}", logs
    )


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    # Imported here: it needs numpy, safetensors and tokenizers, which come with the serving
    # stack, and this conftest is imported even when serve tests are deselected.
    try:
        from tests.support.tinymodel import ensure_tiny_model
    except ImportError as e:
        _fail_missing_stack(e)

    return ensure_tiny_model(MODEL_DIR)


@dataclass(frozen=True)
class RaySession:
    port: int
    logs: Path


@pytest.fixture(scope="session")
def ray_session(tiny_model_dir: Path) -> Iterator[RaySession]:
    """One local Ray + Serve for the whole session; every app of the tests deploys into it."""
    global _ray_logs, _failed

    # Imported here so that collecting tests without the serving stack installed still
    # works, and running them fails (not skips: a skip would hide a missing install).
    try:
        import ray
        from ray import serve
    except ImportError as e:
        _fail_missing_stack(e)

    os.environ.update(OFFLINE_ENV)  # for the rest of the session: no test may reach a hub
    # vLLM CPU reserves this many GiB for its KV cache (default 4); the replicas inherit it.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    # Short path: Ray puts unix sockets under it, and those are limited to ~107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-serve-test-", dir="/tmp"))
    logs = temp_dir / "session_latest" / "logs"
    _ray_logs = logs
    port = _free_port()
    try:
        ray.init(
            address="local",  # never join a cluster that RAY_ADDRESS may point at
            # Logical, not cores: every app's replicas (engine bundle + the replica's own CPU)
            # must be placeable at once: stock, ours, a canary of two replicas, and the ones
            # Serve starts while it replaces a replica whose engine a test killed.
            num_cpus=16,
            num_gpus=0,
            object_store_memory=256 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,  # keep pytest output readable; the logs stay in `logs`
            _temp_dir=str(temp_dir),
            _node_ip_address="127.0.0.1",  # Ray's own traffic stays on loopback
        )
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield RaySession(port=port, logs=logs)
    except BaseException:
        _failed = True
        raise
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]  # untyped in Ray
        finally:
            ray.shutdown()
            _ray_logs = None
            # Logs are kept when anything failed, so the location printed stays useful.
            if _failed or os.environ.get("SERVE_TEST_KEEP_LOGS") == "1":
                print(f"\nRay/Serve logs kept at {logs}")
            else:
                shutil.rmtree(temp_dir, ignore_errors=True)


def deploy(session: RaySession, target: Any, name: str, route_prefix: str) -> str:
    """Deploy one app into the session, wait until it answers; return its OpenAI base URL."""
    from ray import serve

    # Not serve.run: it waits for RUNNING with no deadline.
    serve.run_many(
        [serve.RunTarget(target=target, name=name, route_prefix=route_prefix)],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    _wait_app_running(session.logs, time.monotonic() + DEPLOY_TIMEOUT_S, name)
    base_url = f"http://127.0.0.1:{session.port}{route_prefix.rstrip('/')}/v1"
    _wait_http_ready(base_url, session.logs)
    return base_url


@pytest.fixture(scope="session")
def serve_endpoint(ray_session: RaySession, tiny_model_dir: Path) -> ServeEndpoint:
    """Stock build_openai_app for the tiny model, under /stock."""
    try:
        from ray.serve.llm import LLMConfig, build_openai_app

        from tests.support.tinymodel import SERVED_MODEL_NAME
    except ImportError as e:
        _fail_missing_stack(e)

    llm_config = LLMConfig(
        model_loading_config={
            "model_id": SERVED_MODEL_NAME,
            "model_source": str(tiny_model_dir),
        },
        # The default engine bundle asks for a GPU; this machine has none.
        placement_group_config={"bundles": [{"CPU": 1}]},
        engine_kwargs={
            "enforce_eager": True,  # no torch.compile: minutes saved at start-up
            "max_model_len": 512,
            "max_num_seqs": 8,
            "dtype": "float32",  # AVX2-only hosts have no fast bf16
        },
        deployment_config={"num_replicas": 1},
    )
    app = build_openai_app({"llm_configs": [llm_config]})
    base_url = deploy(ray_session, app, "stock", "/stock")
    return ServeEndpoint(base_url=base_url, model=SERVED_MODEL_NAME, logs_dir=ray_session.logs)


# Applications deployed from config, by name: Serve's declarative API replaces the whole set on
# each deploy, so every deploy sends all of them (the imperative /stock app is not touched).
_declared: dict[str, dict[str, Any]] = {}


def deploy_declared(session: RaySession, apps: list[dict[str, Any]]) -> None:
    """Deploy (or update) applications as KubeRay does, keep the others; wait until RUNNING."""
    from serve_app.local import deploy_config

    for app in apps:
        _declared[app["name"]] = app
    deploy_config(list(_declared.values()))
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    for app in apps:
        _wait_app_running(session.logs, deadline, app["name"])


def rendered_apps(spec_overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The serveConfigV2 applications the renderer writes for tiny.yaml (spec keys overridden)."""
    import yaml

    from llmservice_operator.render import render_rayservice
    from llmservice_operator.validate import parse
    from serve_app.local import local_apps

    example = yaml.safe_load((REPO_ROOT / "manifests" / "examples" / "tiny.yaml").read_text())
    example["spec"].update(spec_overrides or {})
    rayservice = render_rayservice(parse(example))
    return local_apps(rayservice["spec"]["serveConfigV2"], model_source=str(MODEL_DIR))


@pytest.fixture(scope="session")
def app_endpoint(ray_session: RaySession, tiny_model_dir: Path) -> ServeEndpoint:
    """Our serve_app, deployed from the serveConfigV2 the renderer writes for tiny.yaml."""
    try:
        from serve_app.local import routed
    except ImportError as e:
        _fail_missing_stack(e)

    apps = rendered_apps()
    deploy_declared(ray_session, apps)
    front = routed(apps)
    base_url = f"http://127.0.0.1:{ray_session.port}{front['route_prefix'].rstrip('/')}/v1"
    _wait_http_ready(base_url, ray_session.logs)
    return ServeEndpoint(
        base_url=base_url, model=front["args"]["model_id"], logs_dir=ray_session.logs
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    """Adds the Ray/Serve logs location to the report of any failed serve test."""
    global _failed
    report = yield
    if report.failed:
        _failed = True
        if _ray_logs is not None:
            report.sections.append(("Ray/Serve logs", str(_ray_logs)))
    return report
