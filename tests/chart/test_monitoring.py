"""The Prometheus Operator monitors: rendered only when asked, refused clearly where the cluster
does not serve monitoring.coreos.com/v1, and aimed at what really serves /metrics: the
ServiceMonitor at the gateway's Service, the PodMonitor at the pods the operator builds for each
ModelService (or the chart's own Deployments without it), on a port those containers name."""
from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from gateway.registry import ModelInfo, ModelKey, Registry
from modelservice.api.models import MANAGER
from modelservice.placement.builders import SELECTOR_LABEL, build_children
from reranker.metrics import Metrics

pytestmark = pytest.mark.helm

CRDS = ["--api-versions", "monitoring.coreos.com/v1"]
NO_CRD = ["crds.enabled=false"]
PLAIN = ["operator.enabled=false", "crds.enabled=false"]
BOTH = ["metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true"]
MONITOR_KINDS = ("ServiceMonitor", "PodMonitor")


def selects(selector: dict, labels: dict) -> bool:
    """A metav1.LabelSelector, evaluated as the API server does."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"Exists": key in labels, "DoesNotExist": key not in labels,
              "In": labels.get(key) in values, "NotIn": key not in labels or labels[key] not in values}[op]
        if not ok:
            return False
    return True


def in_namespaces(namespace_selector: dict, namespace: str) -> bool:
    return namespace_selector.get("any") is True or namespace in namespace_selector.get("matchNames", [])


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def port_names(deployment: dict) -> set[str]:
    return {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}


def prometheus_label(name: str) -> str:
    """The name Prometheus's Kubernetes discovery gives a pod label: __meta_kubernetes_pod_label_
    and the label name with every character outside [a-zA-Z0-9_] replaced by `_`."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


# --- rendered only when asked, refused where it cannot apply -----------------------------------

@pytest.mark.parametrize("mode", [NO_CRD, PLAIN], ids=["operator", "plain"])
def test_no_monitor_unless_asked_even_where_the_api_exists(render, mode):
    out = render(sets=mode, extra=CRDS)
    assert not any(out.kinds(kind) for kind in MONITOR_KINDS)


@pytest.mark.parametrize("monitor,kind", [("serviceMonitor", "ServiceMonitor"), ("podMonitor", "PodMonitor")])
def test_monitor_asked_without_the_prometheus_operator_fails_saying_what_to_do(render_error, monitor, kind):
    err = render_error(sets=NO_CRD + [f"metrics.{monitor}.enabled=true"])
    assert f"metrics.{monitor}.enabled=true renders a {kind} (monitoring.coreos.com/v1), which this cluster does not serve" in err
    assert "--api-versions monitoring.coreos.com/v1" in err and "metrics.skipCRDCheck=true" in err


def test_skip_crd_check_renders_the_monitors_for_a_renderer_without_the_cluster(render):
    out = render(sets=NO_CRD + BOTH + ["metrics.skipCRDCheck=true"])
    assert out.names("ServiceMonitor") == ["rel-embedding-images-gateway"]
    assert out.names("PodMonitor") == ["rel-embedding-images-modelservices"]


def test_gateway_service_monitor_without_a_gateway_is_refused(render_error):
    err = render_error(sets=PLAIN + ["metrics.serviceMonitor.enabled=true"], extra=CRDS)
    assert "metrics.serviceMonitor.enabled=true scrapes the gateway, which this release does not run" in err


# --- aimed at what serves /metrics ---------------------------------------------------------------

