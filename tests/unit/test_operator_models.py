"""The ModelService's pydantic model and its CRD schema agree, both ways.

The CRD file (charts/embedding-images/files/crd-modelservices.yaml) is generated from
modelservice.models; these tests fail when the committed file is stale, when the generator loses a
field, default or enum, and when the API server (the schema) and the operator (pydantic) would
judge a spec differently.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from modelservice import crd, models
from modelservice.variants import load_table

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "charts" / "embedding-images" / "files" / "crd-modelservices.yaml"


def committed() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def openapi(doc: dict) -> dict:
    (version,) = doc["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_committed_crd_is_the_generated_one():
    assert CRD_FILE.read_text() == crd.render_crd(), (
        "crd-modelservices.yaml is stale: run `python -m modelservice.crd > "
        "charts/embedding-images/files/crd-modelservices.yaml`")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for inner in get_args(arg):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _walk(model: type[BaseModel], schema: dict, path: str, seen: list[str]) -> None:
    props = schema["properties"]
    aliases = {f.alias or name: (name, f) for name, f in model.model_fields.items()}
    assert set(aliases) == set(props), f"{path}: fields {sorted(aliases)} vs schema {sorted(props)}"
    required = {alias for alias, (_, f) in aliases.items() if f.is_required()}
    assert required == set(schema.get("required", [])), f"{path}: required fields differ"
    for alias, (_, field) in aliases.items():
        sub = props[alias]
        where = f"{path}.{alias}"
        seen.append(where)
        if field.default is not None and not field.is_required():
            assert sub.get("default") == field.default, f"{where}: default differs"
        else:
            assert "default" not in sub, f"{where}: schema has a default the model lacks"
        nested = _model_of(field.annotation)
        if nested is not None:
            target = sub["items"] if sub.get("type") == "array" else sub
            _walk(nested, target, where, seen)


def test_every_field_default_and_required_agree_both_ways():
    schema = openapi(committed())
    seen: list[str] = []
    _walk(models.ModelServiceSpec, schema["properties"]["spec"], "spec", seen)
    _walk(models.ModelServiceStatus, schema["properties"]["status"], "status", seen)
    assert len(seen) > 60


def test_enums_match_the_model_and_the_variant_table():
    spec = openapi(committed())["properties"]["spec"]["properties"]
    assert spec["task"]["enum"] == ["embed", "rerank"]
    assert spec["engine"]["enum"] == ["auto", "tei", "reranker"]
    # accelerator values come from files/variants.yaml, so a new table row is a new enum value
    assert spec["accelerator"]["enum"] == ["auto", *load_table().names]
    assert spec["engineArgs"]["properties"]["pooling"]["enum"] == ["cls", "mean", "splade", "last-token"]


def test_crd_is_structural_and_never_preserves_unknown_fields_on_spec():
    doc = committed()
    schema = openapi(doc)
    spec = schema["properties"]["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in spec

    def visit(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                # only the three affinity terms are passed through
                assert path.startswith("spec.affinity."), path
            if "properties" in node or "items" in node or "additionalProperties" in node:
                assert "type" in node, f"{path}: no type (not structural)"
            for key in ("$ref", "allOf", "oneOf", "not", "nullable"):
                assert key not in node, f"{path}: {key}"
            for key, value in node.items():
                if key == "properties":
                    for name, sub in value.items():
                        visit(sub, f"{path}.{name}" if path else name)
                elif key in ("items", "additionalProperties"):
                    visit(value, path)
    visit(spec, "spec")


def test_crd_names_subresources_and_columns():
    doc = committed()
    assert doc["metadata"]["name"] == "modelservices.serving.embedding-images.io"
    assert doc["spec"]["scope"] == "Namespaced"
    assert doc["spec"]["names"]["shortNames"] == ["msvc"]
    (version,) = doc["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}
    assert "status" in version["subresources"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Task"] == ".spec.task" and columns["Model"] == ".spec.model"
    assert columns["Variant"] == ".status.variant" and columns["Ready"] == ".status.ready"
    assert columns["Endpoint"] == ".status.endpoint" and columns["Age"] == ".metadata.creationTimestamp"
    # every column points at a field the schema has
    schema = openapi(doc)
    for path in columns.values():
        if path.startswith(".metadata"):
            continue
        node = schema
        for part in path.strip(".").split("."):
            node = node["properties"][part]


def test_cel_rules_are_the_ones_pydantic_enforces():
    rules = openapi(committed())["properties"]["spec"]["x-kubernetes-validations"]
    assert rules == models.SPEC_RULES
    for rule in rules:
        assert rule["fieldPath"].lstrip(".").split(".")[0] in models.ModelServiceSpec.model_json_schema(by_alias=True)["properties"]


# Spec dicts, valid or not, to judge with both validators.
values = {
    "task": st.sampled_from(["embed", "rerank", "classify", 3]),
    "model": st.sampled_from(["BAAI/bge-small-en-v1.5", "Qwen/Qwen3-Reranker-0.6B", ""]),
    "engine": st.sampled_from(["auto", "tei", "reranker", "vllm"]),
    "replicas": st.integers(-2, 5) | st.just("2"),
    "accelerator": st.sampled_from([*models.ACCELERATORS, "volta", "gpu"]),
    "gpu": st.fixed_dictionaries({}, optional={"count": st.integers(-1, 3),
                                               "product": st.sampled_from(["NVIDIA-L4", ""])}),
    "fallbackToCPU": st.booleans(),
    "port": st.integers(0, 70000),
    "resources": st.fixed_dictionaries({}, optional={
        "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]),
                                  st.sampled_from(["500m", "2Gi", 2, "lots"]), max_size=2)}),
    "nodeSelector": st.dictionaries(st.sampled_from(["pool", "zone"]), st.sampled_from(["a", "b"]), max_size=2),
    "tolerations": st.lists(st.fixed_dictionaries({"key": st.just("k")}, optional={
        "operator": st.sampled_from(["Exists", "Equal", "Maybe"])}), max_size=2),
    "cache": st.fixed_dictionaries({}, optional={"sizeLimit": st.sampled_from(["10Gi", "ten"]),
                                                 "existingClaim": st.sampled_from(["models", "Bad_Name"])}),
    "engineArgs": st.fixed_dictionaries({}, optional={
        "maxBatchTokens": st.integers(0, 4), "pooling": st.sampled_from(["mean", "max"]),
        "defaultPrompt": st.just("q: "), "defaultPromptName": st.just("query")}),
    "hfTokenSecretRef": st.fixed_dictionaries({"name": st.sampled_from(["hf", "HF"])}),
}
specs = st.fixed_dictionaries({}, optional=values)

CEL_MESSAGES = {r["message"] for r in models.SPEC_RULES} | {
    "defaultPrompt and defaultPromptName are exclusive (TEI accepts one of them)",
    "set either sizeLimit (emptyDir) or existingClaim (PersistentVolumeClaim), not both"}


SPEC_VALIDATOR = jsonschema.Draft7Validator(openapi(committed())["properties"]["spec"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs)
def test_schema_and_pydantic_judge_specs_alike(spec):
    schema_ok = SPEC_VALIDATOR.is_valid(spec)
    try:
        models.parse_spec(spec)
        pydantic_ok, errors = True, []
    except ValidationError as exc:
        pydantic_ok, errors = False, exc.errors()
    if pydantic_ok:
        assert schema_ok, f"the operator accepts what the API server would refuse: {spec}"
    elif schema_ok:
        # only the CEL rules (which jsonschema cannot run) may refuse what the schema lets through
        messages = {e["msg"].removeprefix("Value error, ") for e in errors}
        assert messages <= CEL_MESSAGES, f"{spec}: {messages}"


def test_defaults_fill_a_minimal_spec():
    spec = models.parse_spec({"task": "embed", "model": "BAAI/bge-small-en-v1.5"})
    assert (spec.engine, spec.replicas, spec.accelerator, spec.port, spec.fallback_to_cpu) == (
        "auto", 1, "auto", 8080, False)


@pytest.mark.parametrize("spec, field", [
    ({"task": "classify", "model": "m"}, "task"),
    ({"task": "embed", "model": "m", "replicas": -1}, "replicas"),
    ({"task": "embed", "model": "m", "accelerator": "volta"}, "accelerator"),
])
def test_invalid_fields_are_named(spec, field):
    with pytest.raises(ValidationError) as info:
        models.parse_spec(spec)
    assert field in str(info.value)


def test_cpu_with_gpu_count_is_refused():
    with pytest.raises(ValidationError, match="accelerator cpu takes no GPUs"):
        models.parse_spec({"task": "embed", "model": "m", "accelerator": "cpu", "gpu": {"count": 1}})
