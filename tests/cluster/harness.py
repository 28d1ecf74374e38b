"""A real, local Kubernetes control plane for the cluster tests.

`LocalCluster` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
KWOK (fake nodes whose pods turn Running without containers) and the real
KubeRay operator as plain processes on loopback ports, from the binaries that
`hack/build-tools.sh` links into bin/. No Docker, kind or kubelet is involved:
the scheduler, garbage collector and KubeRay are the real ones, only the nodes
are simulated.

By hand:

    python -m tests.cluster.harness up --dir .cache/cluster    # detached, prints KUBECONFIG
    python -m tests.cluster.harness down --dir .cache/cluster
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml
from kubernetes import client

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN_DIR = REPO_ROOT / "bin"
KWOK_STAGES = Path(__file__).resolve().parent / "kwok" / "stages.yaml"

SERVICE_CIDR = "10.96.0.0/16"
# The apiserver puts the `kubernetes` Service on the first IP of SERVICE_CIDR;
# in-cluster clients verify the serving cert against it.
KUBERNETES_SERVICE_IP = "10.96.0.1"
# Pod IPs that KWOK hands out: loopback, so that anything reaching for a pod (KubeRay's
# dashboard client through the API server's proxy) never leaves this machine. The API server
# refuses to proxy to loopback ("address not allowed"), which fails fast and sends nothing.
POD_CIDR = "127.77.0.0/16"

# KWOK manages only nodes carrying this annotation, so a stray real node never
# has its status forged.
KWOK_ANNOTATION_KEY = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
POOL_LABEL = "llmservice.dev/pool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT: dict[str, str] = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}

# PyYAML's libyaml binding when built with it (it is in the PyPI wheels).
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

STATE_FILE = "state.json"
T = TypeVar("T")
FIELD_MANAGER = "llmservice-test-harness"


class ClusterError(RuntimeError):
    """The control plane failed to start or stop.

    `cause` is one line naming the component, what went wrong and its log;
    str(error) adds the tail of that log below it.
    """

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(f"{cause}\n{detail}" if detail else cause)
        self.cause = cause


class PortInUseError(ClusterError):
    """A component could not bind the port chosen for it."""


@dataclass(frozen=True)
class NodePool:
    """A set of identical fake nodes."""

    name: str
    count: int
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str | None = None


# GPU pools are tainted like real GPU node pools, so only pods that tolerate
# the taint (the GPU workers) land there; the Ray heads go to `cpu`.
DEFAULT_POOLS: tuple[NodePool, ...] = (
    NodePool("a100", 2, cpu="96", memory="1360Gi", gpus=8, gpu_product="NVIDIA-A100-SXM4-80GB"),
    NodePool("l4", 2, cpu="32", memory="128Gi", gpus=1, gpu_product="NVIDIA-L4"),
    NodePool("cpu", 2, cpu="32", memory="128Gi"),
)


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


@dataclass
class Process:
    """One running component: what was started and how to find it again."""

    name: str
    log: Path
    pid: int
    # Kernel start time of `pid` (/proc/<pid>/stat field 22): `down` runs in a
    # later Python process and must not signal an unrelated process that
    # reused the pid.
    start_ticks: int
    popen: subprocess.Popen[bytes] | None = None


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    kuberay_metrics: int
    kuberay_probe: int


# --------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports.

    All sockets stay bound until every port is known, so the kernel cannot hand
    out one port twice; a process racing us for a port between close() and the
    component's bind shows up as an 'address already in use' exit.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file (reads at most its last 64 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _die_with_parent() -> None:
    """Child-side hook: have the kernel SIGKILL the child if the test run dies.

    Without it a killed pytest leaves etcd, the apiserver, ... running forever.
    """
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _no_proxy_opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    # An http(s)_proxy in the environment must not swallow loopback health probes.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _http_get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    try:
        with _no_proxy_opener(context).open(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def _insecure_tls() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a
    # self-signed cert they make at startup; there is nothing to verify against.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """Poll `check` every half second until it returns something truthy, and return that.

    Raises TimeoutError("<what> within <timeout>s ...") quoting the last value or
    error, so a test never sleeps without a deadline.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except Exception as e:  # e.g. 404 until the object exists: keep polling
            last = _one_line(e)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout:.0f}s (last seen: {last!r:.300})")
        time.sleep(0.5)


# --------------------------------------------------------------------------- PKI


