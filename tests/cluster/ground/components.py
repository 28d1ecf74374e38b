"""Each component's command line: flags only, no process handling (see cluster.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.cluster.ground.network import POD_CIDR, SERVICE_CIDR
from tests.cluster.ground.nodes import KWOK_ANNOTATION_KEY, KWOK_ANNOTATION_VALUE
from tests.cluster.ground.pki import Pki


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


def etcd_client_url(ports: Ports) -> str:
    return f"http://127.0.0.1:{ports.etcd_client}"


def etcd_args(workdir: Path, ports: Ports) -> list[str]:
    client_url = etcd_client_url(ports)
    peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        f"--data-dir={workdir / 'etcd-data'}",
        "--name=default",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
        # Throwaway data: skip fsync, the slowest part of etcd on CI disks.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_args(workdir: Path, ports: Ports, pki: Pki) -> list[str]:
    return [
        f"--etcd-servers={etcd_client_url(ports)}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={workdir / 'certs' / 'kube-apiserver'}",
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
    ]


def control_plane_client_flags(name: str, port: int, workdir: Path, kubeconfig: Path) -> list[str]:
    """Flags that kube-controller-manager and kube-scheduler share."""
    return [
        f"--kubeconfig={kubeconfig}",
        # Delegated authn/authz for their own /healthz, /metrics endpoints;
        # without them each logs errors looking for an in-cluster config.
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        # Their self-signed serving cert; the default /var/run/kubernetes
        # may not be writable and would be shared between runs.
        f"--cert-dir={workdir / 'certs' / name}",
        "--leader-elect=false",
    ]


def controller_manager_args(workdir: Path, ports: Ports, kubeconfig: Path, pki: Pki) -> list[str]:
    name, port = "kube-controller-manager", ports.controller_manager
    return [
        *control_plane_client_flags(name, port, workdir, kubeconfig),
        # All default controllers: garbage collector, namespace,
        # serviceaccount, node lifecycle, replicaset, ... (cloud ones
        # skip themselves without --cloud-provider).
        "--controllers=*",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_crt}",
        f"--cluster-signing-cert-file={pki.ca_crt}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
    ]


def scheduler_args(workdir: Path, ports: Ports, kubeconfig: Path) -> list[str]:
    return control_plane_client_flags("kube-scheduler", ports.scheduler, workdir, kubeconfig)


def kwok_address(ports: Ports) -> str:
    return f"127.0.0.1:{ports.kwok}"


def kwok_args(ports: Ports, kubeconfig: Path, stages: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        # The kwok binary has no built-in stages: without these the
        # nodes never become Ready and pods never Running.
        f"--config={stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION_KEY}={KWOK_ANNOTATION_VALUE}",
        # Node liveness through Lease renewal (what the node lifecycle
        # controller watches), as the heartbeat-with-lease stage expects.
        "--node-lease-duration-seconds=40",
        f"--cidr={POD_CIDR}",
        f"--server-address={kwok_address(ports)}",
        # INFO logs a line per node lease renewal (every 10 s each),
        # which would fill the log tails shown on failure.
        "--v=WARN",
    ]


def kuberay_probe_address(ports: Ports) -> str:
    return f"127.0.0.1:{ports.kuberay_probe}"


def kuberay_args(ports: Ports, kubeconfig: Path, *, use_kubernetes_proxy: bool) -> list[str]:
    flags = [
        f"--kubeconfig={kubeconfig}",
        f"--metrics-addr=127.0.0.1:{ports.kuberay_metrics}",
        f"--health-probe-bind-address={kuberay_probe_address(ports)}",
        "--enable-leader-election=false",
        "--log-stdout-encoder=console",
    ]
    if use_kubernetes_proxy:
        # Reach Ray head dashboards through the apiserver's service proxy
        # instead of cluster DNS, which does not exist on this machine.
        flags.append("--use-kubernetes-proxy")
    return flags
