"""Parity: for the same values, the chart without the operator renders the Deployment and Service
the operator builds from the ModelService the chart renders with it.

Both renders come from one values dict: operator.enabled=true gives the ModelService (the
operator's input), operator.enabled=false gives the chart's own Deployment and Service; the
operator's pure build functions (modelservice.resources) turn the ModelService into theirs.
The fields issue 5 names must agree exactly, so the variant table cannot drift between the Go
templates and Python.
"""
from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.helm

INPUTS = {
    "embedding-cpu": {"embedding": {"accelerator": "cpu"}},
    "embedding-hopper": {"embedding": {"accelerator": "hopper"}},
    "embedding-l4-product": {"embedding": {"accelerator": "auto", "gpu": {"product": "NVIDIA-L4"}}},
    "embedding-t4-product-two-gpus": {"embedding": {"accelerator": "turing", "gpu": {"count": 2, "product": "Tesla-T4"}}},
    "embedding-ampere86-engine-args": {"embedding": {
        "accelerator": "ampere-86", "revision": "main",
        "engineArgs": {"maxBatchTokens": 4096, "maxClientBatchSize": 64, "maxConcurrentRequests": 128,
                       "pooling": "cls", "dtype": "float16", "autoTruncate": True,
                       "maxBatchRequests": 16, "payloadLimit": 4000000, "defaultPromptName": "query",
                       "apiKeySecretRef": {"name": "tei-key"}}}},
    "reranker-cpu": {"reranker": {"accelerator": "cpu"}},
    "reranker-a100": {"reranker": {"accelerator": "ampere-80", "engineArgs": {
        "maxBatchTokens": 8192, "maxLength": 4096, "dtype": "bfloat16", "maxDocuments": 500,
        "instruction": "Given a support ticket, retrieve the runbook that resolves it", "promptCacheTokens": 0,
        "apiKeySecretRef": {"name": "rerank-key", "key": "api-key"}}}},
    "reranker-tei-bge-h100-product": {"reranker": {
        "model": "BAAI/bge-reranker-v2-m3", "accelerator": "auto", "gpu": {"product": "NVIDIA-H100-80GB-HBM3"}}},
    "custom-everything": {
        "embedding": {
            "accelerator": "ada", "port": 9090, "image": "registry.example/tei:custom",
            "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}},
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "env": [{"name": "RUST_LOG", "value": "debug"}],
            "hfTokenSecretRef": {"name": "hf", "key": "token"},
            "cache": {"existingClaim": "model-cache"},
            "runtimeClassName": "nvidia",
        },
        "reranker": {
            "accelerator": "blackwell-120",
            "env": [{"name": "RERANKER_LOG_LEVEL", "value": "debug"}],
            "cache": {"sizeLimit": "20Gi"},
        },
    },
}

# The pod and container fields issue 5 names, compared exactly.
POD_FIELDS = ("nodeSelector", "tolerations", "securityContext", "runtimeClassName", "volumes",
              "terminationGracePeriodSeconds")
CONTAINER_FIELDS = ("image", "command", "args", "env", "ports", "startupProbe", "readinessProbe",
                    "livenessProbe", "resources", "securityContext", "volumeMounts")


def both_modes(render, values: dict):
    with_operator = copy.deepcopy(values)
    with_operator.setdefault("operator", {})["enabled"] = True
    without = copy.deepcopy(values)
    without.setdefault("operator", {})["enabled"] = False
    sets = ["crds.enabled=false"]
    return render(values=with_operator, sets=sets), render(values=without, sets=sets)


def operator_build(ms: dict) -> tuple[dict, dict]:
    """The operator's Deployment and Service for a ModelService body (as the API would hand it)."""
    from modelservice import resources

    return resources.build_children(ms)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_chart_and_operator_render_the_same_workload(render, name):
    values = INPUTS[name]
    with_operator, without = both_modes(render, values)
    modelservices = with_operator.kinds("ModelService")
    assert modelservices
    for ms in modelservices:
        ms_name = ms["metadata"]["name"]
        op_deploy, op_service = operator_build(ms)
        chart_deploy = without.get("Deployment", ms_name)
        chart_service = without.get("Service", ms_name)

        op_pod, chart_pod = op_deploy["spec"]["template"]["spec"], chart_deploy["spec"]["template"]["spec"]
        for field in POD_FIELDS:
            assert chart_pod.get(field) == op_pod.get(field), f"{ms_name}: pod {field} differs"
        (op_c,) = op_pod["containers"]
        (chart_c,) = chart_pod["containers"]
        for field in CONTAINER_FIELDS:
            assert chart_c.get(field) == op_c.get(field), f"{ms_name}: container {field} differs"
        assert chart_deploy["spec"].get("replicas") == op_deploy["spec"].get("replicas")

        assert chart_service["spec"]["ports"] == op_service["spec"]["ports"]
        assert chart_service["spec"].get("type", "ClusterIP") == op_service["spec"].get("type", "ClusterIP")
        # Each Service selects its own pods in both modes.
        assert chart_service["spec"]["selector"].items() <= chart_deploy["spec"]["template"]["metadata"]["labels"].items()
        assert op_service["spec"]["selector"].items() <= op_deploy["spec"]["template"]["metadata"]["labels"].items()


def test_parity_inputs_cover_every_variant_family(render):
    """The inputs above exercise CPU and GPU, TEI and the reranker, product and architecture."""
    images = set()
    for values in INPUTS.values():
        _, without = both_modes(render, values)
        images |= {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in without.kinds("Deployment")}
    assert any(":cpu-" in i for i in images) and any("hopper" in i for i in images)
    assert any("reranker:" in i and i.endswith("-cpu") for i in images)
    assert any("reranker:" in i and i.endswith("-cuda") for i in images)


def test_pdb_and_networkpolicy_select_the_operators_pods(render):
    """With the operator, the chart's PDB and NetworkPolicy must select the pods it creates."""
    values = {"operator": {"enabled": True}, "networkPolicy": {"enabled": True},
              "embedding": {"podDisruptionBudget": {"enabled": True}},
              "reranker": {"podDisruptionBudget": {"enabled": True}}}
    out = render(values=values, sets=["crds.enabled=false"])
    for ms in out.kinds("ModelService"):
        name = ms["metadata"]["name"]
        op_deploy, _ = operator_build(ms)
        pod_labels = op_deploy["spec"]["template"]["metadata"]["labels"]
        for kind, path in (("PodDisruptionBudget", ("selector",)), ("NetworkPolicy", ("podSelector",))):
            selector = out.get(kind, name)["spec"][path[0]]["matchLabels"]
            assert selector.items() <= pod_labels.items(), f"{kind}/{name} selects {selector}, pods carry {pod_labels}"