class Pki:
    """CA, apiserver serving cert, admin client cert and service-account keys, via openssl."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_crt = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.apiserver_crt = directory / "apiserver.crt"
        self.apiserver_key = directory / "apiserver.key"
        self.admin_crt = directory / "admin.crt"
        self.admin_key = directory / "admin.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"

    def create(self) -> None:
        if shutil.which("openssl") is None:
            raise ClusterError("openssl not found on PATH: the harness makes its certs with it")
        self.dir.mkdir(parents=True, exist_ok=True)
        cnf = self.dir / "openssl.cnf"
        # Our own minimal config, so the system openssl.cnf cannot add or clash
        # with extensions.
        cnf.write_text(
            "[req]\ndistinguished_name = dn\n[dn]\n"
            "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
            "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
            "subjectKeyIdentifier = hash\n"
        )
        self._ec_key(self.ca_key)
        _openssl(
            "req", "-x509", "-new", "-key", self.ca_key, "-sha256", "-days", "3650",
            "-subj", "/CN=llmservice-test-ca", "-config", cnf, "-extensions", "v3_ca",
            "-out", self.ca_crt,
        )  # fmt: skip
        sans = [
            "IP:127.0.0.1",
            f"IP:{KUBERNETES_SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
        self._leaf(self.apiserver_key, self.apiserver_crt, "/CN=kube-apiserver", "serverAuth", sans)
        # system:masters is bound to cluster-admin by the apiserver's bootstrap RBAC.
        self._leaf(self.admin_key, self.admin_crt, "/O=system:masters/CN=admin", "clientAuth", [])
        # Service-account tokens are signed with RSA (RS256), what every client expects.
        _openssl(
            "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", self.sa_key
        )
        _openssl("pkey", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    @staticmethod
    def _ec_key(path: Path) -> None:
        # P-256 keys: generated instantly, accepted by Go and Python TLS alike.
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)

    def _leaf(self, key: Path, crt: Path, subject: str, usage: str, sans: list[str]) -> None:
        self._ec_key(key)
        csr = crt.with_suffix(".csr")
        ext = crt.with_suffix(".ext")
        lines = [
            "basicConstraints = critical,CA:FALSE",
            "keyUsage = critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage = {usage}",
        ]
        if sans:
            lines.append("subjectAltName = " + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        cnf = self.dir / "openssl.cnf"
        _openssl("req", "-new", "-key", key, "-subj", subject, "-config", cnf, "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
            "-set_serial", "0x" + secrets.token_hex(16), "-days", "3650", "-sha256",
            "-extfile", ext, "-out", crt,
        )  # fmt: skip

    def client_tls(self) -> ssl.SSLContext:
        """TLS context that trusts our CA and presents the admin cert."""
        ctx = ssl.create_default_context(cafile=str(self.ca_crt))
        ctx.load_cert_chain(str(self.admin_crt), str(self.admin_key))
        return ctx


def _openssl(*args: str | Path) -> None:
    argv = ["openssl", *map(str, args)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"openssl {args[0]} failed: {last}", result.stderr)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# --------------------------------------------------------------------------- cluster


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
        self.pki = Pki(self.workdir / "pki")
        self.log_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.processes: list[Process] = []
        self.ports: Ports | None = None
        self.startup_seconds: float | None = None
        self.step_seconds: dict[str, float] = {}  # startup step -> seconds it took
        self.recorded_ready = False  # from_state(): had `up` finished starting it?
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
            self._install_kuberay_crds,
            self._start_controller_manager,
            self._start_scheduler,
            self._start_kwok,
            self._create_nodes,
            self._wait_nodes_ready,
            self._wait_default_service_account,
            self._start_kuberay,
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
            raise ClusterError(f"cluster start failed: {_one_line(e)}", self.log_tails(10)) from e
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
            _terminate(proc, self.timeouts.stop)
        self.processes = []
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()

    def stop_component(self, name: str) -> None:
        """Stop one component for good (benchmarks that measure without it)."""
        proc = self._process(name)
        _terminate(proc, self.timeouts.stop)
        self.processes.remove(proc)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port (etcd keeps the state).

        Clients see connection errors meanwhile, as in an API server upgrade or crash.
        """
        old = self._process("kube-apiserver")
        _terminate(old, self.timeouts.stop)
        self.processes.remove(old)
        self._start_apiserver()

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
        return [p.name for p in self.processes if not _alive(p)]

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
        # Certs are embedded, so the file keeps working when copied elsewhere.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "llmservice-local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.pki.ca_crt),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": _b64(self.pki.admin_crt),
                        "client-key-data": _b64(self.pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "llmservice-local",
                    "context": {"cluster": "llmservice-local", "user": "admin"},
                }
            ],
            "current-context": "llmservice-local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _start_etcd(self) -> None:
        assert self.ports is not None
        client_url = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{self.ports.etcd_peer}"
        proc = self._spawn(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd-data'}",
                "--name=default",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Throwaway data: skip fsync, the slowest part of etcd on CI disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(
            proc, "did not become healthy", self.timeouts.etcd,
            lambda: '"health":"true"' in _http_get(f"{client_url}/health")[1],
        )  # fmt: skip

    def _start_apiserver(self) -> None:
        assert self.ports is not None
        pki = self.pki
        proc = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={self.workdir / 'certs' / 'kube-apiserver'}",
                f"--tls-cert-file={pki.apiserver_crt}",
                f"--tls-private-key-file={pki.apiserver_key}",
                f"--client-ca-file={pki.ca_crt}",
                # Published for the controller-manager's and scheduler's
                # delegated authn, which otherwise log errors every few seconds.
                # Only certs with CN=front-proxy-client (none is made) may use it.
                f"--requestheader-client-ca-file={pki.ca_crt}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The `kubernetes` Service's endpoint would be 127.0.0.1, which
                # Endpoints validation rejects (error every 10 s); nothing runs
                # in-cluster to need it.
                "--endpoint-reconciler-type=none",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        tls = pki.client_tls()
        self._wait(
            proc, "did not become ready", self.timeouts.apiserver,
            lambda: _http_get(f"{self.server}/readyz", tls)[0] == 200,
        )  # fmt: skip

    def _install_kuberay_crds(self) -> None:
        api = client.ApiextensionsV1Api(self.api_client)
        names = []
        for path in sorted(self._crd_dir().glob("*.yaml")):
            # libyaml: the pure-Python loader takes seconds on RayCluster's CRD.
            for doc in yaml.load_all(path.read_text(), Loader=_YAML_LOADER):
                if not doc:
                    continue
                # Server-side apply: RayCluster's CRD is too large for the
                # last-applied annotation of a client-side apply. The echoed
                # CRD is not decoded into models (slow, and unused): the
                # call returns the raw urllib3 response, which its types omit.
                echoed: Any = api.patch_custom_resource_definition(
                    name=doc["metadata"]["name"],
                    body=doc,
                    field_manager=FIELD_MANAGER,
                    force=True,
                    _content_type="application/apply-patch+yaml",
                    _preload_content=False,
                )
                echoed.release_conn()
                names.append(str(doc["metadata"]["name"]))

        def established() -> bool:
            for name in names:
                raw: Any = api.read_custom_resource_definition(name, _preload_content=False)
                conditions = json.loads(raw.data).get("status", {}).get("conditions", [])
                if not any(
                    c["type"] == "Established" and c["status"] == "True" for c in conditions
                ):
                    return False
            return True

        self._wait(
            self._process("kube-apiserver"), f"KubeRay CRDs ({', '.join(names)}) not Established",
            self.timeouts.crds, established, phrase_is_complete=True,
        )  # fmt: skip

    def _control_plane_client_flags(self, name: str, port: int) -> list[str]:
        """Flags that kube-controller-manager and kube-scheduler share."""
        return [
            f"--kubeconfig={self.kubeconfig}",
            # Delegated authn/authz for their own /healthz, /metrics endpoints;
            # without them each logs errors looking for an in-cluster config.
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            # Their self-signed serving cert; the default /var/run/kubernetes
            # may not be writable and would be shared between runs.
            f"--cert-dir={self.workdir / 'certs' / name}",
            "--leader-elect=false",
        ]

    def _start_controller_manager(self) -> None:
        assert self.ports is not None
        port = self.ports.controller_manager
        proc = self._spawn(
            "kube-controller-manager",
            [
                *self._control_plane_client_flags("kube-controller-manager", port),
                # All default controllers: garbage collector, namespace,
                # serviceaccount, node lifecycle, replicaset, ... (cloud ones
                # skip themselves without --cloud-provider).
                "--controllers=*",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_crt}",
                f"--cluster-signing-cert-file={self.pki.ca_crt}",
                f"--cluster-signing-key-file={self.pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
        )
        self._wait_healthz(proc, port)

    def _start_scheduler(self) -> None:
        assert self.ports is not None
        port = self.ports.scheduler
        proc = self._spawn(
            "kube-scheduler", self._control_plane_client_flags("kube-scheduler", port)
        )
        self._wait_healthz(proc, port)

    def _wait_healthz(self, proc: Process, port: int) -> None:
        tls = _insecure_tls()
        self._wait(
            proc, "did not become healthy", self.timeouts.component,
            lambda: _http_get(f"https://127.0.0.1:{port}/healthz", tls)[0] == 200,
        )  # fmt: skip

    def _start_kwok(self) -> None:
        assert self.ports is not None
        address = f"127.0.0.1:{self.ports.kwok}"
        proc = self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                # The kwok binary has no built-in stages: without these the
                # nodes never become Ready and pods never Running.
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION_KEY}={KWOK_ANNOTATION_VALUE}",
                # Node liveness through Lease renewal (what the node lifecycle
                # controller watches), as the heartbeat-with-lease stage expects.
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                f"--server-address={address}",
                # INFO logs a line per node lease renewal (every 10 s each),
                # which would fill the log tails shown on failure.
                "--v=WARN",
            ],
        )
        self._wait(
            proc, "did not become healthy", self.timeouts.component,
            lambda: _http_get(f"http://{address}/healthz")[0] == 200,
        )  # fmt: skip

    def _node_manifests(self) -> Iterator[dict[str, Any]]:
        for pool in self.pools:
            for index in range(pool.count):
                yield _node_manifest(pool, f"{pool.name}-{index}")

    def _create_nodes(self) -> None:
        core = client.CoreV1Api(self.api_client)
        for node in self._node_manifests():
            # A node's status may be set on create: that is how capacity
            # (GPUs included) gets there without a kubelet.
            body = client.V1Node.from_dict(node)
            assert body is not None
            core.create_node(body=body)

    def _wait_nodes_ready(self) -> None:
        core = client.CoreV1Api(self.api_client)
        wanted = {n["metadata"]["name"] for n in self._node_manifests()}

        def all_ready() -> bool:
            ready = {n.metadata.name for n in core.list_node().items if n.metadata and _ready(n)}
            return wanted <= ready

        self._wait(
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

        self._wait(
            self._process("kube-controller-manager"),
            "did not create the default ServiceAccount", self.timeouts.component, exists,
        )  # fmt: skip

    def _start_kuberay(self) -> None:
        assert self.ports is not None
        probe = f"127.0.0.1:{self.ports.kuberay_probe}"
        flags = [
            f"--kubeconfig={self.kubeconfig}",
            f"--metrics-addr=127.0.0.1:{self.ports.kuberay_metrics}",
            f"--health-probe-bind-address={probe}",
            "--enable-leader-election=false",
            "--log-stdout-encoder=console",
        ]
        if self.use_kubernetes_proxy:
            # Reach Ray head dashboards through the apiserver's service proxy
            # instead of cluster DNS, which does not exist on this machine.
            flags.append("--use-kubernetes-proxy")
        proc = self._spawn("kuberay-operator", flags)
        self._wait(
            proc, "did not become ready", self.timeouts.kuberay,
            lambda: _http_get(f"http://{probe}/readyz")[0] == 200,
        )  # fmt: skip

    # ----------------------------------------------------------------- processes

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.log_dir / f"{name}.log"
        argv = [str(self._binary(name)), *args]
        with log.open("ab") as out:
            out.write(("$ " + " ".join(argv) + "\n").encode())
            out.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **(env or {})},
                # Own session: a Ctrl-C in the terminal of `harness up` does
                # not reach the detached cluster, and stop() can signal the group.
                start_new_session=True,
                preexec_fn=None if self.detached else _die_with_parent,
            )
        proc = Process(name, log, popen.pid, _proc_start_ticks(popen.pid) or 0, popen)
        self.processes.append(proc)
        if self.detached:
            self._save_state(ready=False)
        return proc

    def _process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def _wait(
        self,
        proc: Process,
        failure: str,
        timeout: float,
        ready: Callable[[], bool],
        *,
        phrase_is_complete: bool = False,
    ) -> None:
        """Poll `ready` until true; fail fast if `proc` exits, or after `timeout` seconds.

        Errors raised by `ready` count as "not yet" (the component is still
        coming up); the last one is quoted if time runs out.
        """
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            _raise_if_exited(proc)
            try:
                if ready():
                    return
            # Anything: connection refused, TLS not up yet, 503 from the
            # apiserver, urllib3/http.client errors (which share no base class).
            except Exception as e:
                last_error = _one_line(e)
            if time.monotonic() >= deadline:
                what = failure if phrase_is_complete else f"{proc.name} {failure}"
                hint = f"; last error: {last_error}" if last_error else ""
                raise ClusterError(
                    f"{what} within {timeout:.0f}s (log: {proc.log}{hint})", log_tail(proc.log)
                )
            time.sleep(0.25)


