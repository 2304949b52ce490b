"""Pod settings in the chart: the operator gets the chart's imagePullSecrets, commonLabels and
commonAnnotations as its defaults for every ModelService, each model's own settings become its
ModelService's spec.pod, and selector labels cannot be set (the chart-only objects and the
operator's are compared whole in test_parity.py)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.helm

VALUES = {
    "imagePullSecrets": [{"name": "regcred"}],
    "commonLabels": {"team": "search"},
    "commonAnnotations": {"example.com/owner": "platform"},
    "embedding": {"podLabels": {"example.com/tier": "gold"}, "imagePullSecrets": [{"name": "own"}],
                  "priorityClassName": "serving-high", "serviceAccountName": "bucket-reader",
                  "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                                 "whenUnsatisfiable": "ScheduleAnyway"}]},
}


def operator_args(rendered):
    from modelservice.__main__ import parse_args

    (operator,) = [d for d in rendered.kinds("Deployment") if d["metadata"]["name"].endswith("-operator")]
    return parse_args(operator["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_chart_values_are_the_operators_defaults(render):
    args = operator_args(render(values=VALUES))
    assert args.image_pull_secrets == ("regcred",)
    assert args.pod_labels == {"team": "search"}
    assert args.pod_annotations == {"example.com/owner": "platform"}


def test_without_them_the_operator_gets_no_defaults(render):
    args = operator_args(render())
    assert args.image_pull_secrets == () and args.pod_labels == {} and args.pod_annotations == {}


def test_each_models_own_settings_are_its_modelservices_spec_pod(render):
    rendered = render(values=VALUES)
    embedding = rendered.get("ModelService", "rel-embedding-images-embedding")
    assert embedding["spec"]["pod"] == {
        "labels": {"example.com/tier": "gold"}, "imagePullSecrets": [{"name": "own"}],
        "priorityClassName": "serving-high", "serviceAccountName": "bucket-reader",
        "topologySpreadConstraints": VALUES["embedding"]["topologySpreadConstraints"]}
    assert "pod" not in rendered.get("ModelService", "rel-embedding-images-reranker")["spec"]


@pytest.mark.parametrize("values, key", [
    ({"commonLabels": {"app.kubernetes.io/name": "x"}}, "commonLabels sets app.kubernetes.io/name"),
    ({"embedding": {"podLabels": {"app.kubernetes.io/component": "x"}}},
     "embedding.podLabels sets app.kubernetes.io/component"),
    ({"operator": {"enabled": False}, "embedding": {"accelerator": "cpu", "podLabels": {"app.kubernetes.io/instance": "x"}},
      "reranker": {"enabled": False}}, "embedding.podLabels sets app.kubernetes.io/instance"),
])
def test_a_selector_label_fails_naming_the_value(render_error, values, key):
    assert key in render_error(values=values)


def test_a_bad_pod_value_fails_naming_it(render_error):
    error = render_error(values={"embedding": {"topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "z",
                                                                              "whenUnsatisfiable": "DoNotSchedule"}]}})
    assert "/embedding/topologySpreadConstraints/0/maxSkew" in error
