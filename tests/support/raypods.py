"""Real Ray nodes for KWOK-simulated KubeRay pods: one network namespace and one Ray node per pod.

KWOK pods are Running but run nothing. `RayPodRunner` watches the pods of marked RayClusters
(a label selector, e.g. ``llmservice.dev/name=tiny``, plus KubeRay's ``ray.io/node-type`` and
``ray.io/cluster`` labels) and gives each one what a kubelet would: its own network namespace
with its own address on a host bridge (written into the pod's ``status.podIP``, so the API
server's service/pod proxy and KubeRay reach it), and its own ``ray start --block`` process,
built from the RayCluster's ``rayStartParams`` and the container's limits and env, as KubeRay's
generated start command would. The head listens on 6379/8265; workers join their cluster's
head at the head pod's address. When a pod goes (deleted, terminating, no longer matching),
its processes, namespace and veth go too. Nothing here reaches beyond the bridge's subnet.

    with RayPodRunner(kubeconfig, "default", "llmservice.dev/name=tiny",
                      mounts=[Mount.parse(".cache/tiny-model:/models/tiny-llama")]) as runner:
        ...  # KubeRay and the API server now talk to real Ray nodes
        print(runner.log_tails())

From a shell (root: ip netns, mount namespaces):

    python -m tests.support.raypods run --kubeconfig K --selector llmservice.dev/name=tiny \
        --mount .cache/tiny-model:/models/tiny-llama --log-dir .cache/raypods
    python -m tests.support.raypods cleanup   # what a killed runner left behind
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import decimal
import fcntl
import ipaddress
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.cluster.ground.processes import log_tail

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = REPO_ROOT / ".venv" / "bin" / "ray"

NODE_TYPE_LABEL = "ray.io/node-type"
CLUSTER_LABEL = "ray.io/cluster"
GROUP_LABEL = "ray.io/group"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
AGENT_PORT = 52365  # KubeRay's dashboard-agent-listen-port, where its probes ask the raylet
PROBE_URL = re.compile(r"http://localhost:(\d+)/(\S+)")

DEFAULT_BRIDGE = "llmsvc-br0"
DEFAULT_SUBNET = "10.250.0.0/16"
# Names of what this module creates; `cleanup` removes exactly these and nothing else.
NETNS_PREFIX = "llmsvc-rp-"
VETH_PREFIX = "lsvc"  # + "<3rd octet>-<4th octet>": at most 11 of Linux's 15 characters
# Short on purpose: Ray puts unix sockets under --temp-dir and those are limited to ~107 bytes.
RAY_TMP_ROOT = Path("/tmp/llmsvc-rp")
DEFAULT_LOG_DIR = REPO_ROOT / ".cache" / "raypods"
DEFAULT_MAX_NODES = 4
OBJECT_STORE_BYTES = 200 * 1024**2

# Ray nodes' defaults; the pod's own env entries win over these (e.g. VLLM_CPU_KVCACHE_SPACE).
BASE_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Real pods have cores of their own; these nodes share the host's. vLLM's CPU backend pins
    # each engine's worker to "its" cores, which here are the same core for every engine, and
    # one busy engine then starves the next one's start for minutes. The OS scheduler shares.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
}
# KubeRay writes the head's cluster-DNS name into these; there is no cluster DNS here, so
# they are pointed at the head pod's bridge address instead.
HEAD_HOST_ENV = ("RAY_IP", "FQ_RAY_IP")
HEAD_ADDRESS_ENV = "RAY_ADDRESS"
PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy")
# rayStartParams that are set by the runner itself (node address, head port, session dir).
RUNNER_FLAGS = frozenset(
    {"head", "address", "port", "node-ip-address", "dashboard-port", "temp-dir", "block"}
)
# KubeRay passes these with their value even when it is true/false (pod.go convertParamMap).
VALUED_BOOLEAN_FLAGS = frozenset({"log-color", "include-dashboard"})

# `ray start --block` drains and stops its own processes on SIGTERM (~2 s for an idle head;
# Ray allows a node 30 s to drain); whatever is left after that is killed.
DRAIN_TIMEOUT_S = 20.0
# When the runner stops (everything goes at once) or a worker's head is gone, there is
# nothing to drain towards.
STOP_ALL_DRAIN_TIMEOUT_S = 3.0
KILL_TIMEOUT_S = 5.0
RESTART_BACKOFF_S = (5.0, 60.0)  # first delay, cap: a crash-looping node must not eat the CPU
STOPPED_NODES_KEPT = 8  # for log_tails() after the pod went

log = logging.getLogger("raypods")


class RayPodsError(RuntimeError):
    """The runner could not set up its network or start."""


# --------------------------------------------------------------------------- small parsers


@dataclass(frozen=True)
class Mount:
    """A host directory shown at `target` inside every Ray node's private mount namespace."""

    source: Path
    target: str

    @classmethod
    def parse(cls, text: str) -> Mount:
        source, sep, target = text.rpartition(":")
        if not sep or not source or not target.startswith("/"):
            raise ValueError(f"mount {text!r}: expected HOST_DIR:/ABSOLUTE/TARGET")
        return cls(Path(source).resolve(), target)


_QUANTITY_FACTORS: dict[str, int | str] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "m": "0.001", "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY_SUFFIXES = {suffix: decimal.Decimal(f) for suffix, f in _QUANTITY_FACTORS.items()}


