"""deploy/prometheus/alerts.yml and deploy/grafana/aeyon-dashboard.json: their structure, and that every metric and
label their queries use is one that system/metrics.py declares.

Where ``promtool`` is installed (on PATH, or named by ``$PROMTOOL``), the alerting rules are also checked by
``promtool check rules``, the dashboard's queries are parsed by it, and each alert is run against synthetic series
with ``promtool test rules``; otherwise those tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from system import metrics

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "aeyon-dashboard.json"

METRIC = re.compile(r"\borchestrator_[a-z_]+")
AGGREGATION_BY = re.compile(
    r"\b(?:sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)\s+(?:by|without)\s*"
    r"\(([^)]*)\)\s*\(")
GROUPING = re.compile(r"\b(?:by|without)\s*\(")
VECTOR_MATCHING = re.compile(r"\b(?:on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\b(orchestrator_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*(?:,|$)')
RATE_OF = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*(orchestrator_[a-z_]+)")
LABEL_REF = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
DURATION = re.compile(r"^(?:\d+[smhdwy])+$")
SEVERITIES = {"critical", "warning", "info"}


# -- what system/metrics.py declares ---------------------------------------------------------------------------


def declared_samples() -> dict[str, tuple[str, frozenset[str]]]:
    """Every sample name a declared metric exposes -> (its type, its labels): a Counter ``x`` exposes
    ``x_total``; a Histogram ``x`` exposes ``x_bucket`` (with ``le``), ``x_count`` and ``x_sum``; a Gauge ``x``
    exposes ``x``."""
    samples: dict[str, tuple[str, frozenset[str]]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, prometheus_client.metrics.MetricWrapperBase):
            continue
        name, kind, labels = value._name, value._type, frozenset(value._labelnames)
        if kind == "counter":
            samples[name + "_total"] = (kind, labels)
        elif kind == "histogram":
            samples[name + "_bucket"] = (kind, labels | {"le"})
            samples[name + "_count"] = (kind, labels)
            samples[name + "_sum"] = (kind, labels)
        elif kind == "gauge":
            samples[name] = (kind, labels)
        else:  # a Summary, Info or Enum would need its own rule here
            raise AssertionError(f"{name}: metric type {kind} not handled by this test")
    return samples


SAMPLES = declared_samples()


def test_the_declared_metrics_are_collected() -> None:
    # Guards the collection above: the contract's metrics, under their exposed names, with their labels.
    assert SAMPLES["orchestrator_requests_total"] == ("counter", frozenset({"service_name", "status"}))
    assert SAMPLES["orchestrator_request_duration_seconds_bucket"] == ("histogram",
                                                                      frozenset({"service_name", "le"}))
    assert SAMPLES["orchestrator_circuit_breaker_state"] == ("gauge", frozenset({"service_name"}))
    assert SAMPLES["orchestrator_requests_in_flight"] == ("gauge", frozenset())
    assert len({name.removesuffix("_total") for name in SAMPLES if SAMPLES[name][0] != "histogram"}) >= 18


# -- checking one PromQL expression ----------------------------------------------------------------------------


def closing_paren(text: str, start: int) -> int:
    """The index of the ``)`` matching the ``(`` just before ``start``."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def labels_of(names: list[str]) -> frozenset[str]:
    """The labels every one of these samples has."""
    sets = [SAMPLES[name][1] for name in names]
    return frozenset.intersection(*sets) if sets else frozenset()


def split_labels(text: str) -> set[str]:
    return {label.strip() for label in text.split(",") if label.strip()}


def expression_problems(expr: str) -> list[str]:
    """Why ``expr`` is not built from declared metrics and their labels (empty when it is)."""
    problems = []
    names = METRIC.findall(expr)
    if not names:
        problems.append("uses no orchestrator_ metric")
    for name in names:
        if name not in SAMPLES:
            problems.append(f"{name} is not a sample of any metric declared in system/metrics.py")
    if problems:
        return problems
    for name, matchers in SELECTOR.findall(expr):
        consumed = 0
        for match in MATCHER.finditer(matchers):
            if match.start() != consumed:
                break
            consumed = match.end()
            if match.group(1) not in SAMPLES[name][1]:
                problems.append(f"{name} has no label {match.group(1)!r} (matcher {{{matchers}}})")
        if matchers[consumed:].strip():
            problems.append(f"cannot read the matchers {{{matchers}}} of {name}")
    for match in AGGREGATION_BY.finditer(expr):
        scope = expr[match.end():closing_paren(expr, match.end())]
        inner = METRIC.findall(scope)
        for label in split_labels(match.group(1)) - labels_of(inner):
            problems.append(f"groups by {label!r}, a label not on all of {sorted(set(inner))}")
    if len(GROUPING.findall(expr)) != len(AGGREGATION_BY.findall(expr)):
        problems.append("a by/without clause not in prefix form (`sum by (l) (...)`) cannot be checked")
    for match in VECTOR_MATCHING.finditer(expr):
        for label in split_labels(match.group(1)) - labels_of(names):
            problems.append(f"matches on {label!r}, a label not on all of {sorted(set(names))}")
    for name in RATE_OF.findall(expr):
        if SAMPLES[name][0] == "gauge":
            problems.append(f"rate/increase of the gauge {name}")
    for i in (m.end() for m in re.finditer(r"\bhistogram_quantile\s*\(", expr)):
        argument = expr[i:closing_paren(expr, i)]
        if not all(n.endswith("_bucket") and SAMPLES[n][0] == "histogram" for n in METRIC.findall(argument)):
            problems.append(f"histogram_quantile over something other than histogram buckets: {argument}")
        grouped = [split_labels(m.group(1)) for m in AGGREGATION_BY.finditer(argument)]
        if grouped and "le" not in grouped[0]:
            problems.append(f"histogram_quantile's aggregation drops 'le': {argument}")
    return problems


def output_labels(expr: str) -> frozenset[str]:
    """The labels the expression's result keeps, roughly: its by-clauses' (less ``le``), else its metrics'."""
    grouped = [frozenset(split_labels(m.group(1))) for m in AGGREGATION_BY.finditer(expr)]
    if grouped:
        return frozenset.intersection(*grouped) - {"le"}
    return labels_of(METRIC.findall(expr))


def normalized(expr: str) -> str:
    return re.sub(r"\s+", " ", expr).replace("( ", "(").replace(" )", ")").strip()


def test_the_checker_catches_mistakes() -> None:
    assert expression_problems('sum by (service_name) (rate(orchestrator_requests_total{status="x"}[5m]))') == []
    assert expression_problems("orchestrator_no_such_metric") != []
    assert expression_problems("rate(orchestrator_request_duration_seconds[5m])") != []  # no such sample
    assert expression_problems('orchestrator_requests_total{servce_name="x"}') != []
    assert expression_problems("sum by (handler) (orchestrator_requests_total)") != []
    assert expression_problems("sum(orchestrator_requests_total) by (service_name)") != []
    assert expression_problems("rate(orchestrator_circuit_breaker_state[5m])") != []
    assert expression_problems("histogram_quantile(0.9, sum by (service_name) "
                               "(rate(orchestrator_request_duration_seconds_bucket[5m])))") != []


# -- alerts.yml ------------------------------------------------------------------------------------------------


def load_alerts() -> dict[str, Any]:
    document = yaml.safe_load(ALERTS.read_text())
    assert isinstance(document, dict)
    return document


def alert_rules() -> list[dict[str, Any]]:
    groups = load_alerts()["groups"]
    assert isinstance(groups, list)
    assert len(groups) == 1
    return list(groups[0]["rules"])


def test_alerts_are_one_group_of_complete_rules() -> None:
    (group,) = load_alerts()["groups"]
    assert isinstance(group["name"], str) and group["name"]
    rules = alert_rules()
    assert len(rules) >= 5
    names = [rule.get("alert") for rule in rules]
    assert len(set(names)) == len(names), names
    for rule in rules:
        assert isinstance(rule.get("alert"), str) and rule["alert"], rule
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), rule
        assert isinstance(rule.get("for"), str) and DURATION.match(rule["for"]), rule
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule
        annotations = rule.get("annotations", {})
        assert isinstance(annotations.get("summary"), str) and annotations["summary"].strip(), rule
        assert isinstance(annotations.get("description"), str) and annotations["description"].strip(), rule