def _node_manifest(pool: NodePool, name: str) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        POOL_LABEL: pool.name,
    }
    resources = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110"}
    taints = []
    if pool.gpus:
        resources[GPU_RESOURCE] = str(pool.gpus)
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.count"] = str(pool.gpus)
        if pool.gpu_product:
            labels[GPU_PRODUCT_LABEL] = pool.gpu_product
        taints.append(GPU_TAINT)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION_KEY: KWOK_ANNOTATION_VALUE},
        },
        "spec": {"taints": taints},
        "status": {"capacity": resources, "allocatable": resources},
    }


def _ready(node: client.V1Node) -> bool:
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _alive(proc: Process) -> bool:
    return _proc_start_ticks(proc.pid) == proc.start_ticks


def _raise_if_exited(proc: Process) -> None:
    code = proc.popen.poll() if proc.popen is not None else None
    if code is None:
        return
    tail = log_tail(proc.log)
    in_use = next((ln for ln in tail.splitlines() if "address already in use" in ln), None)
    if in_use is not None:
        raise PortInUseError(
            f"{proc.name} exited (code {code}): a port it needs is already in use"
            f" (log: {proc.log})",
            tail,
        )
    raise ClusterError(
        f"{proc.name} exited with code {code} during startup (log: {proc.log})", tail
    )


