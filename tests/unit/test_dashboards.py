"""``dashboards/orchestrator.json`` queries only metrics that exist: ours from
``orchestrator.telemetry.METRICS``, Ray's as Ray's own generated dashboards spell them."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import threading
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.telemetry import METRICS
from tests.ray_metrics import (
    GPU_ONLY_METRICS,
    dashboard_exprs,
    dashboard_metric_names,
    promql_metric_names,
    scrape,
)

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "orchestrator.json"
OURS = "ray_orchestrator_"
DATASOURCE = "${datasource}"
# The Ray node metrics the "Ray nodes" row must chart.
RAY_NODE_METRICS = {
    "ray_node_cpu_utilization",
    "ray_node_mem_used",
    "ray_node_gpus_utilization",
    "ray_node_gram_used",
    "ray_object_store_memory",
}


@cache
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def charts() -> list[dict]:
    return [p for p in all_panels(dashboard()["panels"]) if p["type"] != "row"]


def variables() -> dict[str, dict]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


@cache
def ray_dashboard_metric_names() -> frozenset[str]:
    """Every metric name Ray's own generated Grafana dashboards query (the panel definitions of
    ``ray.dashboard.modules.metrics.dashboards`` and the variables of their base JSON files)."""
    from ray.dashboard.modules.metrics import dashboards as package
    from ray.dashboard.modules.metrics.dashboards.common import DashboardConfig

    configs: dict[str, DashboardConfig] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, DashboardConfig):
                configs[value.name] = value
    assert {"DEFAULT", "TRAIN"} <= configs.keys(), sorted(configs)
    names: set[str] = set()
    for config in configs.values():
        filters = ",".join(config.standard_global_filters)
        panels = [*config.panels, *(p for row in config.rows for p in row.panels)]
        for panel in panels:
            for target in panel.targets:
                names |= promql_metric_names(target.expr.format(global_filters=filters))
        base = json.loads((Path(package.__path__[0]) / config.base_json_file_name).read_text())
        for variable in base.get("templating", {}).get("list", []):
            if "definition" in variable:
                names |= promql_metric_names(variable["definition"].format(global_filters=""))
    return frozenset(names)


# --- the PromQL name extraction itself -----------------------------------------------------


def test_metric_names_found_in_nested_rows_and_variables_only():
    inline = {
        "panels": [
            {
                "type": "timeseries",
                "targets": [
                    {
                        "expr": 'sum by (instance, job) (rate(http_requests_total{job=~"$job",'
                        ' code!="500"}[5m])) / on (instance) group_left'
                        " sum(up{instance=~'$Instance'}) by (instance)"
                    }
                ],
            },
            {
                "type": "row",
                "collapsed": True,
                "panels": [
                    {
                        "type": "timeseries",
                        "targets": [
                            {
                                "expr": "histogram_quantile(0.99, sum(rate("
                                'latency_seconds_bucket{le!="+Inf"}[$__rate_interval]))'
                                " by (le)) > bool 0.5"
                            },
                            {
                                "expr": 'label_replace(max(mem:used{a="b"} offset 1h), "x",'
                                ' "$1", "instance", "(.*)") or vector(0) * 1e-9'
                            },
                        ],
                    }
                ],
            },
        ],
        "templating": {
            "list": [
                {"type": "datasource", "name": "datasource", "query": "prometheus"},
                {
                    "type": "query",
                    "name": "job",
                    "query": {
                        "query": 'label_values(node_boot_time{region="eu"}, job)',
                        "refId": "A",
                    },
                },
                {"type": "query", "name": "x", "query": "query_result(topk(3, disk_free))"},
            ]
        },
    }
    assert dashboard_metric_names(inline) == {
        "http_requests_total",
        "up",
        "latency_seconds_bucket",
        "mem:used",
        "node_boot_time",
        "disk_free",
    }


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum(rate(a[1m]))", {"a"}),
        ('max by (run_id) (b{run_id=~"$run_id"}) / max by (run_id) (c)', {"b", "c"}),
        ("sum(d) without (le, instance) unless e", {"d", "e"}),
        ("label_values(f, SessionName)", {"f"}),
        ("label_values(SessionName)", set()),
        ('g{name="by", sum="x"} and on() h', {"g", "h"}),
        ('count_values("v", i) > 0', {"i"}),
        ("metrics(ray_node_.*)", set()),
        ("query_result(j)", {"j"}),
        ("k:rate5m offset -5m @ end()", {"k:rate5m"}),
    ],
)
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names


def test_extraction_of_rays_own_dashboards_yields_only_metric_names():
    """Run over ~200 real Ray expressions, the parser returns no label or function names."""
    names = ray_dashboard_metric_names()
    assert len(names) > 100
    assert all(re.fullmatch(r"(ray|autoscaler)_[a-z0-9_]+", name) for name in names), sorted(
        n for n in names if not re.fullmatch(r"(ray|autoscaler)_[a-z0-9_]+", n)
    )


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_basics():
    board = dashboard()
    assert board["title"] == "Embedding fine-tuning"
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and len(board["uid"]) <= 40
    assert board.get("id") is None, "an id would clash on Import; Grafana assigns one"
    assert "__inputs" not in board, "file provisioning takes no __inputs"


def test_panel_ids_unique_and_grid_does_not_overlap():
    panels = all_panels(dashboard()["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:  # expanded rows: everything sits on the top grid
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_chart_has_title_description_and_queries():
    for panel in charts():
        assert panel["title"], panel
        assert len(panel.get("description", "")) > 20, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_everything_queries_through_the_datasource_variable():
    datasource = variables()["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    for panel in charts():
        assert panel["datasource"]["uid"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE, panel["title"]
    for variable in variables().values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == DATASOURCE, variable["name"]
    assert "${" not in json.dumps(dashboard()).replace(DATASOURCE, ""), "only ${datasource}"


def test_run_variables():
    for name in ("experiment", "run_id"):
        variable = variables()[name]
        assert variable["type"] == "query"
        assert variable["multi"] and variable["includeAll"], name
        assert variable["definition"] == variable["query"]["query"]
        assert variable["definition"].startswith("label_values(ray_orchestrator_train_step")
        assert variable["definition"].endswith(f", {name})")


def test_orchestrator_queries_are_filtered_and_legended_by_run():
    for panel in charts():
        for target in panel["targets"]:
            if OURS not in target["expr"]:
                continue
            assert '$run_id"' in target["expr"], panel["title"]
            assert '$experiment"' in target["expr"], panel["title"]
            assert "{{run_id}}" in target["legendFormat"], panel["title"]
            if "ray_orchestrator_eval_metric" in target["expr"]:
                assert "{{metric}}" in target["legendFormat"], panel["title"]


def test_charts_exactly_the_metrics_telemetry_defines():
    queried = {name for name in dashboard_metric_names(DASHBOARD) if name.startswith(OURS)}
    defined = {metric.prometheus_name for metric in METRICS}
    assert queried - defined == set(), "queried but never exported"
    charted = {
        name
        for panel in charts()
        for target in panel["targets"]
        for name in promql_metric_names(target["expr"])
    }
    assert defined - charted == set(), "exported but not charted"


def test_ray_metric_names_are_the_ones_rays_dashboards_use():
    queried = {n for n in dashboard_metric_names(DASHBOARD) if not n.startswith(OURS)}
    assert queried >= RAY_NODE_METRICS
    assert queried - ray_dashboard_metric_names() == set(), "not a metric Ray's dashboards query"


def test_gpu_only_metrics_are_real_ray_metrics():
    assert ray_dashboard_metric_names() >= GPU_ONLY_METRICS
    assert dashboard_metric_names(DASHBOARD) & GPU_ONLY_METRICS


def test_dashboard_exprs_cover_variables():
    exprs = dashboard_exprs(dashboard())
    assert any(e.startswith("label_values(ray_orchestrator_train_step") for e in exprs)


# --- scrape --------------------------------------------------------------------------------

EXPOSITION = """\
# HELP ray_orchestrator_train_loss Training loss
# TYPE ray_orchestrator_train_loss gauge
ray_orchestrator_train_loss{run_id="r1",experiment="quickstart",SessionName="s"} 0.5
ray_orchestrator_train_loss{run_id="r2",experiment="quickstart",SessionName="s"} 0.7
# HELP ray_node_cpu_utilization Total CPU usage on a ray node
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{ip="10.0.0.1",RayNodeType="head"} 12.5
"""


def test_scrape_parses_prometheus_text():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = EXPOSITION.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        samples = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(samples) == ["ray_node_cpu_utilization", "ray_orchestrator_train_loss"]
    assert [s["run_id"] for s in samples["ray_orchestrator_train_loss"]] == ["r1", "r2"]
    assert samples["ray_node_cpu_utilization"] == [{"ip": "10.0.0.1", "RayNodeType": "head"}]
