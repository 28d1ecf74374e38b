"""Print the e2e scenarios' results (.cache/e2e/results.jsonl) as a Markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(rows: list[dict[str, object]]) -> str:
    out = [
        "| scenario | requests sent | failed | by kind | converge (s) | status seen |",
        "|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        by_kind: dict[str, int] = r.get("failed_by_kind") or {}  # type: ignore[assignment]
        kinds = ", ".join(f"{k} {v}" for k, v in by_kind.items())
        out.append(
            f"| {r['scenario']} | {r.get('sent', '')} | {r.get('failed', '')} | {kinds or '-'} "
            f"| {r.get('converge_s', '')} | {r.get('status_seen', '')} |"
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else ".cache/e2e/results.jsonl")
    if not path.exists():
        print(f"e2e: no results at {path}")
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
