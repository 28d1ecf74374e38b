"""LocalCluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KWOK and the
real KubeRay operator as plain processes on loopback ports, started and stopped in order."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client

from tests.cluster.ground import components, kuberay
from tests.cluster.ground.components import Ports
from tests.cluster.ground.errors import ClusterError, PortInUseError
from tests.cluster.ground.nodes import DEFAULT_POOLS, NodePool, node_manifests, node_ready
from tests.cluster.ground.pki import Pki, write_kubeconfig
from tests.cluster.ground.probes import http_get, insecure_tls
from tests.cluster.ground.processes import (
    Process,
    alive,
    free_ports,
    log_tail,
    one_line,
    spawn,
    terminate,
    wait_for,
    wait_ready,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
# LLMSERVICE_BIN_DIR: another set of the same binaries (hack/test-compat.sh points it at one
# cell of the compatibility matrix: another Kubernetes or KubeRay version).
DEFAULT_BIN_DIR = Path(os.environ.get("LLMSERVICE_BIN_DIR") or REPO_ROOT / "bin").resolve()
KWOK_STAGES = REPO_ROOT / "tests" / "cluster" / "kwok" / "stages.yaml"

STATE_FILE = "state.json"
FIELD_MANAGER = "llmservice-test-harness"


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for each startup step (2-core CI machines are slow)."""

    etcd: float = 30
    apiserver: float = 120
    component: float = 60
    crds: float = 120
    nodes: float = 60
    kuberay: float = 60
    stop: float = 15


