"""`python -m tests.cluster.harness up|down --dir DIR`: the local control plane, detached."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.cluster.ground.cluster import REPO_ROOT, LocalCluster
from tests.cluster.ground.errors import ClusterError


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