def _terminate(proc: Process, timeout: float) -> None:
    """SIGTERM the component's process group, SIGKILL it if still there after `timeout`."""
    if proc.popen is None and not _alive(proc):
        return  # re-attached (`down`) and already gone, or the pid now belongs to someone else
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if _wait_exit(proc, timeout):
            return


def _wait_exit(proc: Process, timeout: float) -> bool:
    if proc.popen is not None:
        try:
            proc.popen.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(proc):
            return True
        time.sleep(0.1)
    return False


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def _display(path: Path) -> str:
    """A path relative to the repo when inside it ("bin/etcd"), else absolute."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- CLI


def _cmd_up(workdir: Path) -> int:
    running = LocalCluster.from_state(workdir)
    if running is not None:
        if running.is_running():
            print(f"cluster already up ({running.server})", file=sys.stderr)
            print(f"export KUBECONFIG={running.kubeconfig}")
            return 0
        why = ", ".join(running.dead_processes()) + " not running"
        if not running.recorded_ready:
            why = "its `up` never finished"
        print(f"stale cluster ({why}): stopping what is left", file=sys.stderr)
        running.stop()
    cluster = LocalCluster(workdir, detached=True)
    try:
        cluster.start()
    except ClusterError as e:
        print(f"cluster up failed: {e}", file=sys.stderr)
        return 1
    print(
        f"cluster up in {cluster.startup_seconds:.1f}s at {cluster.server} ({cluster.log_dir})",
        file=sys.stderr,
    )
    steps = ", ".join(f"{name} {secs:.1f}s" for name, secs in cluster.step_seconds.items())
    print(f"steps: {steps}", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def _cmd_down(workdir: Path) -> int:
    cluster = LocalCluster.from_state(workdir)
    if cluster is None:
        print(f"no cluster recorded in {workdir}", file=sys.stderr)
        return 0
    cluster.stop()
    print("cluster stopped", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.harness",
        description="Start or stop the local control plane (etcd, kube-apiserver, "
        "controller-manager, scheduler, KWOK, KubeRay) in the background.",
    )
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO_ROOT / ".cache" / "cluster",
        help="work dir (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    workdir: Path = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return _cmd_up(workdir) if args.command == "up" else _cmd_down(workdir)


if __name__ == "__main__":
    sys.exit(main())
