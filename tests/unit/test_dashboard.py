"""The Grafana dashboard the chart ships: it loads, its structure is what Grafana reads, and its
queries are well formed. (That each metric exists in a real scrape: tests/e2e.)"""

from __future__ import annotations

import re
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tests.support.dashboard import DASHBOARD, load, metric_names, queries


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow")


class GridPos(_Strict):
    h: int = Field(ge=1)
    w: int = Field(ge=1, le=24)
    x: int = Field(ge=0, le=23)
    y: int = Field(ge=0)


class Target(_Strict):
    refId: str = Field(min_length=1)
    expr: str = Field(min_length=1)
    legendFormat: str


class Panel(_Strict):
    id: int
    type: Literal["row", "timeseries"]
    title: str = Field(min_length=1)
    gridPos: GridPos
    targets: list[Target] = []
    description: str = ""


class Variable(_Strict):
    name: str
    type: Literal["datasource", "query"]


class Templating(_Strict):
    list: list[Variable]


class Dashboard(_Strict):
    """The fields Grafana (schemaVersion 39) needs to import a dashboard."""

    uid: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,40}$")
    title: str
    schemaVersion: int = Field(ge=36)
    panels: list[Panel]
    templating: Templating
    time: dict[str, str]


def test_it_loads_and_has_the_shape_grafana_reads() -> None:
    dash = Dashboard.model_validate(load())
    assert len({p.id for p in dash.panels}) == len(dash.panels)
    graphs = [p for p in dash.panels if p.type != "row"]
    assert graphs and all(p.targets and p.description for p in graphs)
    # No two panels overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in dash.panels:
        mine = {(x, y) for x in range(p.gridPos.x, p.gridPos.x + p.gridPos.w)
                for y in range(p.gridPos.y, p.gridPos.y + p.gridPos.h)}  # fmt: skip
        assert p.gridPos.x + p.gridPos.w <= 24 and not (cells & mine), p.title
        cells |= mine


def test_queries_are_balanced_and_use_only_defined_variables() -> None:
    dash = load()
    defined = {v["name"] for v in dash["templating"]["list"]} | {"__rate_interval"}
    for expr in queries(dash):
        for open_, close in ("()", "{}", "[]"):
            assert expr.count(open_) == expr.count(close), expr
        assert set(re.findall(r"\$(\w+)", expr)) <= defined, expr
        assert 'llmservice=~"$llmservice"' in expr or "llmservice_" in expr.split("{")[0], expr


def test_it_covers_what_users_ask_for() -> None:
    names = metric_names(load())
    wanted = {
        "ray_llmservice_router_requests_total",  # requests and errors by version
        "ray_llmservice_router_ttft_seconds_bucket",
        "ray_llmservice_router_itl_seconds_bucket",
        "ray_vllm_kv_cache_usage_perc",
        "ray_serve_deployment_replica_healthy",  # replicas
        "llmservice_reconciles_total",  # the operator
        "llmservice_reconcile_seconds_bucket",
    }
    assert wanted <= names, wanted - names


def test_the_file_is_plain_json() -> None:
    assert yaml.safe_load(DASHBOARD.read_text()) == load()