def find_rule(*fragments: str) -> dict[str, Any]:
    found = [rule for rule in alert_rules() if all(f in normalized(rule["expr"]) for f in fragments)]
    assert len(found) == 1, f"expected exactly one alert whose expr has all of {fragments}; found {found}"
    return found[0]


def test_the_five_alerts_are_there_by_purpose() -> None:
    error_rate = find_rule('rate(orchestrator_requests_total{status!~"success|degraded"}[5m])',
                           "sum by (service_name) (rate(orchestrator_requests_total[5m]))", "> 0.05")
    breaker = find_rule("orchestrator_circuit_breaker_state == 2")
    unhealthy = find_rule("orchestrator_service_health_status == 0")
    latency = find_rule("histogram_quantile(0.95,",
                        "sum by (service_name, le) (rate(orchestrator_request_duration_seconds_bucket[5m]))", "> 2")
    security = find_rule("sum by (violation_type) (increase(orchestrator_security_violations_total[5m])) > 0")
    for rule, label in [(error_rate, "service_name"), (breaker, "service_name"), (unhealthy, "service_name"),
                        (latency, "service_name"), (security, "violation_type")]:
        assert f"$labels.{label}" in rule["annotations"]["summary"], rule


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_uses_declared_metrics_and_labels(rule: dict[str, Any]) -> None:
    assert expression_problems(rule["expr"]) == []
    kept = output_labels(rule["expr"])
    for text in rule["annotations"].values():
        assert set(LABEL_REF.findall(text)) <= kept, (text, sorted(kept))


