"""Fixtures for the cluster tests: one local control plane per session, a namespace per test.

Set LLMSERVICE_CLUSTER_DIR to the --dir of a cluster started with
`python -m tests.cluster.harness up` to run the tests against it (fast
edit-test loops); it is then left running.

When a test that used the `namespace` fixture fails, the namespace's LLMServices, RayServices,
RayClusters, Pods, Services and Events are dumped as YAML (tests/cluster/dump.py): in full to
<cluster log dir>/dumps/<test>.yaml, and shortened into the test's failure report ("cluster
dump" section). The dump is taken right after the failing phase, before any teardown.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.dump import dump_file_name, write_namespace_dump
from tests.cluster.harness import ClusterError, LocalCluster, wait_for
from tests.cluster.operator_process import OperatorProcess, running_operator

_FAILED = pytest.StashKey[bool]()
_CLUSTER = pytest.StashKey[LocalCluster]()
_LOG_TAILS = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember any failure (setup, call or teardown) so the session prints the
    # component logs and keeps the cluster's work dir for a post-mortem.
    report = yield
    if report.failed:
        item.config.stash[_FAILED] = True
        if report.when in ("setup", "call"):
            _dump_namespace(item, report)
    return report


def _dump_namespace(item: pytest.Item, report: pytest.TestReport) -> None:
    """The failed test's namespace as YAML: a file in the cluster's log dir and a report section.

    Runs in makereport, so before teardown: the namespace and everything in it still exist.
    """
    namespace = getattr(item, "funcargs", {}).get("namespace")
    cluster = item.config.stash.get(_CLUSTER, None)
    if not isinstance(namespace, str) or cluster is None or cluster.ports is None:
        return
    path = cluster.log_dir / "dumps" / dump_file_name(item.nodeid)
    report.sections.append(
        ("cluster dump", write_namespace_dump(cluster.api_client, namespace, path))
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    cluster = config.stash.get(_CLUSTER, None)
    if cluster is None or not config.stash.get(_FAILED, False):
        return
    # Taken before the cluster stopped: shutdown chatter would bury the cause.
    tails = config.stash.get(_LOG_TAILS, None) or cluster.log_tails(lines=40)
    terminalreporter.write_sep("=", "local cluster logs (tails)")
    terminalreporter.write_line(tails)
    terminalreporter.write_line(f"full logs: {cluster.log_dir}")
    dumps = cluster.log_dir / "dumps"
    if dumps.is_dir():
        terminalreporter.write_line(f"failed tests' namespaces (YAML): {dumps}")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """The running local control plane: .kubeconfig (path), .api_client (admin)."""
    config = request.config
    reuse = os.environ.get("LLMSERVICE_CLUSTER_DIR")
    if reuse:
        running = LocalCluster.from_state(Path(reuse))
        if running is None or not running.is_running():
            pytest.fail(f"LLMSERVICE_CLUSTER_DIR={reuse}: no running cluster there", pytrace=False)
        config.stash[_CLUSTER] = running
        yield running
        return

    local = LocalCluster()
    config.stash[_CLUSTER] = local
    try:
        local.start()
    except ClusterError as e:
        config.stash[_FAILED] = True
        pytest.fail(str(e), pytrace=False)
    print(f"\nlocal cluster up in {local.startup_seconds:.1f}s ({local.workdir})")
    try:
        yield local
    finally:
        failed = config.stash.get(_FAILED, False)
        if failed:
            config.stash[_LOG_TAILS] = local.log_tails(lines=40)
        local.stop()
        if not failed:
            local.remove_workdir()


@pytest.fixture
def core(cluster: LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client)


@pytest.fixture
def namespace(
    cluster: LocalCluster, core: client.CoreV1Api, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh namespace, named after the test, deleted (without waiting) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    core.create_namespace(body=client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are rejected until the controller-manager has made the namespace's
    # `default` ServiceAccount.
    wait_for(
        f"ServiceAccount {name}/default",
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture
def api(cluster: LocalCluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client)


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[OperatorProcess]:
    """One operator process per test module (its log named after the module), with metrics."""
    name = "operator-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    with running_operator(cluster, request, name, metrics=True) as proc:
        yield proc
