"""A real, local Kubernetes control plane for the cluster tests: the stable entry point.

`LocalCluster` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
KWOK (fake nodes whose pods turn Running without containers) and the real
KubeRay operator as plain processes on loopback ports, from the binaries that
`hack/build-tools.sh` links into bin/. No Docker, kind or kubelet is involved:
the scheduler, garbage collector and KubeRay are the real ones, only the nodes
are simulated.

The code lives in `tests/cluster/ground/`, one module per concern (processes, pki, nodes,
components, cluster, cli); this module re-exports its public names, so tests, bench/ and
hack/ import from here.

By hand:

    python -m tests.cluster.harness up --dir .cache/cluster    # detached, prints KUBECONFIG
    python -m tests.cluster.harness down --dir .cache/cluster
"""

from __future__ import annotations

import sys

from tests.cluster.ground.cli import main
from tests.cluster.ground.cluster import (
    DEFAULT_BIN_DIR,
    FIELD_MANAGER,
    KWOK_STAGES,
    REPO_ROOT,
    STATE_FILE,
    LocalCluster,
    Timeouts,
)
from tests.cluster.ground.components import Ports
from tests.cluster.ground.errors import ClusterError, PortInUseError
from tests.cluster.ground.network import KUBERNETES_SERVICE_IP, POD_CIDR, SERVICE_CIDR
from tests.cluster.ground.nodes import (
    DEFAULT_POOLS,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    GPU_TAINT,
    KWOK_ANNOTATION_KEY,
    KWOK_ANNOTATION_VALUE,
    POOL_LABEL,
    NodePool,
)
from tests.cluster.ground.pki import Pki
from tests.cluster.ground.processes import Process, free_ports, log_tail, wait_for

__all__ = [
    "DEFAULT_BIN_DIR",
    "DEFAULT_POOLS",
    "FIELD_MANAGER",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "GPU_TAINT",
    "KUBERNETES_SERVICE_IP",
    "KWOK_ANNOTATION_KEY",
    "KWOK_ANNOTATION_VALUE",
    "KWOK_STAGES",
    "POD_CIDR",
    "POOL_LABEL",
    "REPO_ROOT",
    "SERVICE_CIDR",
    "STATE_FILE",
    "ClusterError",
    "LocalCluster",
    "NodePool",
    "Pki",
    "PortInUseError",
    "Ports",
    "Process",
    "Timeouts",
    "free_ports",
    "log_tail",
    "main",
    "wait_for",
]

if __name__ == "__main__":
    sys.exit(main())
