"""docs/grafana-dashboard.json and examples/keda-scaledobject.yaml query metrics that exist.

The metric names and labels of our own services are taken from what their /metrics really
serves (the gateway's and the reranker's registries, rendered after one request); TEI's and
kube-state-metrics' are the documented names below. A query that names anything else (a renamed
metric, a dropped label) fails here instead of drawing an empty panel or never scaling.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from gateway.registry import ModelInfo, ModelKey, Registry
from reranker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
KEDA = ROOT / "examples" / "keda-scaledobject.yaml"
CRD = ROOT / "charts" / "embedding-images" / "crds" / "modelservices.yaml"

# TEI 1.9.3 (the pinned release, files/variants.yaml): router/src and core/src register these with
# metrics::gauge!/histogram! and serve them at /metrics on the HTTP port; histograms whose name
# ends in "duration" get buckets (router/src/prometheus.rs), so they render _bucket/_sum/_count.
# Its counters are left out: metrics-exporter-prometheus renders them without _total.
TEI_METRICS: dict[str, set[str]] = {
    "te_queue_size": set(),
    **{f"te_request_duration{suffix}": {"le"} if suffix == "_bucket" else set()
       for suffix in ("_bucket", "_sum", "_count")},
}
# kube-state-metrics (stable metrics of the Deployment collector); the operator names the
# Deployment after its ModelService.
KSM_METRICS: dict[str, set[str]] = {
    name: {"namespace", "deployment"}
    for name in ("kube_deployment_spec_replicas", "kube_deployment_status_replicas",
                 "kube_deployment_status_replicas_available")
}
# Target labels Prometheus gives every series of a model pod: the Prometheus Operator's, less
# `endpoint` (dropped), plus `modelservice` (the chart's PodMonitor; tests/chart/test_monitoring.py).
MODEL_POD_TARGET = {"job", "instance", "namespace", "pod", "container", "modelservice"}
GATEWAY_TARGET = {"job", "instance", "namespace", "service", "pod", "container", "endpoint"}

# PromQL words that are neither metrics nor labels.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
            "offset", "bool", "le"}


def _exposed(body: bytes, target: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, set(target)).update(sample.labels)
    return found


def known_metrics() -> dict[str, set[str]]:
    """Every series name a query may use -> the labels it carries in Prometheus."""
    registry = Registry("models")
    registry.upsert_model(ModelInfo(ModelKey("models", "rr"), "rerank", "reranker", "Qwen/Qwen3-Reranker-0.6B", 1))
    gateway = GatewayMetrics(registry)
    gateway.observe("models/rr", "/v1/rerank", 200, 0.1)
    reranker = Metrics()
    reranker.observe_request("/v1/rerank", 200, 0.1)
    known = _exposed(gateway.render(), GATEWAY_TARGET) | _exposed(reranker.render(), MODEL_POD_TARGET)
    known |= {name: labels | MODEL_POD_TARGET for name, labels in TEI_METRICS.items()}
    known |= {name: labels | {"job", "instance"} for name, labels in KSM_METRICS.items()}
    return known


KNOWN = known_metrics()

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


class Query:
    """The metrics a PromQL expression reads, and the labels it matches or groups on."""

    def __init__(self, expr: str):
        self.expr = expr
        self.metrics: set[str] = set()
        self.matched: dict[str, set[str]] = {}  # metric -> labels its selector matches on
        for name, body in SELECTOR.findall(expr):
            matchers = MATCHER.findall(body)
            names = {name} if name else set()
            for label, op, value in matchers:
                if label == "__name__":
                    assert op in ("=", "=~"), expr
                    names |= set(value.split("|"))
            for n in names:
                self.matched.setdefault(n, set()).update(label for label, _, _ in matchers if label != "__name__")
            self.metrics |= names
        # Bare metric names (no braces): whatever identifier is left once selectors, strings,
        # ranges, groupings and function calls are taken out.
        rest = GROUPING.sub(" ", re.sub(r'"[^"]*"', " ", SELECTOR.sub(" ", expr)))
        rest = re.sub(r"\[[^\]]*\]", " ", rest)
        for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rest):
            called = rest[match.end():].lstrip().startswith("(")
            if not called and match.group() not in KEYWORDS:
                self.metrics.add(match.group())
        self.grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            [(inner, label)] = re.findall(r"^label_values\((.*),\s*([a-zA-Z_]+)\)$", query)
            exprs.append(f"group by ({label}) ({inner})")
    return exprs


def grafana_free(expr: str) -> str:
    """The expression as Prometheus gets it, with Grafana's variables filled in."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", "models").replace("$modelservice", "(a|b)")


def check_query(expr: str) -> None:
    q = Query(grafana_free(expr))
    assert q.metrics, f"no metric found in {expr!r}"
    unknown = q.metrics - KNOWN.keys()
    assert not unknown, f"{sorted(unknown)} in {expr!r}: no such metric in gateway/metrics.py, reranker/metrics.py, TEI 1.9 or kube-state-metrics"
    for metric, labels in q.matched.items():
        missing = labels - KNOWN[metric]
        assert not missing, f"{metric} has no label {sorted(missing)} (in {expr!r})"
    available = set().union(*(KNOWN[m] for m in q.metrics)) | {"le"}
    assert q.grouped <= available, f"grouping on {sorted(q.grouped - available)}, which none of {sorted(q.metrics)} has: {expr!r}"