class LocalCluster:
    """etcd + kube-apiserver + controller-manager + scheduler + KWOK + KubeRay on loopback.

    Use as a context manager, or call start() and stop(). Everything (certs,
    etcd data, kubeconfig, one log per process under logs/) lives in `workdir`,
    a fresh temp dir unless given.
    """

    COMPONENTS = (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "kuberay-operator",
    )

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        bin_dir: Path = DEFAULT_BIN_DIR,
        pools: Sequence[NodePool] = DEFAULT_POOLS,
        timeouts: Timeouts | None = None,
        detached: bool = False,
        use_kubernetes_proxy: bool = True,
        with_kuberay: bool = True,
    ) -> None:
        self.owns_workdir = workdir is None
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="llmservice-cluster-"))).resolve()
        self.bin_dir = bin_dir
        self.pools = tuple(pools)
        self.timeouts = timeouts or Timeouts()
        # Detached processes outlive this Python process (`harness up`);
        # attached ones are killed by the kernel if it dies.
        self.detached = detached
        self.use_kubernetes_proxy = use_kubernetes_proxy
        # False: no KubeRay CRDs and no KubeRay operator (until install_kuberay_crds()), for
        # what the operator does on a cluster where KubeRay is missing or comes late.
        self.with_kuberay = with_kuberay
        self.pki = Pki(self.workdir / "pki")
        self.log_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.processes: list[Process] = []
        self.ports: Ports | None = None
        self.startup_seconds: float | None = None
        self.step_seconds: dict[str, float] = {}  # startup step -> seconds it took
        self.recorded_ready = False  # has start() finished (from_state(): had `up`)?
        self._api_client: client.ApiClient | None = None

    # ----------------------------------------------------------------- public API

    @property
    def server(self) -> str:
        if self.ports is None:
            raise ClusterError("the cluster has not been started")
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def api_client(self) -> client.ApiClient:
        """An admin ApiClient for the running apiserver (created on first use)."""
        if self._api_client is None:
            cfg = client.Configuration(host=self.server)
            cfg.ssl_ca_cert = str(self.pki.ca_crt)
            cfg.cert_file = str(self.pki.admin_crt)
            cfg.key_file = str(self.pki.admin_key)
            self._api_client = client.ApiClient(cfg)
        return self._api_client

    def start(self) -> None:
        """Start every component and wait until it works; on failure, stop what started.

        Retried once with new ports if one was taken between picking it and
        the component's bind (e.g. by another test cluster or an outgoing
        connection's ephemeral port).
        """
        began = time.monotonic()
        try:
            self._start_once()
        except PortInUseError as e:
            print(f"harness: {e.cause}; retrying with new ports", file=sys.stderr)
            self.step_seconds.clear()
            self._start_once()
        self.startup_seconds = time.monotonic() - began
        self.recorded_ready = True
        if self.detached:
            self._save_state(ready=True)

    def _start_once(self) -> None:
        steps: list[Callable[[], None]] = [
            self._check_binaries,
            self._prepare_workdir,
            self._create_pki,
            self._write_kubeconfig,
            self._start_etcd,
            self._start_apiserver,
            # CRDs before the controller-manager, so its garbage collector
            # watches RayService/RayCluster from its first discovery pass
            # instead of after its 30 s re-sync.
            *([self._install_kuberay_crds] if self.with_kuberay else []),
            self._start_controller_manager,
            self._start_scheduler,
            self._start_kwok,
            self._create_nodes,
            self._wait_nodes_ready,
            self._wait_default_service_account,
            *([self._start_kuberay] if self.with_kuberay else []),
        ]
        self.ports = Ports(*free_ports(8))
        try:
            for step in steps:
                step_began = time.monotonic()
                step()
                self.step_seconds[step.__name__.strip("_")] = time.monotonic() - step_began
        except ClusterError:
            self.stop()
            raise
        except Exception as e:
            self.stop()
            raise ClusterError(f"cluster start failed: {one_line(e)}", self.log_tails(10)) from e
        except BaseException:  # KeyboardInterrupt: still leave no process behind
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component, last started first: SIGTERM, then SIGKILL after a timeout."""
        if self._api_client is not None:
            # Shuts its worker thread pool down; the generated method is untyped.
            self._api_client.close()  # type: ignore[no-untyped-call]
            self._api_client = None
        for proc in reversed(self.processes):
            terminate(proc, self.timeouts.stop)
        self.processes = []
        self.recorded_ready = False
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()

    def stop_component(self, name: str) -> None:
        """Stop one component for good (benchmarks that measure without it)."""
        proc = self._process(name)
        terminate(proc, self.timeouts.stop)
        self.processes.remove(proc)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port (etcd keeps the state).

        Clients see connection errors meanwhile, as in an API server upgrade or crash.
        """
        old = self._process("kube-apiserver")
        terminate(old, self.timeouts.stop)
        self.processes.remove(old)
        self._start_apiserver()

    def outage(self, name: str, down_s: float) -> None:
        """Stop kube-apiserver or etcd, keep it down for `down_s`, start it again (same ports,
        same data): a control-plane crash or upgrade as its clients live through it. The
        sleep is the fault's length, not a wait for something to happen."""
        starts = {"kube-apiserver": self._start_apiserver, "etcd": self._start_etcd}
        old = self._process(name)
        terminate(old, self.timeouts.stop)
        self.processes.remove(old)
        time.sleep(down_s)
        starts[name]()
        tls = self.pki.client_tls()
        wait_for(
            f"kube-apiserver ready after the {name} outage",
            lambda: http_get(f"{self.server}/readyz", tls)[0] == 200,
            self.timeouts.apiserver,
        )
        self._wait_controllers_back(name)

    @contextlib.contextmanager
    def without_controller_manager(self) -> Iterator[None]:
        """kube-controller-manager stopped for the block (no garbage collector, as while its
        retries back off after API server trouble), then started again and acting."""
        old = self._process("kube-controller-manager")
        terminate(old, self.timeouts.stop)
        self.processes.remove(old)
        try:
            yield
        finally:
            self._start_controller_manager()
            self._wait_controllers_back("kube-controller-manager")

    def _wait_controllers_back(self, after: str) -> None:
        """Until the controller-manager acts again: its watches back off while the control plane
        is down, and the next test's namespace needs its ServiceAccount controller."""
        core = client.CoreV1Api(self.api_client)
        probe = f"probe-{after}-{os.getpid()}-{int(time.monotonic())}"

        def account() -> object:
            # Writes may still time out (504) just after etcd is back: create until it took.
            try:
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=probe)))
            except client.ApiException as exc:
                if exc.status != 409:  # 409: an earlier try created it
                    raise
            return core.read_namespaced_service_account("default", probe)

        try:
            wait_for(f"the controller-manager to act again after the {after} outage", account, 120)
        finally:
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(probe)

    def remove_workdir(self) -> None:
        """Delete the work dir if this cluster made it (keep it to read logs after a failure)."""
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_paths(self) -> dict[str, Path]:
        return {name: self.log_dir / f"{name}.log" for name in self.COMPONENTS}

    def log_tails(self, lines: int = 30) -> str:
        """The end of every component's log, one titled block each."""
        blocks = []
        for name, path in self.log_paths().items():
            if path.exists():
                blocks.append(f"----- {name} ({path}) -----\n{log_tail(path, lines)}")
        return "\n".join(blocks)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- state (up/down)

    def _save_state(self, *, ready: bool) -> None:
        # Written after every spawn too, so a `harness up` killed half-way
        # leaves enough behind for `down` (or the next `up`) to clean up.
        assert self.ports is not None
        state = {
            "ready": ready,
            "kubeconfig": str(self.kubeconfig),
            "ports": dataclasses.asdict(self.ports),
            "processes": [
                {"name": p.name, "pid": p.pid, "start_ticks": p.start_ticks, "log": str(p.log)}
                for p in self.processes
            ],
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def from_state(cls, workdir: Path) -> LocalCluster | None:
        """Re-attach to a cluster that `up` left running in `workdir` (None if there is none)."""
        path = workdir.resolve() / STATE_FILE
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        cluster = cls(workdir, detached=True)
        cluster.recorded_ready = bool(state.get("ready"))
        cluster.ports = Ports(**state["ports"])
        cluster.processes = [
            Process(p["name"], Path(p["log"]), int(p["pid"]), int(p["start_ticks"]))
            for p in state["processes"]
        ]
        return cluster

    def dead_processes(self) -> list[str]:
        """Names of recorded components that are no longer running."""
        return [p.name for p in self.processes if not alive(p)]

    def is_running(self) -> bool:
        """Re-attached cluster: did `up` finish, and is every component still alive?"""
        return self.recorded_ready and not self.dead_processes()

    # ----------------------------------------------------------------- startup steps

    def _binary(self, name: str) -> Path:
        return self.bin_dir / name

    def _check_binaries(self) -> None:
        for name in self.COMPONENTS:
            path = self._binary(name)
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise ClusterError(f"{_display(path)} not found: run `make tools`")
        if not any(self._crd_dir().glob("*.yaml")):
            raise ClusterError(f"{_display(self._crd_dir())} has no CRDs: run `make tools`")
        if not KWOK_STAGES.is_file():
            raise ClusterError(f"{KWOK_STAGES} is missing (KWOK's node/pod lifecycle stages)")

    def _create_pki(self) -> None:
        self.pki.create()

    def _crd_dir(self) -> Path:
        return self.bin_dir / "kuberay-crds"

    def _prepare_workdir(self) -> None:
        # Only what the harness creates is removed: `--dir` may be any directory.
        for sub in ("pki", "etcd-data", "logs", "kubeconfig", "certs", STATE_FILE):
            path = self.workdir / sub
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.log_dir.mkdir(parents=True)

    def _write_kubeconfig(self) -> None:
        write_kubeconfig(self.kubeconfig, self.server, self.pki)

    def _start_etcd(self) -> None:
        assert self.ports is not None
        proc = self._spawn("etcd", components.etcd_args(self.workdir, self.ports))
        health = f"{components.etcd_client_url(self.ports)}/health"
        wait_ready(
            proc, "did not become healthy", self.timeouts.etcd,
            lambda: '"health":"true"' in http_get(health)[1],
        )  # fmt: skip

    def _start_apiserver(self) -> None:
        assert self.ports is not None
        proc = self._spawn(
            "kube-apiserver", components.apiserver_args(self.workdir, self.ports, self.pki)
        )
        tls = self.pki.client_tls()
        wait_ready(
            proc, "did not become ready", self.timeouts.apiserver,
            lambda: http_get(f"{self.server}/readyz", tls)[0] == 200,
        )  # fmt: skip

    def install_kuberay_crds(self) -> None:
        """KubeRay's CRDs, Established (a cluster started with_kuberay=False gets them late)."""
        self._install_kuberay_crds()

    def _install_kuberay_crds(self) -> None:
        names = kuberay.apply_crds(self.api_client, self._crd_dir(), FIELD_MANAGER)
        wait_ready(
            self._process("kube-apiserver"), f"KubeRay CRDs ({', '.join(names)}) not Established",
            self.timeouts.crds, lambda: kuberay.crds_established(self.api_client, names),
            phrase_is_complete=True,
        )  # fmt: skip

    def _start_controller_manager(self) -> None:
        assert self.ports is not None
        args = components.controller_manager_args(
            self.workdir, self.ports, self.kubeconfig, self.pki
        )
        proc = self._spawn("kube-controller-manager", args)
        self._wait_healthz(proc, self.ports.controller_manager)

    def _start_scheduler(self) -> None:
        assert self.ports is not None
        args = components.scheduler_args(self.workdir, self.ports, self.kubeconfig)
        proc = self._spawn("kube-scheduler", args)
        self._wait_healthz(proc, self.ports.scheduler)

    def _wait_healthz(self, proc: Process, port: int) -> None:
        tls = insecure_tls()
        wait_ready(
            proc, "did not become healthy", self.timeouts.component,
            lambda: http_get(f"https://127.0.0.1:{port}/healthz", tls)[0] == 200,
        )  # fmt: skip

    def _start_kwok(self) -> None:
        assert self.ports is not None
        proc = self._spawn("kwok", components.kwok_args(self.ports, self.kubeconfig, KWOK_STAGES))
        address = components.kwok_address(self.ports)
        wait_ready(
            proc, "did not become healthy", self.timeouts.component,
            lambda: http_get(f"http://{address}/healthz")[0] == 200,
        )  # fmt: skip

    def _create_nodes(self) -> None:
        core = client.CoreV1Api(self.api_client)
        for node in node_manifests(self.pools):
            # A node's status may be set on create: that is how capacity
            # (GPUs included) gets there without a kubelet.
            body = client.V1Node.from_dict(node)
            assert body is not None
            core.create_node(body=body)

    def _wait_nodes_ready(self) -> None:
        core = client.CoreV1Api(self.api_client)
        wanted = {n["metadata"]["name"] for n in node_manifests(self.pools)}

        def all_ready() -> bool:
            nodes = core.list_node().items
            ready = {n.metadata.name for n in nodes if n.metadata and node_ready(n)}
            return wanted <= ready

        wait_ready(
            self._process("kwok"), f"fake nodes not Ready ({len(wanted)} expected)",
            self.timeouts.nodes, all_ready, phrase_is_complete=True,
        )  # fmt: skip

    def _wait_default_service_account(self) -> None:
        # The ServiceAccount admission plugin rejects pods until the
        # controller-manager has made the namespace's `default` account: a
        # cheap proof that its controllers run.
        core = client.CoreV1Api(self.api_client)

        def exists() -> bool:
            core.read_namespaced_service_account("default", "default")
            return True

        wait_ready(
            self._process("kube-controller-manager"),
            "did not create the default ServiceAccount", self.timeouts.component, exists,
        )  # fmt: skip

    def _start_kuberay(self) -> None:
        assert self.ports is not None
        args = components.kuberay_args(
            self.ports, self.kubeconfig, use_kubernetes_proxy=self.use_kubernetes_proxy
        )
        proc = self._spawn("kuberay-operator", args)
        probe = components.kuberay_probe_address(self.ports)
        wait_ready(
            proc, "did not become ready", self.timeouts.kuberay,
            lambda: http_get(f"http://{probe}/readyz")[0] == 200,
        )  # fmt: skip

    # ----------------------------------------------------------------- processes

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        argv = [str(self._binary(name)), *args]
        log = self.log_dir / f"{name}.log"
        proc = spawn(name, argv, log, cwd=self.workdir, env=env, detached=self.detached)
        self.processes.append(proc)
        if self.detached:
            # Not ready while `up` starts it; a ready cluster stays ready when a component is
            # restarted (restart_apiserver on a cluster reused through LLMSERVICE_CLUSTER_DIR).
            self._save_state(ready=self.recorded_ready)
        return proc

    def _process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)


def _display(path: Path) -> str:
    """A path relative to the repo when inside it ("bin/etcd"), else absolute."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