def parse_quantity(text: str) -> decimal.Decimal:
    """A Kubernetes resource quantity ("2", "500m", "4Gi", "1e3") as a number."""
    text = text.strip()
    for suffix in sorted(_QUANTITY_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return decimal.Decimal(text[: -len(suffix)]) * _QUANTITY_SUFFIXES[suffix]
    return decimal.Decimal(text)


def _param_value(value: str) -> str:
    """A rayStartParams value as `ray start` wants it, without the shell quoting KubeRay keeps.

    KubeRay pastes values into a shell command, so e.g. `resources` is written '"{...}"' or
    '\\'{...}\\''; this runner passes argv directly, so one layer of quotes comes off.
    """
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        with contextlib.suppress(json.JSONDecodeError):
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded
    return value


def start_param_flags(params: Mapping[str, str]) -> list[str]:
    """rayStartParams as `ray start` flags, the way KubeRay converts them.

    "true"/"false" make a bare flag or nothing (except the few flags that take them as
    values); the runner's own flags (addresses, ports, temp dir) are left out.
    """
    flags = []
    for key, raw in sorted(params.items()):
        if key in RUNNER_FLAGS:
            continue
        value = _param_value(str(raw))
        if value.lower() in ("true", "false") and key not in VALUED_BOOLEAN_FLAGS:
            if value.lower() == "true":
                flags.append(f"--{key}")
            continue
        flags.append(f"--{key}={value}")
    return flags


# --------------------------------------------------------------------------- pod -> Ray node


@dataclass(frozen=True)
class PodKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeRequest:
    """What one pod asks of its Ray node: role, cluster, start params, limits, env."""

    pod: PodKey
    uid: str
    role: str  # "head" | "worker"
    cluster: str
    group: str | None
    start_params: Mapping[str, str]
    env: Mapping[str, str]  # the container's literal (and resolvable fieldRef) env
    limits: Mapping[str, str]
    pod_ip_env: tuple[str, ...] = ()  # env names set from status.podIP: the node's address

    @property
    def cluster_key(self) -> tuple[str, str]:
        return (self.pod.namespace, self.cluster)


POD_IP_FIELD = "status.podIP"


def _field_ref(pod: Mapping[str, Any], path: str) -> str | None:
    """The few downward-API fields KubeRay's env uses; others stay unset."""
    meta = pod.get("metadata", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod.get("spec", {}).get("nodeName"),
    }
    if path in simple:
        value = simple[path]
        return None if value is None else str(value)
    for kind in ("labels", "annotations"):
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            value = meta.get(kind, {}).get(path[len(prefix) : -2])
            return None if value is None else str(value)
    return None


def container_env(pod: Mapping[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The Ray container's env entries with literal values or downward-API field refs, and
    the names of those that want the pod's IP (known only once the node has its address)."""
    container = pod["spec"]["containers"][0]  # KubeRay: the Ray container comes first
    env: dict[str, str] = {}
    pod_ip_names = []
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        path = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
        if path == POD_IP_FIELD:
            pod_ip_names.append(entry["name"])
        elif (value := _field_ref(pod, path)) is not None:
            env[entry["name"]] = value
    return env, tuple(pod_ip_names)


@dataclass(frozen=True)
class ConfigMapMount:
    """A configMap volume the Ray container mounts (what a kubelet would project)."""

    volume: str
    configmap: str
    target: str


def configmap_mounts(pod: Mapping[str, Any]) -> list[ConfigMapMount]:
    """The Ray container's mounts of configMap volumes (whole maps; items and subPath unused)."""
    spec = pod.get("spec") or {}
    sources = {
        v["name"]: v["configMap"]["name"] for v in spec.get("volumes") or [] if "configMap" in v
    }
    container = spec["containers"][0]
    return [
        ConfigMapMount(m["name"], sources[m["name"]], m["mountPath"])
        for m in container.get("volumeMounts") or []
        if m["name"] in sources
    ]


def group_start_params(
    raycluster: Mapping[str, Any], role: str, group: str | None
) -> dict[str, str]:
    """rayStartParams of the head group, or of the worker group named by the pod's label."""
    spec = raycluster.get("spec", {})
    if role == "head":
        return dict(spec.get("headGroupSpec", {}).get("rayStartParams") or {})
    for worker_group in spec.get("workerGroupSpecs") or []:
        if worker_group.get("groupName") == group:
            return dict(worker_group.get("rayStartParams") or {})
    raise LookupError(f"RayCluster has no worker group {group!r}")


def node_request(pod: Mapping[str, Any], raycluster: Mapping[str, Any]) -> NodeRequest:
    meta = pod["metadata"]
    labels = meta.get("labels", {})
    role = labels[NODE_TYPE_LABEL]
    group = labels.get(GROUP_LABEL)
    container = pod["spec"]["containers"][0]
    env, pod_ip_env = container_env(pod)
    return NodeRequest(
        pod=PodKey(meta["namespace"], meta["name"]),
        uid=meta["uid"],
        role=role,
        cluster=labels[CLUSTER_LABEL],
        group=group,
        start_params=group_start_params(raycluster, role, group),
        env=env,
        limits=dict((container.get("resources") or {}).get("limits") or {}),
        pod_ip_env=pod_ip_env,
    )


def ray_start_argv(request: NodeRequest, ip: str, head_ip: str | None, temp_dir: Path) -> list[str]:
    """`ray start --block ...` for this pod: runner flags, limits as defaults, then its params."""
    argv = [str(RAY_BIN), "start", "--block", f"--node-ip-address={ip}", f"--temp-dir={temp_dir}"]
    if request.role == "head":
        argv += ["--head", f"--port={GCS_PORT}", f"--dashboard-port={DASHBOARD_PORT}"]
    else:
        if head_ip is None:
            raise ValueError(f"worker {request.pod} needs its head's address")
        argv.append(f"--address={head_ip}:{GCS_PORT}")
    params = request.start_params
    defaults = {
        # As KubeRay does: the container's limits become Ray's logical resources.
        "num-cpus": _limit(request.limits, "cpu"),
        "memory": _limit(request.limits, "memory"),
        "num-gpus": _limit(request.limits, "nvidia.com/gpu"),
        # KubeRay's fixed ports (its Services name them: dashboard agent, metrics).
        "dashboard-agent-listen-port": str(AGENT_PORT),
        "metrics-export-port": "8080",
        "object-store-memory": str(OBJECT_STORE_BYTES),
        "disable-usage-stats": "true",
    }
    merged = {k: v for k, v in defaults.items() if v is not None} | dict(params)
    return argv + start_param_flags(merged)


def _limit(limits: Mapping[str, str], name: str) -> str | None:
    """A container limit as the whole number `ray start` takes, rounded up as KubeRay does
    (resource.Quantity.Value(): 500m CPUs -> 1)."""
    raw = limits.get(name)
    return None if raw is None else str(math.ceil(parse_quantity(str(raw))))


def node_env(
    request: NodeRequest, ip: str, head_ip: str | None, extra: Mapping[str, str]
) -> dict[str, str]:
    """The node's environment: this host's basics, BASE_ENV, the pod's env, the runner's fixes."""
    env = {
        k: v
        for k, v in os.environ.items()
        # The host's Ray settings (RAY_ADDRESS!) and proxies are not the pod's.
        if not k.startswith("RAY_") and k.lower() not in PROXY_ENV
    }
    env |= BASE_ENV
    env |= dict(request.env)
    env |= dict(extra)
    env |= dict.fromkeys(request.pod_ip_env, ip)
    gcs_host = ip if request.role == "head" else head_ip
    for name in (*HEAD_HOST_ENV, HEAD_ADDRESS_ENV):
        # Addresses stay (the head's RAY_ADDRESS is 127.0.0.1:6379, which works in its netns).
        if name in env and gcs_host and not _is_ip(_host(env[name])):
            env[name] = f"{gcs_host}:{GCS_PORT}" if name == HEAD_ADDRESS_ENV else gcs_host
    # The pod's own path first (code it mounts, e.g. serve_app's ConfigMap), then this repo.
    env["PYTHONPATH"] = os.pathsep.join(
        [
            *filter(None, [request.env.get("PYTHONPATH")]),
            str(REPO_ROOT),
            *filter(None, [os.environ.get("PYTHONPATH")]),
        ]
    )
    env["PATH"] = os.pathsep.join([str(RAY_BIN.parent), os.environ.get("PATH", "/usr/bin:/bin")])
    return env


def _host(address: str) -> str:
    """ "host" of "host:port" or of a bare "host"."""
    return address.rpartition(":")[0] or address


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def mount_script(mounts: Sequence[Mount]) -> str:
    """Shell that bind-mounts `mounts` in the (private) mount namespace, then execs "$@"."""
    lines = ["set -e"]
    for mount in mounts:
        target = shlex.quote(mount.target)
        lines += [f"mkdir -p {target}", f"mount --bind {shlex.quote(str(mount.source))} {target}"]
    lines.append('exec "$@"')
    return "\n".join(lines)


# --------------------------------------------------------------------------- host networking


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RayPodsError(f"{shlex.join(argv)} failed: {done.stderr.strip()}")
    return done


def link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", name], check=False).returncode == 0


def bridge_up(bridge: str, host_cidr: str) -> None:
    host_ip = host_cidr.split("/")[0]
    holders = _run(["ip", "-o", "addr", "show", "to", host_ip], check=False).stdout.split()
    if holders:
        # E.g. the old single-node demo's veth: two routes for the subnet would split it.
        raise RayPodsError(f"{host_ip} is already on interface {holders[1]}: remove it first")
    _run(["ip", "link", "add", bridge, "type", "bridge"])
    _run(["ip", "addr", "add", host_cidr, "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])


def bridge_down(bridge: str) -> None:
    if link_exists(bridge):
        _run(["ip", "link", "del", bridge], check=False)


def netns_up(netns: str, veth: str, cidr: str, bridge: str) -> None:
    """A network namespace whose eth0 (`cidr`) is a veth port on `bridge`; `lo` up."""
    _run(["ip", "netns", "add", netns])
    _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    _run(["ip", "link", "set", veth, "master", bridge, "up"])
    _run(["ip", "-n", netns, "addr", "add", cidr, "dev", "eth0"])
    _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    _run(["ip", "-n", netns, "link", "set", "lo", "up"])


def netns_pids(netns: str) -> list[int]:
    done = _run(["ip", "netns", "pids", netns], check=False)
    return [int(pid) for pid in done.stdout.split()] if done.returncode == 0 else []


def wait_netns_empty(netns: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while netns_pids(netns):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def kill_netns_processes(netns: str, timeout: float = KILL_TIMEOUT_S) -> None:
    """SIGTERM every process in the namespace, SIGKILL what is still there after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in netns_pids(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_netns_empty(netns, timeout):
            return


def netns_down(netns: str, veth: str | None = None) -> None:
    """Processes killed, veth pair and namespace deleted.

    The veth goes explicitly: a deleted namespace is torn down asynchronously by the kernel,
    so its eth0 (and the host end) would linger a moment and block a new veth of that name.
    """
    kill_netns_processes(netns)
    if veth is not None and link_exists(veth):
        _run(["ip", "link", "del", veth], check=False)
    _run(["ip", "netns", "del", netns], check=False)


def our_veths() -> list[str]:
    done = _run(["ip", "-o", "link", "show", "type", "veth"], check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()]
    return [name for name in names if re.fullmatch(rf"{VETH_PREFIX}\d+-\d+", name)]


def our_netns() -> list[str]:
    done = _run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(NETNS_PREFIX)]


def cleanup(bridge: str = DEFAULT_BRIDGE) -> list[str]:
    """Remove what a runner that was killed left: its namespaces (and processes), the bridge."""
    removed = []
    for netns in our_netns():
        netns_down(netns)
        removed.append(netns)
    for veth in our_veths():
        _run(["ip", "link", "del", veth], check=False)
        removed.append(veth)
    if link_exists(bridge):
        bridge_down(bridge)
        removed.append(bridge)
    return removed


def _says_success(url: str, timeout: float) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status == 200 and b"success" in resp.read(4096)
    except (OSError, ValueError):
        return False


def readiness_paths(pod: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(port, path) of every `wget http://localhost:PORT/PATH | grep success` in the Ray
    container's readiness probe: KubeRay writes the raylet and GCS checks there, and for a
    RayService's workers the Serve proxy's /-/healthz, so a worker whose proxy is not up yet
    is kept out of the serve Service, as in a real cluster."""
    container = (pod.get("spec", {}).get("containers") or [{}])[0]
    probe = (container.get("readinessProbe") or {}).get("exec") or {}
    command = " ".join(probe.get("command") or [])
    found = [(int(port), path) for port, path in PROBE_URL.findall(command)]
    return found or [(AGENT_PORT, "api/local_raylet_healthz")]


def ray_node_healthy(ip: str, paths: Sequence[tuple[int, str]], timeout: float = 1.0) -> bool:
    """Every probe answers with `success`, asked at the node's address instead of localhost."""
    return all(_says_success(f"http://{ip}:{port}/{path}", timeout) for port, path in paths)


def port_open(ip: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise RayPodsError("needs root (ip netns, veth, bridge, mount namespaces)")
    for tool in ("ip", "unshare", "setpriv"):
        if shutil.which(tool) is None:
            raise RayPodsError(f"{tool!r} not found on PATH (iproute2 / util-linux)")
    if not RAY_BIN.exists():
        raise RayPodsError(f"{RAY_BIN} missing: run `make serve-deps`")


# --------------------------------------------------------------------------- the runner


@dataclass
class RayNode:
    """One pod's Ray node: its namespace and address, and its `ray start` process."""

    request: NodeRequest
    ip: str
    netns: str
    veth: str
    temp_dir: Path
    log_path: Path
    mounts: tuple[Mount, ...] = ()  # the pod's own volumes (configMaps), after the runner's
    proc: subprocess.Popen[bytes] | None = None
    head_ip: str | None = None  # the GCS this worker joined
    head_uid: str | None = None  # ... and the head pod it belongs to
    starts: int = 0
    next_start: float = 0.0  # monotonic; restarts back off
    reported_exit: bool = False
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class NodeInfo:
    """A snapshot of one node for callers (tests, the CLI)."""

    pod: str
    namespace: str
    role: str
    cluster: str
    ip: str
    netns: str
    running: bool
    starts: int
    log_path: Path
    temp_dir: Path


class RayPodRunner:
    """Runs a real Ray node for every pod of the RayClusters that `selector` marks.

    start() sets up the bridge and a background thread that polls the pods every
    `poll_interval` seconds; stop() (or leaving the `with` block) stops every node and
    removes the bridge. Root only; one runner per bridge at a time (a lock file says so).
    """

    def __init__(
        self,
        kubeconfig: Path | str,
        namespace: str | None,
        selector: str,
        mounts: Sequence[Mount] = (),
        *,
        log_dir: Path = DEFAULT_LOG_DIR,
        max_nodes: int = DEFAULT_MAX_NODES,
        bridge: str = DEFAULT_BRIDGE,
        subnet: str = DEFAULT_SUBNET,
        extra_env: Mapping[str, str] | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        """`namespace=None` watches every namespace; `extra_env` is added to every node's env."""
        self.kubeconfig = Path(kubeconfig)
        self.namespace = namespace
        self.selector = selector
        self.mounts = tuple(mounts)
        self.log_dir = log_dir.resolve()
        self.max_nodes = max_nodes
        self.bridge = bridge
        self.network = ipaddress.ip_network(subnet)
        self.host_ip = str(next(self.network.hosts()))
        self.extra_env = dict(extra_env or {})
        self.poll_interval = poll_interval
        self._nodes: dict[str, RayNode] = {}  # pod uid -> node
        self._stopping: dict[str, RayNode] = {}  # pod uid -> node being torn down
        self._stopped: collections.deque[RayNode] = collections.deque(maxlen=STOPPED_NODES_KEPT)
        self._teardowns: list[threading.Thread] = []
        self._next_host = 0  # index into the subnet's hosts for _free_ip
        self._skipped: set[str] = set()  # pod uids already logged as over the node limit
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_file: IO[str] | None = None
        self._api: Any = None  # kubernetes.client.ApiClient
        self._log_handler: logging.Handler | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        check_prerequisites()
        self._take_lock()
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._attach_log_file()
            # Holding the lock means no live runner owns these: leftovers of a killed one.
            for leftover in cleanup(self.bridge):
                log.warning("removed leftover %s", leftover)
            bridge_up(self.bridge, f"{self.host_ip}/{self.network.prefixlen}")
            self._api = _api_client(self.kubeconfig)
        except BaseException:
            bridge_down(self.bridge)
            self._detach_log_file()
            self._release_lock()
            raise
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._loop, name="raypods", daemon=True)
        self._thread.start()
        log.info(
            "watching pods %r in %s; bridge %s %s/%d; logs %s",
            self.selector, self.namespace or "all namespaces", self.bridge, self.host_ip,
            self.network.prefixlen, self.log_dir,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop every Ray node, delete their namespaces and the bridge."""
        if self._lock_file is None:
            return  # never started (or already stopped): the bridge may be another runner's
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=DRAIN_TIMEOUT_S + 3 * KILL_TIMEOUT_S + 30)
            self._thread = None
        self._stop_all()  # also when the thread was stuck or never ran
        bridge_down(self.bridge)
        if self._api is not None:
            self._api.close()
            self._api = None
        self._release_lock()
        log.info("stopped")
        self._detach_log_file()

    def __enter__(self) -> RayPodRunner:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- for callers

    def nodes(self) -> list[NodeInfo]:
        """The nodes of the pods being served now."""
        with self._lock:
            return [_info(node) for node in self._nodes.values()]

    def rss_bytes(self) -> dict[str, int]:
        """Pod name -> summed resident memory of its node's processes (shared pages counted
        once per process, so an upper bound)."""
        with self._lock:
            nodes = list(self._nodes.values())
        return {node.request.pod.name: sum(map(_rss, netns_pids(node.netns))) for node in nodes}

    def log_tails(self, lines: int = 40) -> str:
        """The runner's log and each node's (running or recently stopped) log and Ray logs."""
        with self._lock:
            nodes = [*self._stopped, *self._stopping.values(), *self._nodes.values()]
        blocks = [_titled_tail(self.log_dir / "runner.log", lines)]
        for node in nodes:
            blocks.append(_titled_tail(node.log_path, lines))
            blocks += [_titled_tail(path, lines) for path in ray_log_files(node.temp_dir)]
        return "\n".join(blocks)

    # ----------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._reconcile()
            except Exception:  # API server restarting, a pod vanishing mid-way: next round
                log.exception("reconcile failed; retrying")
            self._stop_event.wait(self.poll_interval)
        self._stop_all()

    def _reconcile(self) -> None:
        pods = {pod["metadata"]["uid"]: pod for pod in self._wanted_pods()}
        for uid in [uid for uid in self._nodes if uid not in pods]:
            self._stop_node(uid, "pod gone, terminating or no longer matching")
        # Heads first, so that their workers find them up in the same round.
        ordered = sorted(pods.values(), key=lambda p: p["metadata"]["labels"][NODE_TYPE_LABEL])
        rayclusters: dict[tuple[str, str], Any] = {}
        for pod in ordered:
            if self._stop_event.is_set():
                return
            try:
                self._serve_pod(pod, rayclusters)
            except Exception:  # one pod's trouble must not starve the others: next round
                log.exception("pod %s/%s: failed", *_pod_ns_name(pod))

    def _serve_pod(self, pod: Mapping[str, Any], rayclusters: dict[tuple[str, str], Any]) -> None:
        node = self._nodes.get(pod["metadata"]["uid"]) or self._new_node(pod, rayclusters)
        if node is not None:
            moved = self._keep_pod_ip(node, pod)
            self._keep_running(node)
            if not moved:  # else the pod read here is older than our not-Ready patch
                self._keep_readiness(node, pod)

    def _wanted_pods(self) -> list[dict[str, Any]]:
        """Running, not terminating pods that match the selector and are KubeRay Ray pods."""
        from kubernetes import client

        core = client.CoreV1Api(self._api)
        selector = f"{self.selector},{NODE_TYPE_LABEL} in (head,worker),{CLUSTER_LABEL}"
        resp: Any  # urllib3's response: _preload_content=False skips the slow model parsing
        if self.namespace is None:
            resp = core.list_pod_for_all_namespaces(
                label_selector=selector, _preload_content=False, _request_timeout=10
            )
        else:
            resp = core.list_namespaced_pod(
                self.namespace, label_selector=selector, _preload_content=False,
                _request_timeout=10,
            )  # fmt: skip
        items = json.loads(resp.data)["items"]
        return [
            pod
            for pod in items
            if pod.get("status", {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")
        ]

    def _new_node(
        self, pod: Mapping[str, Any], rayclusters: dict[tuple[str, str], Any]
    ) -> RayNode | None:
        uid = pod["metadata"]["uid"]
        name = pod["metadata"]["name"]
        if len(self._nodes) + len(self._stopping) >= self.max_nodes:
            if uid not in self._skipped:
                self._skipped.add(uid)
                log.warning("pod %s skipped: %d Ray nodes already run", name, self.max_nodes)
            return None
        self._skipped.discard(uid)
        key = (pod["metadata"]["namespace"], pod["metadata"]["labels"][CLUSTER_LABEL])
        if key not in rayclusters:
            rayclusters[key] = self._read_raycluster(*key)
        request = node_request(pod, rayclusters[key])
        mounts = self._project_configmaps(pod)
        if mounts is None:
            return None  # as a kubelet would: the pod waits for its ConfigMap
        ip = self._free_ip()
        suffix = "-".join(ip.split(".")[2:])
        node = RayNode(
            request=request,
            ip=ip,
            netns=NETNS_PREFIX + suffix,
            veth=VETH_PREFIX + suffix,
            temp_dir=RAY_TMP_ROOT / suffix,
            log_path=self.log_dir / f"{name}.log",
            mounts=tuple(mounts),
        )
        try:
            netns_up(node.netns, node.veth, f"{ip}/{self.network.prefixlen}", self.bridge)
        except BaseException:
            netns_down(node.netns, node.veth)  # half made: nothing may stay behind
            raise
        # A fresh session dir: a node that had this address before must not be mistaken
        # for this one (Ray reads ray_current_cluster from it).
        shutil.rmtree(node.temp_dir, ignore_errors=True)
        node.temp_dir.mkdir(parents=True)
        with self._lock:
            self._nodes[uid] = node
        log.info("%s %s: netns %s, address %s", request.role, request.pod, node.netns, ip)
        return node

    def _project_configmaps(self, pod: Mapping[str, Any]) -> list[Mount] | None:
        """Each configMap volume of the pod written out as files (key -> file), to be bind-
        mounted at its mountPath; None while one of the ConfigMaps does not exist."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self._api)
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        mounts = []
        for want in configmap_mounts(pod):
            try:
                cm = core.read_namespaced_config_map(want.configmap, namespace, _request_timeout=10)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                log.info("pod %s/%s: waiting for ConfigMap %s", namespace, name, want.configmap)
                return None
            folder = self.log_dir / "volumes" / namespace / name / want.volume
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for key, text in (cm.data or {}).items():
                (folder / key).write_text(text)
            mounts.append(Mount(folder, want.target))
        return mounts

    def _read_raycluster(self, namespace: str, name: str) -> Any:
        from kubernetes import client

        custom = client.CustomObjectsApi(self._api)
        return custom.get_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayclusters", name, _request_timeout=10
        )

    def _free_ip(self) -> str:
        """The next free address after the last one given out (wrapping around).

        Not the lowest free one: a recreated pod on its predecessor's address could be
        taken for it (stale endpoints, a worker rejoining a GCS that is not its head).
        """
        with self._lock:
            taken = [*self._nodes.values(), *self._stopping.values()]
        used = {node.ip for node in taken} | {self.host_ip}
        size = self.network.num_addresses - 2  # without the network and broadcast addresses
        for offset in range(size):
            index = (self._next_host + offset) % size
            ip = str(self.network.network_address + 1 + index)
            if ip not in used:
                self._next_host = index + 1
                return ip
        raise RayPodsError(f"no free address left in {self.network}")

    def _keep_pod_ip(self, node: RayNode, pod: Mapping[str, Any]) -> bool:
        """Give the pod its namespace's address, again if KWOK wrote its own back (True: it
        was given now)."""
        current = pod.get("status", {}).get("podIP")
        if current == node.ip:
            return False
        from kubernetes import client

        core = client.CoreV1Api(self._api)
        # Not Ready first: KWOK made the pod Ready at once, and with our address but no Ray
        # behind it yet, the Endpoints would send traffic to a port nobody listens on.
        self._patch_ready(node, pod, ready=False)
        body = {"status": {"podIP": node.ip, "podIPs": [{"ip": node.ip}]}}
        core.patch_namespaced_pod_status(
            node.request.pod.name, node.request.pod.namespace, body,
            _content_type="application/merge-patch+json", _request_timeout=10,
        )  # fmt: skip
        log.info("pod %s: podIP %s -> %s", node.request.pod, current, node.ip)
        return True

    def _keep_readiness(self, node: RayNode, pod: Mapping[str, Any]) -> None:
        """The pod is Ready only while its Ray node passes KubeRay's own readiness probes.

        KWOK marks pods Ready at once; a real pod turns Ready when its probes pass. KubeRay
        acts on that (it talks to a head's dashboard only once the head pod is Ready, the
        Endpoints follow readiness), so a pod that claimed Ready before Ray listened would send
        KubeRay into error back-off for minutes, which no real cluster does.
        """
        ready = node.running and ray_node_healthy(node.ip, readiness_paths(pod))
        self._patch_ready(node, pod, ready)

    def _patch_ready(self, node: RayNode, pod: Mapping[str, Any], ready: bool) -> None:
        want = "True" if ready else "False"
        conditions = pod.get("status", {}).get("conditions") or []
        have = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)
        if have == want:
            return
        from kubernetes import client

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        reason = "RayNodeReady" if ready else "RayNodeNotReady"
        body = {
            "status": {
                "conditions": [
                    {"type": kind, "status": want, "lastTransitionTime": now, "reason": reason}
                    for kind in ("Ready", "ContainersReady")
                ]
            }
        }
        core = client.CoreV1Api(self._api)
        core.patch_namespaced_pod_status(
            node.request.pod.name, node.request.pod.namespace, body,
            _content_type="application/strategic-merge-patch+json", _request_timeout=10,
        )  # fmt: skip
        log.info("pod %s: Ready %s -> %s", node.request.pod, have, want)

    def _keep_running(self, node: RayNode) -> None:
        """Start the node's Ray, restart it (with back-off) if it exited or its head moved."""
        head = self._running_head(node) if node.request.role == "worker" else None
        if node.running:
            # A recreated head pod is a new Ray cluster: the worker joins it afresh.
            if head is None or head.request.uid == node.head_uid:
                return
            log.info("worker %s: new head %s at %s", node.request.pod, head.request.pod, head.ip)
            # Its cluster's GCS is gone: there is nothing to drain towards.
            self._kill(node, STOP_ALL_DRAIN_TIMEOUT_S)
        self._note_exit(node)
        if time.monotonic() < node.next_start:
            return
        if node.request.role == "worker":
            # Like KubeRay's wait-gcs-ready init container: join only a GCS that answers.
            if head is None or not port_open(head.ip, GCS_PORT):
                return
            node.head_uid = head.request.uid
        self._spawn(node, head.ip if head else None)

    def _running_head(self, node: RayNode) -> RayNode | None:
        """The running head node of `node`'s RayCluster, if any."""
        for other in self._nodes.values():
            if other.request.role == "head" and other.request.cluster_key == (
                node.request.cluster_key
            ):
                return other if other.running else None
        return None

    def _note_exit(self, node: RayNode) -> None:
        if node.proc is None or node.reported_exit:
            return
        code = node.proc.poll()
        node.reported_exit = True
        delay = min(RESTART_BACKOFF_S[0] * 2 ** max(node.starts - 1, 0), RESTART_BACKOFF_S[1])
        node.next_start = time.monotonic() + delay
        log.warning(
            "%s %s: ray exited with code %s; restarting in %.0fs (log %s)",
            node.request.role, node.request.pod, code, delay, node.log_path,
        )  # fmt: skip
        # Ray's children (raylet, GCS, workers) may outlive `ray start`: a clean slate.
        kill_netns_processes(node.netns)

    def _spawn(self, node: RayNode, head_ip: str | None) -> None:
        argv = ray_start_argv(node.request, node.ip, head_ip, node.temp_dir)
        env = node_env(node.request, node.ip, head_ip, self.extra_env)
        command = [
            # SIGTERM to `ray start` if this runner's thread dies, so `ray start --block`
            # takes its raylet/GCS with it instead of leaving them running.
            "setpriv", "--pdeathsig", "TERM",
            "ip", "netns", "exec", node.netns,
            # A private mount namespace: the bind mounts are this node's alone.
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", mount_script([*self.mounts, *node.mounts]), "sh", *argv,
        ]  # fmt: skip
        if node.log_file is None:
            node.log_file = node.log_path.open("ab")
        header = f"\n=== {time.strftime('%F %T')} start #{node.starts + 1}: {shlex.join(argv)}\n"
        node.log_file.write(header.encode())
        node.log_file.flush()
        node.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=node.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # Not this repository: Ray puts a driver's working directory (the dashboard's, for
            # Serve) first on its workers' path, and what they import must be the pod's own code
            # (its PYTHONPATH), as in a pod, whose working directory is the image's.
            cwd=node.temp_dir,
            start_new_session=True,  # a Ctrl-C meant for the runner does not hit Ray first
        )
        node.head_ip = head_ip
        node.starts += 1
        node.reported_exit = False
        log.info(
            "%s %s: ray start (pid %d) at %s%s",
            node.request.role, node.request.pod, node.proc.pid, node.ip,
            f", joining {head_ip}:{GCS_PORT}" if head_ip else "",
        )  # fmt: skip

    def _kill(self, node: RayNode, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        if node.proc is not None and node.running:
            # SIGTERM to everything at once would leave Ray's own shutdown half done (a head
            # then takes the whole kill timeout); `ray start` first, as a kubelet would.
            node.proc.send_signal(signal.SIGTERM)
            wait_netns_empty(node.netns, drain_timeout)
        kill_netns_processes(node.netns)
        if node.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=KILL_TIMEOUT_S)
        node.reported_exit = True  # an exit we asked for: restart at once
        node.next_start = 0.0

    def _stop_node(self, uid: str, why: str, drain_timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Tear the node down in a thread of its own: a draining node (up to 20 s) must not
        hold up the pods that come meanwhile, e.g. the replacement KubeRay creates."""
        with self._lock:
            node = self._nodes.pop(uid)
            self._stopping[uid] = node  # its address and netns name stay taken until it is gone
        log.info("%s %s: stopping (%s)", node.request.role, node.request.pod, why)
        thread = threading.Thread(
            target=self._teardown,
            args=(uid, node, drain_timeout),
            name=f"raypods-stop-{node.request.pod.name}",
            daemon=True,
        )
        self._teardowns = [t for t in self._teardowns if t.is_alive()] + [thread]
        thread.start()

    def _teardown(self, uid: str, node: RayNode, drain_timeout: float) -> None:
        try:
            self._kill(node, drain_timeout)
            netns_down(node.netns, node.veth)
        except Exception:  # the runner's stop() / `cleanup` still remove what is left
            log.exception("%s %s: teardown failed", node.request.role, node.request.pod)
        finally:
            if node.log_file is not None:
                node.log_file.close()
                node.log_file = None
            with self._lock:
                self._stopping.pop(uid, None)
                self._stopped.append(node)

    def _stop_all(self) -> None:
        for uid in list(self._nodes):
            with contextlib.suppress(KeyError):
                self._stop_node(uid, "runner stopping", STOP_ALL_DRAIN_TIMEOUT_S)
        for thread in self._teardowns:
            thread.join(timeout=STOP_ALL_DRAIN_TIMEOUT_S + 3 * KILL_TIMEOUT_S + DRAIN_TIMEOUT_S)
        self._teardowns = []

    # ----------------------------------------------------------------- plumbing

    def _take_lock(self) -> None:
        path = Path(tempfile.gettempdir()) / f"raypods-{self.bridge}.lock"
        lock_file = path.open("w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise RayPodsError(
                f"another runner owns bridge {self.bridge} (lock {path}); stop it first"
            ) from None
        self._lock_file = lock_file

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    def _detach_log_file(self) -> None:
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _attach_log_file(self) -> None:
        handler = logging.FileHandler(self.log_dir / "runner.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler


def _pod_ns_name(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata", {})
    return meta.get("namespace", "?"), meta.get("name", "?")


def _api_client(kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) * 1024


def _info(node: RayNode) -> NodeInfo:
    return NodeInfo(
        pod=node.request.pod.name,
        namespace=node.request.pod.namespace,
        role=node.request.role,
        cluster=node.request.cluster,
        ip=node.ip,
        netns=node.netns,
        running=node.running,
        starts=node.starts,
        log_path=node.log_path,
        temp_dir=node.temp_dir,
    )


def ray_log_files(temp_dir: Path, max_files: int = 6) -> list[Path]:
    """The Ray logs of a node most likely to hold a failure's cause."""
    logs = temp_dir / "session_latest" / "logs"
    if not logs.is_dir():
        return []
    fixed = [logs / name for name in ("raylet.err", "gcs_server.err", "dashboard.err")]
    serve = sorted((logs / "serve").glob("*.log")) if (logs / "serve").is_dir() else []
    # Actor stderr: the vLLM engine's own output and any traceback end up there.
    errs = [p for p in sorted(logs.glob("worker-*.err")) if _mentions_error(p)]
    candidates = [p for p in fixed if p.exists() and p.stat().st_size] + serve + errs
    return candidates[:max_files]


def _mentions_error(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return any(word in text for word in ("Traceback", "Error", "ServeReplica"))


def _titled_tail(path: Path, lines: int) -> str:
    return f"----- {path} -----\n{log_tail(path, lines)}"


# --------------------------------------------------------------------------- CLI


def _cmd_run(args: argparse.Namespace) -> int:
    runner = RayPodRunner(
        args.kubeconfig,
        None if args.all_namespaces else args.namespace,
        args.selector,
        [Mount.parse(m) for m in args.mount],
        log_dir=args.log_dir,
        max_nodes=args.max_nodes,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runner.start()
    except RayPodsError as e:
        print(f"raypods: {e}", file=sys.stderr)
        return 1
    try:
        if args.ready_file:
            args.ready_file.write_text(f"{os.getpid()}\n")
        stop.wait()
    finally:
        runner.stop()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    removed = cleanup(args.bridge)
    print("removed: " + (", ".join(removed) or "nothing"), file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.raypods",
        description="Run a real Ray node (own network namespace and pod IP) for every "
        "KubeRay pod that a label selector marks; or clean up after a killed runner.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve pods until SIGTERM/SIGINT")
    run.add_argument("--kubeconfig", type=Path, required=True)
    run.add_argument("--namespace", "-n", default="default")
    run.add_argument("--all-namespaces", "-A", action="store_true")
    run.add_argument("--selector", "-l", required=True, help="e.g. llmservice.dev/name=tiny")
    run.add_argument(
        "--mount", action="append", default=[], metavar="HOST_DIR:TARGET",
        help="bind-mount HOST_DIR at TARGET in every node (repeatable)",
    )  # fmt: skip
    run.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR)
    run.add_argument("--max-nodes", type=int, default=DEFAULT_MAX_NODES)
    run.add_argument("--ready-file", type=Path, help="written once the runner watches the pods")
    clean = sub.add_parser("cleanup", help="remove leftover namespaces, processes and bridge")
    clean.add_argument("--bridge", default=DEFAULT_BRIDGE)
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s raypods %(message)s")
    return _cmd_run(args) if args.command == "run" else _cmd_cleanup(args)


if __name__ == "__main__":
    sys.exit(main())
