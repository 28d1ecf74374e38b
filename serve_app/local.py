"""`llmservice up`: run an LLMService's rendered Serve config on a local Ray (CPU or local GPUs).

It deploys exactly the application the renderer writes into the RayService's serveConfigV2
(same import path, same args), so what works here is what the cluster will run. The only
liberty taken is ``--model-source``, because the path a pod mounts rarely exists on a laptop.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from typing import Any

import yaml

DEPLOY_TIMEOUT_S = float(os.environ.get("LLMSERVICE_UP_DEPLOY_TIMEOUT_S", "900"))


class UpError(RuntimeError):
    """A one-line reason `up` cannot serve this LLMService here."""


def local_apps(serve_config_text: str, model_source: str | None = None) -> list[dict[str, Any]]:
    """The applications of a rendered serveConfigV2, optionally with another model source."""
    apps: list[dict[str, Any]] = yaml.safe_load(serve_config_text)["applications"]
    for app in apps:
        if model_source is not None and "model_source" in app["args"]:
            app["args"] = {**app["args"], "model_source": model_source}
    return apps


def routed(apps: list[dict[str, Any]]) -> dict[str, Any]:
    """The application that owns the HTTP route."""
    return next(a for a in apps if a.get("route_prefix") is not None)


def models(apps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The applications that run the model (their args carry its source)."""
    return [a for a in apps if "model_source" in a["args"]]


def deploy_config(apps: list[dict[str, Any]]) -> None:
    """Deploy applications the way KubeRay does: Serve's declarative config, not serve.run.

    The same code path as the dashboard's ``PUT /api/serve/applications/``: Serve imports each
    ``import_path``, validates ``args`` against the builder, and applies the ``deployments``
    options (the router's weights) over the built ones. Declarative: apps left out are removed.
    """
    from ray.serve._private.api import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": apps}))


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpus_needed(apps: list[dict[str, Any]]) -> int:
    return sum(_app_cpus(a) for a in models(apps)) + 2


def _app_cpus(app: dict[str, Any]) -> int:
    """Logical CPUs of a model application's replicas (counts in its `deployments` options)."""
    (options,) = app.get("deployments") or [{}]
    replicas = options.get("num_replicas")
    if replicas is None:
        replicas = max(1, (options.get("autoscaling_config") or {}).get("min_replicas", 1))
    per_replica = sum(b.get("CPU", 0) for b in app["args"]["placement_bundles"]) + 1
    return int(per_replica * replicas)


def _check_resources(args: dict[str, Any], cluster: dict[str, float]) -> None:
    bundles: list[dict[str, float]] = args["placement_bundles"]
    gpus = sum(b.get("GPU", 0) for b in bundles)
    if gpus and cluster.get("GPU", 0) < gpus:
        raise UpError(
            f"spec.gpu: one replica needs {gpus:g} GPU(s) "
            f"({args.get('accelerator_type') or 'any type'}) but this machine has "
            f"{cluster.get('GPU', 0):g}; remove spec.gpu to try the model on CPU"
        )


def _wait_running(name: str, deadline: float) -> None:
    from ray import serve

    last = "no status yet"
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None:
            status = str(getattr(app.status, "value", app.status))
            last = f"{status}: {app.message}".rstrip(": ")
            if status == "RUNNING":
                return
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise UpError(f"Serve app {name!r} is {last}")
        time.sleep(1)
    raise UpError(f"Serve app {name!r} not RUNNING within {DEPLOY_TIMEOUT_S:.0f}s (last: {last})")


def run(
    serve_config_text: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    model_source: str | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Deploy, print the OpenAI base URL, serve until SIGINT/SIGTERM, clean up, return 0."""
    # The rendered container env reaches the Ray pods in a cluster; here the local Ray
    # processes inherit it from this one. Before importing Ray: Ray Serve reads its switches
    # at import time.
    os.environ.update(env or {})
    import ray
    from ray import serve

    apps = local_apps(serve_config_text, model_source)
    front, model_args = routed(apps), models(apps)[0]["args"]
    port = port or _free_port()
    # SIGTERM as SIGINT: both end the wait (or an unfinished deploy) through the cleanup below.
    signal.signal(signal.SIGTERM, _interrupt)
    # A short temp dir: Ray puts unix sockets there, and their paths are length-limited.
    temp_dir = tempfile.mkdtemp(prefix="llmsvc-up-", dir="/tmp")
    ray.init(
        address="local",
        # Logical CPUs: a replica holds its engine bundle plus one CPU for itself, and the
        # OpenAI ingress needs one more; a laptop's core count must not make that unschedulable.
        num_cpus=max(os.cpu_count() or 1, _cpus_needed(apps)),
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",  # Ray's own traffic stays on loopback
        log_to_driver=False,
    )
    try:
        _check_resources(model_args, ray.cluster_resources())
        serve.start(http_options={"host": host, "port": port})
        deploy_config(apps)
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        for app in apps:
            _wait_running(app["name"], deadline)
        prefix = front["route_prefix"].rstrip("/")
        print(f"OpenAI base URL: http://{host}:{port}{prefix}/v1", flush=True)
        print(f"model: {model_args['model_id']}   (Ctrl-C stops; Ray logs: {temp_dir})", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        # A second Ctrl-C (or `timeout` forwarding one) must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def main_from_cli(serve_config_text: str, **kwargs: Any) -> int:
    try:
        return run(serve_config_text, **kwargs)
    except UpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