def test_service_monitor_scrapes_the_gateway_service_on_its_named_port(render):
    out = render(sets=NO_CRD + ["metrics.serviceMonitor.enabled=true"], extra=CRDS)
    [sm] = out.kinds("ServiceMonitor")
    spec = sm["spec"]
    [endpoint] = spec["endpoints"]
    assert endpoint["path"] == "/metrics"
    matched = [s["metadata"]["name"] for s in out.kinds("Service") if selects(spec["selector"], s["metadata"]["labels"])
               and in_namespaces(spec["namespaceSelector"], s["metadata"]["namespace"])]
    assert matched == ["rel-embedding-images-gateway"]
    service = out.get("Service", "rel-embedding-images-gateway")
    [svc_port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    # The Service's port leads to the container port the gateway serves /metrics on.
    assert svc_port["targetPort"] in port_names(out.get("Deployment", "rel-embedding-images-gateway"))


@pytest.mark.parametrize("scope,namespaces", [
    ([], ["models"]),
    (["operator.watchNamespaces={models,search}"], ["models", "search"]),
    (["operator.clusterWide=true"], ["models", "anywhere"]),
], ids=["release-namespace", "watch-namespaces", "cluster-wide"])
def test_pod_monitor_selects_the_pods_the_operator_builds_for_every_served_namespace(render, scope, namespaces):
    out = render(sets=NO_CRD + ["metrics.podMonitor.enabled=true"] + scope, extra=CRDS)
    [pm] = out.kinds("PodMonitor")
    spec = pm["spec"]
    [endpoint] = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for namespace in namespaces:
        assert in_namespaces(spec["namespaceSelector"], namespace)
    assert not in_namespaces(spec["namespaceSelector"], "elsewhere") or scope == ["operator.clusterWide=true"]
    # The chart's own ModelServices and one a user applies with kubectl: the operator's pods of each.
    user_ms = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
               "metadata": {"name": "qwen", "namespace": namespaces[-1]},
               "spec": {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "cpu"}}
    for ms in out.kinds("ModelService") + [user_ms]:
        deployment = build_children(ms).deployment
        assert selects(spec["selector"], pod_labels(deployment)), ms["metadata"]["name"]
        assert endpoint["port"] in port_names(deployment)
    # Neither the gateway's nor the operator's own pods.
    for name in ("rel-embedding-images-gateway", "rel-embedding-images-operator"):
        assert not selects(spec["selector"], pod_labels(out.get("Deployment", name)))


