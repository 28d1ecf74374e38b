"""Run the real operator (`llmservice operator`) as a process against the local cluster, and
read its Prometheus /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from llmservice_operator.api.crd import crd
from tests.cluster.ground.probes import http_get
from tests.cluster.harness import LocalCluster, free_ports, log_tail, wait_for

TIMER_INTERVAL_S = 5.0

# The operator's counters (operator/llmservice_operator/metrics.py).
RECONCILES = "llmservice_reconciles_total"  # {result}, after each reconcile
RECONCILE_ERRORS = "llmservice_reconcile_errors_total"  # {kind: temporary|permanent}
APPLIES = "llmservice_rayservice_applies_total"  # {action: created|updated}, after each apply
SCALES = "llmservice_raycluster_scales_total"  # {direction}, after each RayCluster size patch
# Not exported yet; tests that need it say so (see test_peering.py).
RESYNC_PASSES = "llmservice_resync_passes_total"  # {outcome: ok|standby|list_failed}


@dataclass(frozen=True, repr=False)
class Metrics:
    """One scrape of an operator's /metrics."""

    families: frozenset[str]  # declared metrics, sampled or not ("llmservice_reconciles")
    samples: tuple[tuple[str, tuple[tuple[str, str], ...], float], ...]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        families = set()
        samples = []
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            for sample in family.samples:
                samples.append((sample.name, tuple(sorted(sample.labels.items())), sample.value))
        return cls(frozenset(families), tuple(samples))

    def __repr__(self) -> str:  # the operator's own samples only: assertion messages stay short
        ours = [
            f"{name}{dict(labels) if labels else ''}={value:g}"
            for name, labels, value in self.samples
            if name.startswith("llmservice_") and name.endswith("_total")
        ]
        return f"Metrics({', '.join(ours)})"

    def has(self, name: str) -> bool:
        """Is the metric declared? A labelled counter has no sample before its first inc()."""
        return name in self.families or name.removesuffix("_total") in self.families

    def value(self, name: str, **labels: str) -> float:
        """Sum of `name`'s samples that carry `labels` (0 before the first inc()).

        KeyError if the operator does not declare the metric at all.
        """
        if not self.has(name):
            raise KeyError(f"the operator exports no metric {name}")
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and set(labels.items()) <= set(sample_labels)
        )


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
            for cond in ((got.status.conditions if got.status else None) or [])
        )

    wait_for("LLMService CRD Established", established, timeout=30)


def writes(m: Metrics) -> dict[str, float]:
    """The operator's counts of its writes to Ray objects (those this operator declares)."""
    return {name: m.value(name) for name in (APPLIES, SCALES) if m.has(name)}


class OperatorProcess:
    """`llmservice operator` in a child process; its log lives beside the cluster's logs."""

    def __init__(
        self,
        cluster: LocalCluster,
        name: str = "operator",
        *extra: str,
        kubeconfig: Path | None = None,
        standalone: bool = True,
        metrics: bool = False,
    ) -> None:
        """`kubeconfig`: whom the operator acts as (default: the cluster's admin);
        `standalone=False`: take part in kopf peering (pass --peering/--priority in `extra`);
        `metrics`: serve /metrics on a free loopback port (the same one across restarts)."""
        self.cluster = cluster
        self.name = name
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.log = cluster.log_dir / f"{name}.log"
        self.metrics_port = free_ports(1)[0] if metrics else None
        self.args = [
            sys.executable, "-m", "llmservice_operator.cli", "operator",
            *(["--standalone"] if standalone else []),
            "--metrics-port", str(self.metrics_port or 0), "--liveness", "",
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

    def metrics(self) -> Metrics:
        """Scrape /metrics now (raises until the operator's startup handler has served it)."""
        if self.metrics_port is None:
            raise RuntimeError(f"{self.name} was started without metrics=True")
        status, text = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name} /metrics: HTTP {status}")
        return Metrics.parse(text)

    def wait_metrics(
        self, what: str, check: Callable[[Metrics], bool], timeout: float = 60
    ) -> Metrics:
        """Scrape until `check` holds (fails at once if the operator exited); return that scrape."""

        def scraped() -> Metrics | str | None:
            if self.proc is not None and self.proc.poll() is not None:
                return f"{self.name} exited (code {self.proc.returncode})"
            got = self.metrics()
            return got if check(got) else None

        result: Metrics | str
        try:
            result = cast("Metrics | str", wait_for(f"{self.name}: {what}", scraped, timeout))
        except TimeoutError as exc:
            result = str(exc)
        if isinstance(result, str):
            raise AssertionError(f"{result}\n--- {self.name} log (tail) ---\n{self.tail()}")
        return result

    def wait_serving(self, timeout: float = 60) -> Metrics:
        """Until /metrics answers: the startup handler ran, kopf is about to watch."""
        return self.wait_metrics("serves /metrics", lambda _: True, timeout)


@contextmanager
def running_operator(
    cluster: LocalCluster,
    request: pytest.FixtureRequest,
    name: str,
    *extra: str,
    metrics: bool = False,
) -> Iterator[OperatorProcess]:
    """CRD installed, operator started (with `extra` arguments); on the way out stopped, its
    log printed if tests failed."""
    install_llmservice_crd(cluster.api_client)
    proc = OperatorProcess(cluster, name, *extra, metrics=metrics)
    proc.start()
    failed_before = request.session.testsfailed
    try:
        if metrics:
            proc.wait_serving()
        yield proc
    finally:
        proc.stop()
        if request.session.testsfailed > failed_before:
            print(f"\n--- {name} log (tail) ---\n{proc.tail()}")
