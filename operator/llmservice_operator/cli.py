"""`llmservice`: render, validate and diff LLMServices offline (GitOps pipelines, PR review).

Exit codes: 0 ok; 1 diff found differences; 2 invalid input (one `error:` line per problem).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from llmservice_operator import constants as c
from llmservice_operator.api.models import LLMService
from llmservice_operator.errors import FieldError, InvalidSpecError
from llmservice_operator.render import render
from llmservice_operator.validate import parse
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
        print(f"ok: {svc.metadata.namespace}/{svc.metadata.name}")
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