# -- the dashboard ---------------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def all_panels(container: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in container.get("panels", []):
        panels.append(panel)
        panels.extend(all_panels(panel))  # a collapsed row keeps its panels inside it
    return panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every query variable."""
    dashboard = load_dashboard()
    queries = [(f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"])
               for panel in all_panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
    return queries


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_data_source() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"] and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    inputs = {i["name"]: i for i in dashboard.get("__inputs", [])}
    source = variables.get("DS_PROMETHEUS") or inputs.get("DS_PROMETHEUS")
    assert source is not None, "needs a DS_PROMETHEUS data-source variable or input"
    assert source["type"] == "datasource" and source.get("query", source.get("pluginId")) == "prometheus"
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 15
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel.get("title")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_the_dashboard_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in all_panels(load_dashboard()):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]


def test_the_dashboard_shows_what_it_should() -> None:
    used = {name for _, expr in dashboard_queries() for name in METRIC.findall(expr)}
    wanted = {
        "orchestrator_requests_total",  # request rate by service and status; error ratio
        "orchestrator_request_duration_seconds_bucket",  # p50/p95/p99 latency
        "orchestrator_requests_in_flight",
        "orchestrator_circuit_breaker_state",
        "orchestrator_service_health_status",
        "orchestrator_guard_queue_depth",
        "orchestrator_guard_in_flight",
        "orchestrator_guard_retries_total",
        "orchestrator_health_checks_total",
        "orchestrator_health_check_duration_seconds_bucket",
        "orchestrator_service_discoveries_total",
        "orchestrator_active_services",
        "orchestrator_events_published_total",
        "orchestrator_events_handled_total",
        "orchestrator_security_violations_total",
        "orchestrator_rate_limit_exceeded_total",
        "orchestrator_actor_restarts_total",
    }
    assert wanted - used == set()
    exprs = [normalized(expr) for _, expr in dashboard_queries()]
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({quantile}, sum by (service_name, le) "
                                "(rate(orchestrator_request_duration_seconds_bucket") for e in exprs), quantile
    assert any("sum by (service_name, status) (rate(orchestrator_requests_total" in e for e in exprs)
    assert any('status!~"success|degraded"' in e and "/" in e for e in exprs)


@pytest.mark.parametrize("where,expr", dashboard_queries(), ids=lambda value: str(value)[:60])
def test_each_dashboard_query_uses_declared_metrics_and_labels(where: str, expr: str) -> None:
    assert expression_problems(expr) == [], where


# -- promtool, where installed ---------------------------------------------------------------------------------


def promtool() -> str:
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not path:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; or set $PROMTOOL)")
    return path


def run_promtool(*args: str) -> None:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_rules() -> None:
    run_promtool("check", "rules", str(ALERTS))


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Each query becomes a recording rule, with Grafana's variables given plain values, so promtool parses it.
    rules = [{"record": f"aeyon:dashboard_query_{i}",
              "expr": expr.replace("$__rate_interval", "5m").replace("$service", ".*")}
             for i, (_, expr) in enumerate(dashboard_queries())
             if not expr.startswith("label_values(")]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path))


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """An input series of a promtool rule test."""
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def test_promtool_fires_each_alert_when_it_should(tmp_path: Path) -> None:
    # The annotations are dropped from a copy of the rules (promtool would compare their rendered text); their
    # templates are checked by `promtool check rules` above.
    document = load_alerts()
    for rule in document["groups"][0]["rules"]:
        rule.pop("annotations", None)
    names = {purpose: find_rule(*fragments)["alert"] for purpose, fragments in {
        "errors": ("orchestrator_requests_total", "> 0.05"),
        "breaker": ("orchestrator_circuit_breaker_state == 2",),
        "unhealthy": ("orchestrator_service_health_status == 0",),
        "latency": ("orchestrator_request_duration_seconds_bucket",),
        "security": ("orchestrator_security_violations_total",),
    }.items()}
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    rules_path = tmp_path / "alerts.yml"
    rules_path.write_text(yaml.safe_dump(document))

    def fired(name: str, **labels: str) -> dict[str, Any]:
        return {"exp_labels": {"severity": severity[name], **labels}}

    requests = "orchestrator_requests_total"
    buckets = "orchestrator_request_duration_seconds_bucket"
    tests = [
        {  # 1 in 7 requests to llm fail (14 %); 1 in 3 to ok are degraded, which is not an error; few to rare fail
            "interval": "1m",
            "input_series": [
                series(requests, "0+60x30", service_name="llm", status="success"),
                series(requests, "0+10x30", service_name="llm", status="upstream_error"),
                series(requests, "0+60x30", service_name="ok", status="success"),
                series(requests, "0+30x30", service_name="ok", status="degraded"),
                series(requests, "0+1000x30", service_name="rare", status="success"),
                series(requests, "0+10x30", service_name="rare", status="upstream_timeout"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": names["errors"], "exp_alerts": []},
                {"eval_time": "20m", "alertname": names["errors"],
                 "exp_alerts": [fired(names["errors"], service_name="llm")]},
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series("orchestrator_circuit_breaker_state", "0 0 2x20", service_name="llm"),
                series("orchestrator_circuit_breaker_state", "1x22", service_name="probing"),
                series("orchestrator_circuit_breaker_state", "0x22", service_name="ok"),
                series("orchestrator_service_health_status", "1 1 0x20", service_name="llm"),
                series("orchestrator_service_health_status", "0.5x22", service_name="slow"),
                series("orchestrator_service_health_status", "1x22", service_name="ok"),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": names["breaker"],
                 "exp_alerts": [fired(names["breaker"], service_name="llm")]},
                {"eval_time": "10m", "alertname": names["unhealthy"],
                 "exp_alerts": [fired(names["unhealthy"], service_name="llm")]},
            ],
        },
        {  # every request to slow takes 2.5-5 s (p95 about 4.9 s); every one to fast under 0.5 s
            "interval": "1m",
            "input_series": [
                series(buckets, "0x30", service_name="slow", le="0.5"),
                series(buckets, "0x30", service_name="slow", le="2.5"),
                series(buckets, "0+10x30", service_name="slow", le="5.0"),
                series(buckets, "0+10x30", service_name="slow", le="+Inf"),
                series(buckets, "0+10x30", service_name="fast", le="0.5"),
                series(buckets, "0+10x30", service_name="fast", le="2.5"),
                series(buckets, "0+10x30", service_name="fast", le="5.0"),
                series(buckets, "0+10x30", service_name="fast", le="+Inf"),
            ],
            "alert_rule_test": [
                {"eval_time": "20m", "alertname": names["latency"],
                 "exp_alerts": [fired(names["latency"], service_name="slow")]},
            ],
        },
        {  # three bad signatures at minute 3, then none
            "interval": "1m",
            "input_series": [
                series("orchestrator_security_violations_total", "0 0 0 3x20", violation_type="bad_signature"),
                series("orchestrator_security_violations_total", "0x23", violation_type="ip_not_allowed"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": names["security"],
                 "exp_alerts": [fired(names["security"], violation_type="bad_signature")]},
                {"eval_time": "20m", "alertname": names["security"], "exp_alerts": []},
            ],
        },
    ]
    test_path = tmp_path / "alerts-test.yml"
    test_path.write_text(yaml.safe_dump({"rule_files": [str(rules_path)], "evaluation_interval": "1m",
                                         "tests": tests}))
    run_promtool("test", "rules", str(test_path))
