"""Run the real operator (`llmservice operator`) as a process against the local cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes import client

from llmservice_operator.api.crd import crd
from tests.cluster.harness import LocalCluster, log_tail, wait_for

TIMER_INTERVAL_S = 5.0


def install_llmservice_crd(api_client: client.ApiClient) -> None:
    """Server-side apply the generated CRD and wait until the API server serves it."""
    ext = client.ApiextensionsV1Api(api_client)
    body = crd()
    name = body["metadata"]["name"]
    ext.patch_custom_resource_definition(
        name,
        body,
        field_manager="llmservice-tests",
        force=True,
        _content_type="application/apply-patch+yaml",
    )

    def established() -> bool:
        got = ext.read_custom_resource_definition(name)
        return any(
            cond.type == "Established" and cond.status == "True"
            for cond in (got.status.conditions or [])
        )

    wait_for("LLMService CRD Established", established, timeout=30)


class OperatorProcess:
    """`llmservice operator` in a child process; its log lives beside the cluster's logs."""

    def __init__(
        self,
        cluster: LocalCluster,
        name: str = "operator",
        *extra: str,
        kubeconfig: Path | None = None,
        standalone: bool = True,
    ) -> None:
        """`kubeconfig`: whom the operator acts as (default: the cluster's admin);
        `standalone=False`: take part in kopf peering (pass --peering/--priority in `extra`)."""
        self.cluster = cluster
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.log = cluster.log_dir / f"{name}.log"
        self.args = [
            sys.executable, "-m", "llmservice_operator.cli", "operator",
            *(["--standalone"] if standalone else []), "--metrics-port", "0", "--liveness", "",
            "--timer-interval", str(TIMER_INTERVAL_S), "--verbose", *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with Path(self.log).open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL: the crash a node failure or OOM kill would cause."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        return log_tail(self.log, lines)


@contextmanager
def running_operator(
    cluster: LocalCluster, request: pytest.FixtureRequest, name: str
) -> Iterator[OperatorProcess]:
    """CRD installed, operator started; on the way out stopped, its log printed if tests failed."""
    install_llmservice_crd(cluster.api_client)
    proc = OperatorProcess(cluster, name)
    proc.start()
    failed_before = request.session.testsfailed
    try:
        yield proc
    finally:
        proc.stop()
        if request.session.testsfailed > failed_before:
            print(f"\n--- {name} log (tail) ---\n{proc.tail()}")
