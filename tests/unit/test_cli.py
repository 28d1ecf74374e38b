"""The offline CLI: exit codes and one `error: <path>: <reason>` line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmservice_operator.cli import main
from llmservice_operator.render.code import packaged
from tests.unit.examples import EXAMPLES

TINY = str(EXAMPLES / "tiny.yaml")


def test_render_prints_rayservice_networkpolicy_and_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render", "-f", TINY]) == 0
    objs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("RayService", "tiny"),
        ("NetworkPolicy", "tiny"),
        ("ConfigMap", packaged().configmap_name),
    ]


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", TINY]) == 0
    assert "ok: default/tiny" in capsys.readouterr().out


BAD = """\
apiVersion: llmservice.dev/v1alpha1
kind: LLMService
metadata: {name: a}
spec:
  model: {source: org/m}
  replicas: 1
  autoscaling: {maxReplicas: 2}
---
apiVersion: llmservice.dev/v1alpha1
kind: LLMService
metadata: {name: b}
spec:
  model: {source: org/m, colour: red}
"""


def test_validate_reports_every_problem_with_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    assert main(["validate", "-f", str(f)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("error: spec.replicas: ") and "document 1" in line for line in lines)
    assert any(line.startswith("error: spec.model.colour: unknown field") for line in lines)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: [", "not valid YAML"),
        ("kind: LLMService\nkind: LLMService\n", "duplicate key"),
        ("", "no LLMService documents"),
    ],
)
def test_bad_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(text)
    assert main(["validate", "-f", str(f)]) == 2
    assert needle in capsys.readouterr().err


def test_diff_shows_a_replica_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rendered = tmp_path / "rendered.yaml"
    assert main(["render", "-f", TINY]) == 0
    rendered.write_text(capsys.readouterr().out)
    assert main(["diff", "-f", TINY, "--against", str(rendered)]) == 0
    assert capsys.readouterr().out == ""

    changed = tmp_path / "tiny.yaml"
    changed.write_text(Path(TINY).read_text().replace("replicas: 1", "replicas: 3"))
    assert main(["diff", "-f", str(changed), "--against", str(rendered)]) == 1
    out = capsys.readouterr().out
    assert "-      replicas: 1" in out and "+      replicas: 3" in out


def test_operator_settings_without_a_flag_keep_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmservice_operator.cli import _parser, operator_config

    monkeypatch.setenv("LLMSERVICE_MAX_WORKERS", "16")
    monkeypatch.setenv("LLMSERVICE_WATCH_SERVER_TIMEOUT", "120")
    config = operator_config(_parser().parse_args(["operator", "-n", "team-a", "--standalone"]))
    assert (config.max_workers, config.watch_server_timeout) == (16, 120)
    assert config.namespaces == ["team-a"] and config.standalone


SWEEP = """\
apiVersion: llmservice.dev/v1alpha1
kind: LLMService
metadata: {name: sweep}
spec:
  model: {source: org/m}
  image: "ray:2.60 gpu"
  gpu:
    acceleratorType: L4
    resourceName: cpu
    nodeSelector: {"gpu pool!": "l4", "zone": "zürich"}
    tolerations: [{key: gpu, operator: Exists, value: "yes"}]
"""


def test_validate_refuses_what_only_pod_creation_would_have_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "sweep.yaml"
    f.write_text(SWEEP)
    assert main(["validate", "-f", str(f)]) == 2
    paths = {line.split(": ")[1] for line in capsys.readouterr().err.splitlines()}
    assert paths == {
        "spec.image",
        "spec.gpu.resourceName",
        "spec.gpu.nodeSelector['gpu pool!']",
        "spec.gpu.nodeSelector['zone']",
        "spec.gpu.tolerations[0].value",
    }


def test_validate_warns_about_a_literal_credential_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "cred.yaml"
    f.write_text(
        "apiVersion: llmservice.dev/v1alpha1\nkind: LLMService\nmetadata: {name: c}\n"
        "spec:\n  model: {source: org/m}\n  env: [{name: OPENAI_API_KEY, value: sk-123}]\n"
    )
    assert main(["validate", "-f", str(f)]) == 0
    out = capsys.readouterr()
    assert (
        "warning: default/c: spec.env[0].value: OPENAI_API_KEY looks like a credential" in out.err
    )
    assert "ok: default/c" in out.out
