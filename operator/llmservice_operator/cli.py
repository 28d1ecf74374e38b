"""`llmservice`: render, validate and diff LLMServices offline (GitOps pipelines, PR review).

Exit codes: 0 ok; 1 diff found differences; 2 invalid input (one `error:` line per problem).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from llmservice_operator import constants as c

if TYPE_CHECKING:
    from llmservice_operator.settings import OperatorConfig
from llmservice_operator.api.models import LLMService
from llmservice_operator.errors import FieldError, InvalidSpecError
from llmservice_operator.render import container_env, render
from llmservice_operator.validate import parse, warnings
from llmservice_operator.yamlio import dump_all, load_all

EXIT_OK, EXIT_DIFF, EXIT_INVALID = 0, 1, 2


class _InputError(Exception):
    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(errors))


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise _InputError([f"{path}: cannot read: {exc.strerror}"]) from None


def _load_services(path: str) -> list[LLMService]:
    """Parse every document of a file as an LLMService; collect every problem first."""
    try:
        docs = load_all(_read(path))
    except yaml.YAMLError as exc:
        raise _InputError([f"{path}: not valid YAML: {exc}".replace("\n", " ")]) from None
    services: list[LLMService] = []
    problems: list[str] = []
    for i, doc in enumerate(docs):
        where = f" ({path}, document {i + 1})" if len(docs) > 1 else ""
        if not isinstance(doc, dict):
            problems.append(f"<root>: expected a mapping, got {type(doc).__name__}{where}")
            continue
        if doc.get("kind") != c.KIND:
            # GitOps folders mix kinds (a Secret beside its LLMService): say so, don't fail.
            name = (doc.get("metadata") or {}).get("name")
            print(
                f"note: skipped {doc.get('kind')}/{name}: not an {c.KIND}{where}", file=sys.stderr
            )
            continue
        try:
            services.append(parse(doc))
        except InvalidSpecError as exc:
            problems.extend(f"{e}{where}" for e in exc.errors)
    if problems:
        raise _InputError(problems)
    if not services:
        raise _InputError([f"{path}: no {c.KIND} documents found"])
    return services


def _render_all(path: str) -> list[dict[str, Any]]:
    return [obj for svc in _load_services(path) for obj in render(svc)]


def cmd_render(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_all(_render_all(args.file)))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    services = _load_services(args.file)
    for svc in services:
        name = f"{svc.metadata.namespace}/{svc.metadata.name}"
        for warning in warnings(svc.spec):
            print(f"warning: {name}: {warning}", file=sys.stderr)
        print(f"ok: {name}")
    return EXIT_OK


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('namespace', 'default')}/{meta.get('name')}"


def cmd_diff(args: argparse.Namespace) -> int:
    new = {_key(o): o for o in _render_all(args.file)}
    try:
        old_docs = load_all(_read(args.against))
    except yaml.YAMLError as exc:
        raise _InputError([f"{args.against}: not valid YAML: {exc}".replace("\n", " ")]) from None
    old = {_key(o): o for o in old_docs if isinstance(o, dict)}
    changed = False
    for key in sorted(old.keys() | new.keys()):
        before = dump_all([old[key]]).splitlines(keepends=True) if key in old else []
        after = dump_all([new[key]]).splitlines(keepends=True) if key in new else []
        lines = list(difflib.unified_diff(before, after, f"a/{key}", f"b/{key}"))
        if lines:
            changed = True
            sys.stdout.writelines(lines)
    return EXIT_DIFF if changed else EXIT_OK


def operator_config(args: argparse.Namespace) -> OperatorConfig:
    """The flags over the LLMSERVICE_* environment: settings without a flag (max workers,
    watch timeout) keep what the environment says instead of falling back to defaults."""
    from llmservice_operator.settings import OperatorConfig

    return dataclasses.replace(
        OperatorConfig.from_env(),
        namespaces=list(args.namespace or []),
        timer_interval=args.timer_interval,
        metrics_port=args.metrics_port,
        liveness_endpoint=args.liveness or None,
        peering_name=args.peering,
        standalone=args.standalone,
        **({"priority": args.priority} if args.priority else {}),
        **({"serve_api": args.serve_api} if args.serve_api else {}),
    )


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the kopf operator in this process (what the Deployment runs)."""
    import os

    import kopf

    config = operator_config(args)
    # The same config as env vars, for anything that reads it outside kopf's memo.
    os.environ.update(config.to_env())
    import llmservice_operator.reconcile  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        standalone=config.standalone or None,
        peering_name=config.peering_name,
        priority=config.priority,
        liveness_endpoint=config.liveness_endpoint,
        memo=kopf.Memo(config=config),
    )
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    """Serve one LLMService's rendered Serve config on a local Ray until Ctrl-C."""
    services = _load_services(args.file)
    if len(services) != 1:
        raise _InputError([f"{args.file}: `up` serves one LLMService, found {len(services)}"])
    (rayservice,) = [o for o in render(services[0]) if o["kind"] == "RayService"]
    from serve_app.local import main_from_cli  # needs the serving stack: import on use

    return main_from_cli(
        rayservice["spec"]["serveConfigV2"],
        host=args.host,
        port=args.port,
        model_source=args.model_source,
        # What the Ray containers would get (spec.env plus the GPU defaults); values taken
        # from Secrets stay out: here they come from the user's own environment.
        env=container_env(rayservice),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmservice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="print the child objects (RayService first) as YAML")
    p.add_argument("-f", "--file", required=True, help="LLMService YAML file, or - for stdin")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("validate", help="check LLMServices; exit 2 with one line per problem")
    p.add_argument("-f", "--file", required=True, help="LLMService YAML file, or - for stdin")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("diff", help="show what rendering FILE would change against RENDERED")
    p.add_argument("-f", "--file", required=True, help="LLMService YAML file, or - for stdin")
    p.add_argument("--against", required=True, help="previously rendered YAML to compare with")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("operator", help="run the operator (kopf) against the current kubeconfig")
    p.add_argument(
        "-n", "--namespace", action="append", help="watch only this namespace (repeatable)"
    )
    p.add_argument("--timer-interval", type=float, default=60.0, help="drift-check period (s)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port; 0 = off")
    p.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="liveness URL; empty = off"
    )
    p.add_argument("--peering", default="llmservice-operator", help="kopf peering name")
    p.add_argument("--standalone", action="store_true", help="no peering (exactly one replica)")
    p.add_argument(
        "--priority", type=int, default=0, help="kopf peering priority (default: random)"
    )
    p.add_argument(
        "--serve-api",
        choices=["auto", "direct", "proxy"],
        default=None,
        help="read Ray Serve's state from each head's dashboard directly or through the API "
        "server's service proxy (default auto: direct in a pod)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_operator)

    p = sub.add_parser("up", help="serve an LLMService on a local Ray (CPU or local GPUs)")
    p.add_argument("-f", "--file", required=True, help="LLMService YAML file, or - for stdin")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host of the OpenAI API")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")
    p.add_argument(
        "--model-source", default=None, help="serve weights from here instead of spec.model.source"
    )
    p.set_defaults(func=cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except _InputError as exc:
        for line in exc.errors:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_INVALID
    return code


__all__ = ["FieldError", "main"]

if __name__ == "__main__":
    sys.exit(main())
