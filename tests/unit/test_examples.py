"""examples/: every ModelService is one the API server and the operator accept, and the values
file installs the chart without the operator (the KEDA example is checked with the dashboard, in
test_observability.py).

The ModelServices are validated against the CRD's openAPIV3Schema (the schema `kubectl apply`
enforces) and against the operator's own spec model (which also enforces the CRD's CEL rules);
the values file against the chart's values.schema.json and by rendering the chart with it.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "embedding-images"
CRD = CHART / "crds" / "modelservices.yaml"
VALUES_SCHEMA = CHART / "values.schema.json"
TABLE = yaml.safe_load((CHART / "files" / "variants.yaml").read_text())

MODEL_SERVICES = sorted(p for p in EXAMPLES.glob("*.yaml")
                        if yaml.safe_load(p.read_text()).get("kind") == "ModelService")
# Manifests of other APIs (KEDA's ScaledObject): tests/unit/test_observability.py checks them.
OTHER_MANIFESTS = sorted(set(p for p in EXAMPLES.glob("*.yaml") if "kind" in yaml.safe_load(p.read_text()))
                         - set(MODEL_SERVICES))
VALUES_FILES = sorted(set(EXAMPLES.glob("*.yaml")) - set(MODEL_SERVICES) - set(OTHER_MANIFESTS))
# A Service name: the ModelService's name becomes its Service's, so it must be a DNS-1035 label.
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def example(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def strict(node):
    """The schema as `kubectl apply` enforces it: strict field validation (kubectl's default)
    refuses fields the schema does not declare, except under x-kubernetes-preserve-unknown-fields."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    assert CRD.is_file(), f"{CRD.relative_to(ROOT)} is missing: the examples cannot be checked"
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == "serving.embedding-images.io" and crd["spec"]["names"]["kind"] == "ModelService"
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return strict(version["schema"]["openAPIV3Schema"])


def test_the_examples_cover_the_documented_deployments():
    """The catalogue the docs promise: what runs where."""
    found = {(d["spec"]["task"], d["spec"]["model"], d["spec"]["accelerator"], d["spec"].get("gpu", {}).get("product"))
             for d in map(example, MODEL_SERVICES)}
    assert ("embed", "BAAI/bge-small-en-v1.5", "cpu", None) in found
    assert ("embed", "BAAI/bge-m3", "hopper", "NVIDIA-H100-80GB-HBM3") in found
    assert ("rerank", "Qwen/Qwen3-Reranker-0.6B", "cpu", None) in found
    assert any(t == "rerank" and m == "Qwen/Qwen3-Reranker-0.6B" and a != "cpu" for t, m, a, _ in found)
    assert any(t == "rerank" and m == "Qwen/Qwen3-Reranker-4B" and p == "NVIDIA-L4" for t, m, _, p in found)
    assert [p.name for p in VALUES_FILES] == ["values-chart-only.yaml"]
    assert [p.name for p in OTHER_MANIFESTS] == ["keda-scaledobject.yaml"]


@pytest.mark.parametrize("path", MODEL_SERVICES, ids=lambda p: p.name)
def test_model_service_matches_the_crd_schema(path, crd_schema):
    doc = example(path)
    assert doc["apiVersion"] == "serving.embedding-images.io/v1alpha1"
    assert "namespace" not in doc["metadata"], "examples go into the namespace `kubectl apply -n` names"
    jsonschema.validate(doc, crd_schema, cls=jsonschema.Draft7Validator)


def test_crd_schema_check_refuses_a_misspelt_field(crd_schema):
    doc = example(MODEL_SERVICES[0])
    doc["spec"]["acelerator"] = doc["spec"].pop("accelerator")
    with pytest.raises(jsonschema.ValidationError, match="acelerator"):
        jsonschema.validate(doc, crd_schema, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("path", MODEL_SERVICES, ids=lambda p: p.name)
def test_model_service_is_accepted_by_the_operators_spec_model(path):
    """The operator's pydantic model carries the CRD's CEL rules (cpu without GPUs,
    fallbackToCPU only with auto, ...), which a JSON-schema validator cannot evaluate."""
    from modelservice.api.models import parse_spec  # noqa: PLC0415

    parse_spec(example(path)["spec"])


@pytest.mark.parametrize("path", MODEL_SERVICES, ids=lambda p: p.name)
def test_model_service_name_can_name_a_service(path):
    name = example(path)["metadata"]["name"]
    assert DNS_1035.match(name), f"{path.name}: {name!r} is not a valid Service name"


WITH_PRODUCT = [p for p in MODEL_SERVICES if example(p)["spec"].get("gpu", {}).get("product")]


@pytest.mark.parametrize("path", WITH_PRODUCT, ids=lambda p: p.name)
def test_named_gpu_product_belongs_to_the_named_architecture(path):
    """A product of another architecture would pin pods to nodes whose GPUs the image cannot
    use (TEI fails with "Runtime compute cap X is not compatible")."""
    spec = example(path)["spec"]
    product = spec["gpu"]["product"]
    assert product in TABLE["products"], f"{path.name}: {product} is not in the variant table"
    if spec["accelerator"] != "auto":
        [variant] = [v for v in TABLE["variants"] if v["name"] == spec["accelerator"]]
        assert TABLE["products"][product] in variant["computeCapabilities"], (
            f"{path.name}: {product} (compute {TABLE['products'][product]}) is not {variant['name']}")


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_values_file_matches_the_charts_schema(path):
    assert VALUES_SCHEMA.is_file(), f"{VALUES_SCHEMA.relative_to(ROOT)} is missing"
    schema = json.loads(VALUES_SCHEMA.read_text())
    values = example(path)
    assert "draft-07" in schema.get("$schema", "")
    jsonschema.validate(values, schema, cls=jsonschema.Draft7Validator)
    assert values["operator"]["enabled"] is False
    assert values["embedding"]["accelerator"] != "auto" and values["reranker"]["accelerator"] != "auto", (
        "accelerator auto needs the operator")


@pytest.mark.helm
@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_chart_only_install_renders_plain_workloads(path):
    helm = ROOT / ".cache" / "bin" / "helm"
    if not helm.exists():
        subprocess.run([str(ROOT / "tests" / "cluster" / "tools.sh")], check=True, cwd=ROOT)
    out = subprocess.run([str(helm), "template", "models", str(CHART), "-n", "models", "-f", str(path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert "ModelService" not in kinds and "CustomResourceDefinition" not in kinds
    values = example(path)
    for component in ("embedding", "reranker"):
        [deployment] = [d for d in docs if d["kind"] == "Deployment"
                        and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert deployment["spec"]["replicas"] == values[component]["replicas"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["resources"] == values[component]["resources"]
        model_flags = container.get("args", []) + [e.get("value") for e in container["env"]]
        assert values[component]["model"] in model_flags


def gpu_node(product: str, gpus: int = 8) -> dict:
    major, minor = TABLE["products"][product].split(".")
    return {
        "metadata": {"name": product.lower(), "labels": {
            "nvidia.com/gpu.product": product, "nvidia.com/gpu.compute.major": major,
            "nvidia.com/gpu.compute.minor": minor}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": str(gpus)}},
    }


CPU_NODE = {"metadata": {"name": "cpu", "labels": {}}, "spec": {}, "status": {"allocatable": {"cpu": "16"}}}
GPU_CLUSTER = [CPU_NODE, gpu_node("NVIDIA-L4"), gpu_node("NVIDIA-H100-80GB-HBM3")]


def expected_image(engine: str, variant: str) -> str:
    row = next(v for v in TABLE["variants"] if v["name"] == variant)
    if engine == "tei":
        return f"{TABLE['tei']['repository']}:{row['teiTag']}"
    return f"{TABLE['reranker']['repository']}:{row['rerankerTag']}"


@pytest.mark.parametrize("path", MODEL_SERVICES, ids=lambda p: p.name)
def test_operator_plans_each_example_onto_matching_hardware(path):
    """On a cluster with CPU, L4 and H100 nodes the operator runs every example, with the image
    of the architecture its pods are pinned to."""
    from modelservice.placement.builders import build_children  # noqa: PLC0415

    doc = example(path)
    deployment, service = build_children(doc, GPU_CLUSTER)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    spec = doc["spec"]
    engine = "reranker" if "Qwen3-Reranker" in spec["model"] else "tei"
    assert container["ports"][0]["containerPort"] == (8080 if engine == "tei" else 8000)
    assert service["spec"]["ports"][0]["port"] == spec.get("port", 8080)
    selector = pod.get("nodeSelector", {})
    if spec["accelerator"] == "cpu":
        assert container["image"] == expected_image(engine, "cpu")
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})
        return
    # A GPU example: pinned to one architecture, with that architecture's image.
    if "nvidia.com/gpu.product" in selector:
        capability = TABLE["products"][selector["nvidia.com/gpu.product"]]
    else:
        capability = f"{selector['nvidia.com/gpu.compute.major']}.{selector['nvidia.com/gpu.compute.minor']}"
    [variant] = [v["name"] for v in TABLE["variants"] if capability in v["computeCapabilities"]]
    assert container["image"] == expected_image(engine, variant)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == spec["gpu"].get("count", 1)
    if spec["gpu"].get("product"):
        assert selector["nvidia.com/gpu.product"] == spec["gpu"]["product"]


def test_gpu_reranker_example_falls_back_to_cpu_without_gpu_nodes():
    from modelservice.placement.builders import build_children  # noqa: PLC0415

    [doc] = [example(p) for p in MODEL_SERVICES
             if example(p)["spec"].get("fallbackToCPU") and example(p)["spec"]["task"] == "rerank"]
    deployment, _ = build_children(doc, [CPU_NODE])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == expected_image("reranker", "cpu")