def test_pod_monitor_uses_the_operators_labels_and_names_each_series_by_modelservice(render):
    out = render(sets=NO_CRD + ["metrics.podMonitor.enabled=true"], extra=CRDS)
    spec = out.get("PodMonitor", "rel-embedding-images-modelservices")["spec"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == MANAGER
    assert {"key": SELECTOR_LABEL, "operator": "Exists"} in spec["selector"]["matchExpressions"]
    relabel = spec["podMetricsEndpoints"][0]["relabelings"][0]
    assert relabel == {"sourceLabels": [prometheus_label(SELECTOR_LABEL)], "targetLabel": "modelservice"}


def test_chart_only_pod_monitors_select_each_models_own_pods(render):
    out = render(sets=PLAIN + ["metrics.podMonitor.enabled=true", "reranker.name=rr"], extra=CRDS)
    assert out.names("PodMonitor") == ["rel-embedding-images-embedding", "rr"]
    for name in ("rel-embedding-images-embedding", "rr"):
        spec = out.get("PodMonitor", name)["spec"]
        matched = [d["metadata"]["name"] for d in out.kinds("Deployment") if selects(spec["selector"], pod_labels(d))]
        assert matched == [name]
        [endpoint] = spec["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics" and endpoint["port"] in port_names(out.get("Deployment", name))
        assert endpoint["relabelings"][0] == {"targetLabel": "modelservice", "replacement": name}
        assert in_namespaces(spec["namespaceSelector"], "models")


def test_chart_only_pod_monitor_leaves_out_a_disabled_model(render):
    out = render(sets=PLAIN + ["metrics.podMonitor.enabled=true", "embedding.enabled=false"], extra=CRDS)
    assert out.names("PodMonitor") == ["rel-embedding-images-reranker"]


def test_interval_timeout_and_selector_labels_apply_to_every_monitor(render):
    out = render(values={"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                     "interval": "5s", "scrapeTimeout": "4s",
                                     "labels": {"release": "kube-prometheus-stack"}}},
                 sets=NO_CRD, extra=CRDS)
    monitors = out.kinds("ServiceMonitor") + out.kinds("PodMonitor")
    assert len(monitors) == 2
    for m in monitors:
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        [endpoint] = m["spec"].get("endpoints") or m["spec"]["podMetricsEndpoints"]
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("5s", "4s")


def test_default_interval_and_no_timeout(render):
    out = render(sets=NO_CRD + ["metrics.serviceMonitor.enabled=true"], extra=CRDS)
    [endpoint] = out.get("ServiceMonitor", "rel-embedding-images-gateway")["spec"]["endpoints"]
    assert endpoint["interval"] == "15s" and "scrapeTimeout" not in endpoint


@pytest.mark.parametrize("values,named", [
    ({"metrics": {"interval": "15 seconds"}}, "interval"),
    ({"metrics": {"podMonitor": {"enabled": True, "interval": "5s"}}}, "interval"),
    ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
], ids=["not-a-duration", "interval-in-the-wrong-place", "misspelt"])
def test_schema_refuses_bad_metrics_values_naming_them(render_error, values, named):
    assert named in render_error(values=values, sets=NO_CRD, extra=CRDS)


# --- the labels a series ends up with -----------------------------------------------------------

# Target labels the Prometheus Operator gives every target of a monitor (its promcfg.go), before
# the monitor's own relabelings. A scraped label of the same name is renamed exported_<name>
# (honorLabels is off), so a query on it would silently match nothing.
OPERATOR_TARGET_LABELS = {
    "ServiceMonitor": {"job", "instance", "namespace", "service", "pod", "container", "endpoint"},
    "PodMonitor": {"job", "instance", "namespace", "pod", "container", "endpoint"},
}


def exposed_labels(body: bytes) -> set[str]:
    return {label for family in text_string_to_metric_families(body.decode())
            for sample in family.samples for label in sample.labels}


def gateway_labels() -> set[str]:
    registry = Registry("models")
    registry.upsert_model(ModelInfo(ModelKey("models", "rr"), "rerank", "reranker", "Qwen/Qwen3-Reranker-0.6B", 1))
    metrics = GatewayMetrics(registry)
    metrics.observe("models/rr", "/v1/rerank", 200, 0.1)
    return exposed_labels(metrics.render())


def reranker_labels() -> set[str]:
    metrics = Metrics()
    metrics.observe_request("/v1/rerank", 200, 0.1)
    return exposed_labels(metrics.render())


def target_labels(monitor: dict, endpoint: dict) -> set[str]:
    labels = set(OPERATOR_TARGET_LABELS[monitor["kind"]])
    for relabel in endpoint.get("relabelings", []):
        if relabel.get("action") == "labeldrop":
            labels = {label for label in labels if not re.fullmatch(relabel["regex"], label)}
        elif relabel.get("targetLabel"):
            labels.add(relabel["targetLabel"])
    return labels


@pytest.mark.parametrize("mode", [NO_CRD, PLAIN], ids=["operator", "plain"])
def test_model_series_keep_their_own_labels_and_gain_modelservice(render, mode):
    out = render(sets=mode + ["metrics.podMonitor.enabled=true"], extra=CRDS)
    assert "endpoint" in reranker_labels(), "the reranker labels its requests by route"
    for pm in out.kinds("PodMonitor"):
        [endpoint] = pm["spec"]["podMetricsEndpoints"]
        added = target_labels(pm, endpoint)
        assert "modelservice" in added
        assert not added & reranker_labels(), f"{pm['metadata']['name']}: would be renamed exported_*"


def test_gateway_series_keep_their_own_labels(render):
    out = render(sets=NO_CRD + ["metrics.serviceMonitor.enabled=true"], extra=CRDS)
    [sm] = out.kinds("ServiceMonitor")
    [endpoint] = sm["spec"]["endpoints"]
    assert "model" in gateway_labels()
    assert not target_labels(sm, endpoint) & gateway_labels()
