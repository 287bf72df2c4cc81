"""Helpers for tests of ``dashboards/``: the metric names a Grafana dashboard queries, and a
scrape of a Prometheus text endpoint (a Ray node's ``--metrics-export-port``).
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: Ray's node metrics that the reporter agent records only for GPUs it detects (one series per
#: ``GpuIndex``): a CPU-only node never exports them, so a CPU-only test may skip them.
GPU_ONLY_METRICS = frozenset(
    {
        "ray_node_gpus_available",
        "ray_node_gpus_utilization",
        "ray_node_gram_used",
        "ray_node_gram_available",
    }
)

# PromQL words that may stand where a metric name could: aggregation operators and their
# modifiers, binary/set operators. A name is a metric name when it is none of these (nor
# GRAFANA_VARIABLE_FUNCTIONS), is not called like a function (rate(, sum(, ...), is not a
# label name inside {...} / by (...) / on (...), and is not in a string, number or [range].
PROMQL_KEYWORDS = frozenset(
    {
        # aggregation operators
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
        # modifiers and operators
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
        "and", "or", "unless", "atan2",
        # numbers spelled as words
        "inf", "nan",
    }
)  # fmt: skip
# Grafana's Prometheus template-variable functions.
GRAFANA_VARIABLE_FUNCTIONS = frozenset({"label_names", "label_values", "metrics", "query_result"})
# Keywords after which a parenthesised list holds label names, not expressions.
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<var>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])   # Grafana variables: $x, ${x}, [[x]]
    | (?P<range>\[[^\]]*\])                      # range / subquery selectors: [5m], [1h:1m]
    | (?P<number>(?<![\w:])\d[\w.]*(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<punct>[(){},])
    | (?P<other>\S)
    """,
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(expr)]


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in one PromQL expression (or Grafana variable query such as
    ``label_values(metric{label="x"}, label)``)."""
    tokens = _tokens(expr)
    names: set[str] = set()
    # Stack of what each open bracket is: "{" (label matchers), "labels" (by/on/... list),
    # "call" (function/aggregation arguments), "label_values" (its last argument is a label),
    # "regex" (Grafana's metrics(<regex>)).
    stack: list[str] = []
    arg_index: list[int] = []
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        prev = tokens[i - 1][1] if i > 0 else ""
        if kind == "punct":
            if text == "{":
                stack.append("{")
                arg_index.append(0)
            elif text == "(":
                if prev.lower() in _LABEL_LIST_KEYWORDS:
                    stack.append("labels")
                elif prev in ("label_values", "label_names"):
                    stack.append("label_values")
                elif prev == "metrics":
                    stack.append("regex")  # metrics(<name regex>)
                else:
                    stack.append("call")
                arg_index.append(0)
            elif text in ")}":
                if stack:
                    stack.pop()
                    arg_index.pop()
            elif text == "," and arg_index:
                arg_index[-1] += 1
            continue
        if kind != "ident":
            continue
        context = stack[-1] if stack else None
        if context in ("{", "labels", "regex"):
            continue  # a label name
        if context == "label_values" and (arg_index[-1] >= 1 or nxt == ")"):
            continue  # label_values(metric, label) or label_values(label): the label
        if nxt == "(":
            continue  # a function or aggregation call: rate(, sum(, histogram_quantile(
        if text.lower() in PROMQL_KEYWORDS or text in GRAFANA_VARIABLE_FUNCTIONS:
            continue
        if prev.lower() in _LABEL_LIST_KEYWORDS:
            continue
        names.add(text)
    return names


def _walk_panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (panels nested in rows included)
    and the queries of its template variables."""
    exprs = [
        target["expr"]
        for panel in _walk_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, Mapping):
            query = query.get("query")
        for text in (query, variable.get("definition")):
            if isinstance(text, str) and text:
                exprs.append(text)
    return exprs


def dashboard_metric_names(path: str | Path | Mapping[str, Any]) -> set[str]:
    """Every metric name a dashboard (a JSON file, or its parsed dict) queries."""
    dashboard = path if isinstance(path, Mapping) else json.loads(Path(path).read_text())
    names: set[str] = set()
    for expr in dashboard_exprs(dashboard):
        names |= promql_metric_names(expr)
    return names


def scrape(url: str, timeout: float = 10.0) -> dict[str, list[dict[str, str]]]:
    """Fetch a Prometheus text endpoint and return sample name -> the label dicts of its samples
    (a histogram's ``_bucket``/``_sum``/``_count`` samples come under their own names)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8")
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples
