"""Fixtures of the real-Ray ground: control plane, operator, Ray pods that run Ray, a proxy.

Set LLMSERVICE_CLUSTER_DIR to the --dir of `python -m tests.cluster.harness up` to reuse a
running control plane. Every scenario appends one row (requests sent/failed, time to converge,
status seen) to .cache/e2e/results.jsonl; `make test-e2e` prints them as a table.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.dump import write_namespace_dump
from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.operator_process import OperatorProcess, running_operator
from tests.e2e.world import LLMSVC, NotYet, World
from tests.support.raypods import Mount, RayPodRunner

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / ".cache" / "tiny-model"
RESULTS = REPO_ROOT / ".cache" / "e2e" / "results.jsonl"
EXAMPLE = REPO_ROOT / "manifests" / "examples" / "tiny.yaml"


@pytest.fixture(scope="session")
def ground(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    if os.geteuid() != 0:
        pytest.fail("the real-Ray ground needs root (ip netns, bridge, mount namespaces)")
    if not (MODEL_DIR / "config.json").exists():
        pytest.fail(f"no tiny model at {MODEL_DIR}: run `make model`", pytrace=False)
    reuse = os.environ.get("LLMSERVICE_CLUSTER_DIR")
    if reuse:
        running = LocalCluster.from_state(Path(reuse))
        if running is None or not running.is_running():
            pytest.fail(f"LLMSERVICE_CLUSTER_DIR={reuse}: no running cluster there", pytrace=False)
        yield running
        return
    failed_before = request.session.testsfailed
    with LocalCluster() as cluster:
        yield cluster
    if request.session.testsfailed == failed_before:
        cluster.remove_workdir()


@pytest.fixture(scope="session")
def proxy_url(ground: LocalCluster) -> Iterator[str]:
    """`kubectl proxy` on a free local port: how a user reaches a Service from their laptop."""
    proc = subprocess.Popen(
        [str(ground.bin_dir / "kubectl"), "--kubeconfig", str(ground.kubeconfig),
         "proxy", "--port=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"kubectl proxy did not start: {line!r}")
    try:
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Ground:
    """The LLMService under test (created by the first scenario) and its surroundings."""

    cluster: LocalCluster
    world: World
    manifest: dict[str, Any]
    proxy_url: str
    runner: RayPodRunner
    operator: OperatorProcess
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.manifest["spec"]["model"]["servedModelName"])

    @property
    def base_url(self) -> str:
        ns, name = self.world.namespace, self.world.name
        return f"{self.proxy_url}/api/v1/namespaces/{ns}/services/{name}-serve-svc:serve/proxy/v1"

    def create(self) -> None:
        self.world.custom.create_namespaced_custom_object(
            *LLMSVC[:2], self.world.namespace, LLMSVC[2], self.manifest
        )

    def ensure_created(self, timeout: float) -> None:
        try:
            self.world.svc()
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            self.create()
        wait_for("the LLMService settled", self.world.settled, timeout)

    def chat(self) -> str:
        from openai import OpenAI

        with OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=120) as api:
            resp = api.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "Hello! Who are you?"}],
                max_tokens=8,
                extra_body={"min_tokens": 2},
            )
        return str(resp.choices[0].message.content)

    def serve_app_loaded_from(self) -> set[str]:
        """Where the router replicas imported serve_app from, as their logs say (serve_app's
        router logs it at start); NotYet until one has."""
        found = set()
        for node in self.runner.nodes():
            for log in node.temp_dir.glob("session_*/logs/serve/replica_*OpenAIRouter*.log"):
                for line in log.read_text(errors="replace").splitlines():
                    if "serve_app loaded from " in line:
                        found.add(line.split("serve_app loaded from ", 1)[1].strip())
        if not found:
            raise NotYet("no router replica log names where serve_app came from yet")
        return found

    def record(self, scenario: str, **row: Any) -> None:
        entry = {"scenario": scenario, **row}
        self.rows.append(entry)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            f.write(json.dumps(entry) + "\n")


@pytest.fixture(scope="module")
def ground_world(
    ground: LocalCluster, proxy_url: str, request: pytest.FixtureRequest, tmp_path_factory: Any
) -> Iterator[Ground]:
    core = client.CoreV1Api(ground.api_client)
    namespace = f"e2e-{secrets.token_hex(3)}"
    core.create_namespace(body=client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for(
        f"ServiceAccount {namespace}/default",
        lambda: core.read_namespaced_service_account("default", namespace),
        30,
    )
    # A test module may serve another LLMService than tiny.yaml: its MANIFEST.
    manifest = copy.deepcopy(getattr(request.module, "MANIFEST", None)) or yaml.safe_load(
        EXAMPLE.read_text()
    )
    manifest["metadata"]["namespace"] = namespace
    name = manifest["metadata"]["name"]
    runner = RayPodRunner(
        ground.kubeconfig,
        namespace,
        f"llmservice.dev/name={name}",
        [Mount(MODEL_DIR.resolve(), manifest["spec"]["model"]["source"])],
        log_dir=tmp_path_factory.mktemp("raypods"),
    )
    failed_before = request.session.testsfailed
    with running_operator(ground, request, "operator-e2e", metrics=True) as operator, runner:
        try:
            yield Ground(
                ground, World(ground.api_client, namespace, name), manifest, proxy_url,
                runner, operator,
            )  # fmt: skip
        finally:
            if request.session.testsfailed > failed_before:
                dump = ground.log_dir / "dumps" / f"e2e-{namespace}.yaml"
                write_namespace_dump(ground.api_client, namespace, dump)
                print(f"\n===== Ray pod nodes (tails) =====\n{runner.log_tails(lines=40)}")
                print(f"namespace dump: {dump}")
            # Pods go with the namespace; the runner stops their Ray nodes on the way out.
            core.delete_namespace(namespace)
            deadline = time.monotonic() + 60
            while runner.nodes() and time.monotonic() < deadline:
                time.sleep(1)
