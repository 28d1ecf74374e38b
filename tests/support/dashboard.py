"""The chart's Grafana dashboard, read the way the tests check it: panels, queries, metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "llmservice-operator" / "dashboards" / "llmservice.json"

# A metric selector in our queries always carries a label matcher: name{...}.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets") or []
    ]


def metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Every metric the panels' queries select (variables' queries included)."""
    exprs = queries(dashboard)
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    names = set()
    for expr in exprs:
        names |= set(_SELECTOR.findall(expr))
        names |= set(re.findall(r"label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[,{]", expr))
    return names


# The sample names a declared family has (prometheus_client declares a labelled counter before
# its first increment: `# TYPE x counter` with no `x_total` sample yet).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("_count", "_sum", ""),
}


def names_in_scrape(text: str) -> set[str]:
    """Metric names in a Prometheus text exposition: its samples, and its declared families."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = [*line.split(), ""][:4]
            base = family.removesuffix("_total")
            names |= {base + suffix for suffix in _SUFFIXES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
