"""spec.pod and the operator's pod defaults (--image-pull-secrets, --pod-labels, --pod-annotations):
what reaches the model pods and the ModelCache download Jobs, and how the two merge."""
from __future__ import annotations

import pytest

from modelservice.__main__ import parse_args
from modelservice.api.models import parse_modelcache, parse_modelservice
from modelservice.cache.builders import build_download_job
from modelservice.placement.builders import PodDefaults, build_deployment
from modelservice.placement.plan import build_plan

DEFAULTS = PodDefaults(image_pull_secrets=("regcred", "mirror"), labels={"team": "search", "cost": "a"},
                       annotations={"example.com/owner": "platform", "sidecar.istio.io/inject": "false"})
SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}


def deployment(pod=None, defaults=PodDefaults(), labels=None):
    spec = {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "cpu"}
    if pod is not None:
        spec["pod"] = pod
    ms = parse_modelservice({"metadata": {"name": "m", "namespace": "ns", "labels": labels or {}}, "spec": spec})
    return build_deployment(ms, build_plan(ms.spec), defaults)


def test_without_settings_or_defaults_the_pod_is_as_before():
    pod = deployment()["spec"]["template"]
    assert "annotations" not in pod["metadata"]
    for key in ("imagePullSecrets", "priorityClassName", "serviceAccountName", "topologySpreadConstraints"):
        assert key not in pod["spec"]


def test_every_setting_reaches_the_pods():
    template = deployment({
        "imagePullSecrets": [{"name": "own"}], "labels": {"example.com/tier": "gold"},
        "annotations": {"vault.hashicorp.com/agent-inject": "true"}, "priorityClassName": "serving-high",
        "topologySpreadConstraints": [SPREAD], "serviceAccountName": "bucket-reader"})["spec"]["template"]
    spec = template["spec"]
    assert spec["imagePullSecrets"] == [{"name": "own"}]
    assert spec["priorityClassName"] == "serving-high"
    assert spec["serviceAccountName"] == "bucket-reader"
    # a ServiceAccount for workload identity, still without the API token
    assert spec["automountServiceAccountToken"] is False
    assert template["metadata"]["labels"]["example.com/tier"] == "gold"
    assert template["metadata"]["annotations"] == {"vault.hashicorp.com/agent-inject": "true"}


def test_a_spread_without_label_selector_counts_the_models_own_pods():
    built = deployment({"topologySpreadConstraints": [
        SPREAD, {**SPREAD, "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"x": "y"}}}]})
    own, given = built["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert own == {**SPREAD, "labelSelector": built["spec"]["selector"]}
    assert given["labelSelector"] == {"matchLabels": {"x": "y"}}


def test_the_modelservice_extends_the_operators_defaults():
    template = deployment({"imagePullSecrets": [{"name": "own"}, {"name": "regcred"}],
                           "labels": {"cost": "b"}, "annotations": {"sidecar.istio.io/inject": "true"}},
                          DEFAULTS)["spec"]["template"]
    # lists: the operator's first, then the ModelService's, each name once
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}, {"name": "own"}]
    # maps: the ModelService's keys win
    labels = template["metadata"]["labels"]
    assert labels["team"] == "search" and labels["cost"] == "b"
    assert template["metadata"]["annotations"] == {"example.com/owner": "platform", "sidecar.istio.io/inject": "true"}


def test_defaults_alone_reach_a_modelservice_that_says_nothing():
    template = deployment(None, DEFAULTS)["spec"]["template"]
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert template["metadata"]["labels"]["team"] == "search"
    assert template["metadata"]["annotations"]["example.com/owner"] == "platform"


def test_pod_labels_never_touch_the_selector_or_the_children():
    built = deployment({"labels": {"example.com/tier": "gold"}}, DEFAULTS, labels={"app.kubernetes.io/instance": "rel"})
    assert built["spec"]["selector"] == {"matchLabels": {"serving.embedding-images.io/modelservice": "m"}}
    pod_labels = built["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["serving.embedding-images.io/modelservice"] == "m"
    assert pod_labels["app.kubernetes.io/managed-by"] == "embedding-images-operator"
    assert pod_labels["app.kubernetes.io/instance"] == "rel"
    # the Deployment's own labels are the ModelService's, not the pods'
    assert "example.com/tier" not in built["metadata"]["labels"] and "team" not in built["metadata"]["labels"]


@pytest.mark.parametrize("label", ["serving.embedding-images.io/modelservice", "app.kubernetes.io/component",
                                   "app.kubernetes.io/managed-by"])
def test_selector_labels_are_refused_in_the_spec_and_on_the_command_line(label):
    with pytest.raises(ValueError, match="pod labels cannot set the labels that select"):
        deployment({"labels": {label: "x"}})
    with pytest.raises(SystemExit):
        parse_args(["--pod-labels", f'{{"{label}": "x"}}'])


def test_a_bad_field_is_named():
    with pytest.raises(ValueError) as refused:
        deployment({"priorityClassName": "Not_A_Name"})
    assert ("spec", "pod", "priorityClassName") in [e["loc"] for e in refused.value.errors()]
    with pytest.raises(ValueError) as refused:
        deployment({"topologySpreadConstraints": [{**SPREAD, "whenUnsatisfiable": "Sometimes"}]})
    assert refused.value.errors()[0]["loc"][:4] == ("spec", "pod", "topologySpreadConstraints", 0)


def test_the_command_line_gives_the_defaults():
    args = parse_args(["--image-pull-secrets", "regcred, mirror", "--pod-labels", '{"team": "search"}',
                       "--pod-annotations", '{"example.com/owner": "platform"}'])
    assert args.image_pull_secrets == ("regcred", "mirror")
    assert args.pod_labels == {"team": "search"}
    assert args.pod_annotations == {"example.com/owner": "platform"}
    assert parse_args([]).image_pull_secrets == () and parse_args([]).pod_labels == {}


def test_the_download_job_pulls_with_the_operators_secrets():
    cache = parse_modelcache({"metadata": {"name": "c", "namespace": "ns"},
                              "spec": {"model": "BAAI/bge-small-en-v1.5", "size": "1Gi"}})
    job = build_download_job(cache, image="op:1", pull_secrets=DEFAULTS.image_pull_secrets)
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


# --- the served model name (TEI --served-model-name, the reranker's RERANKER_SERVED_MODEL_NAME) ---

def _container(task, model, engine_args=None, name="m"):
    spec = {"task": task, "model": model, "accelerator": "cpu"}
    if engine_args:
        spec["engineArgs"] = engine_args
    ms = parse_modelservice({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})
    (container,) = build_deployment(ms, build_plan(ms.spec))["spec"]["template"]["spec"]["containers"]
    return container


def test_tei_answers_with_the_modelservice_name_unless_told_otherwise():
    args = _container("embed", "BAAI/bge-small-en-v1.5", name="search-embed")["args"]
    assert args[args.index("--served-model-name") + 1] == "search-embed"
    args = _container("embed", "BAAI/bge-small-en-v1.5", {"servedModelName": "bge-small"})["args"]
    assert args[args.index("--served-model-name") + 1] == "bge-small"
    assert args.count("--served-model-name") == 1


def test_the_reranker_reports_the_modelservice_name_unless_told_otherwise():
    for engine_args, expected in ((None, "search-rerank"), ({"servedModelName": "qwen"}, "qwen")):
        env = _container("rerank", "Qwen/Qwen3-Reranker-0.6B", engine_args, name="search-rerank")["env"]
        assert {"name": "RERANKER_SERVED_MODEL_NAME", "value": expected} in env