# --- the checker itself -------------------------------------------------------------------------

@pytest.mark.parametrize("expr,problem", [
    ('sum(gateway_requests_in_flight{model="a"})', None),
    ('sum(gateway_requests_inflight{model="a"})', "gateway_requests_inflight"),
    ('sum(gateway_requests_in_flight{modell="a"})', "no label ['modell']"),
    ("histogram_quantile(0.9, sum by (le) (rate(reranker_request_duration_seconds_bucket[1m])))", None),
    ("histogram_quantile(0.9, sum by (le) (rate(reranker_request_duration_bucket[1m])))", "reranker_request_duration_bucket"),
    ('sum by (route) (te_queue_size{namespace="x"})', "grouping on ['route']"),
    ('{__name__=~"te_queue_size|te_queue_length"}', "te_queue_length"),
    ("reranker_queue_depth + reranker_queue_lenght", "reranker_queue_lenght"),
])
def test_checker_finds_unknown_metrics_and_labels(expr, problem):
    if problem is None:
        check_query(expr)
    else:
        with pytest.raises(AssertionError, match=re.escape(problem)):
            check_query(expr)


# --- the dashboard ----------------------------------------------------------------------------

def test_dashboard_queries_name_only_metrics_and_labels_that_exist():
    exprs = dashboard_queries()
    assert len(exprs) >= 10
    for expr in exprs:
        check_query(expr)


def test_dashboard_shows_demand_replicas_latency_and_queues_per_model():
    used = set().union(*(Query(grafana_free(e)).metrics for e in dashboard_queries()))
    for metric in ("gateway_requests_in_flight", "gateway_requests_held",      # demand
                   "kube_deployment_spec_replicas", "kube_deployment_status_replicas_available",
                   "gateway_ready_endpoints",                                   # replicas
                   "gateway_request_duration_seconds_bucket",
                   "reranker_request_duration_seconds_bucket", "te_request_duration_bucket",  # latency
                   "reranker_queue_depth", "te_queue_size"):                    # queues
        assert metric in used, f"the dashboard has no panel on {metric}"
    dashboard = json.loads(DASHBOARD.read_text())
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ["Demand", "Replicas", "Latency", "Queues"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "modelservice"} <= variables


def test_dashboard_panels_use_the_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# --- the KEDA example -------------------------------------------------------------------------

def test_keda_example_scales_the_modelservice_through_its_scale_subresource():
    scaled = yaml.safe_load(KEDA.read_text())
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    ref = scaled["spec"]["scaleTargetRef"]
    crd = yaml.safe_load(CRD.read_text())
    group, version = ref["apiVersion"].split("/")
    assert group == crd["spec"]["group"] and ref["kind"] == crd["spec"]["names"]["kind"]
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"] and "scale" in served["subresources"], "KEDA needs the scale subresource"
    # The ModelService it scales is one of the examples, in the namespace its query names.
    target = yaml.safe_load((ROOT / "examples" / "qwen3-reranker-0.6b-cpu.yaml").read_text())
    assert ref["name"] == target["metadata"]["name"] and target["kind"] == ref["kind"]
    assert "autoscaling" not in target["spec"], "KEDA and the operator's autoscaler would fight"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_keda_example_query_reads_the_gateways_demand_for_that_model():
    scaled = yaml.safe_load(KEDA.read_text())
    [trigger] = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    check_query(query)
    q = Query(query)
    assert q.metrics == {"gateway_requests_in_flight", "gateway_requests_held"}
    models = set(re.findall(r'model="([^"]+)"', query))
    assert models == {f"models/{scaled['spec']['scaleTargetRef']['name']}"}, (
        "the gateway's model label is <namespace>/<ModelService name>")
    assert float(trigger["metadata"]["threshold"]) > 0


# --- the docs page -------------------------------------------------------------------------------

DOC = ROOT / "docs" / "observability.md"
CHART_README = ROOT / "charts" / "embedding-images" / "README.md"


@pytest.mark.parametrize("page", [DOC, CHART_README], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_files(page):
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links {target}, which is missing"


def test_chart_values_the_docs_name_exist():
    values = yaml.safe_load((ROOT / "charts" / "embedding-images" / "values.yaml").read_text())
    named = set(re.findall(r"`((?:metrics|networkPolicy)(?:\.[a-zA-Z]+)+)[`=]", DOC.read_text() + CHART_README.read_text()))
    assert "metrics.podMonitor.enabled" in named
    for key in named:
        node = values
        for part in key.split("."):
            if node == {}:  # a free map such as metrics.labels: its keys are the user's
                break
            assert isinstance(node, dict) and part in node, f"the docs name {key}, which values.yaml does not have"
            node = node[part]
