"""The ModelService's pydantic model and its CRD schema agree, both ways.

The CRD file (charts/embedding-images/crds/modelservices.yaml) is generated from
modelservice.api.models; these tests fail when the committed file is stale, when the generator loses a
field, default or enum, and when the API server (the schema, its defaults and its CEL rules,
evaluated here with cel-python as the API server would) and the operator (pydantic) would judge a
spec differently.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterator, get_args

import celpy
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from modelservice.api import crd, models
from modelservice.placement.variants import load_table

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "charts" / "embedding-images" / "crds" / "modelservices.yaml"


def committed() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def openapi(doc: dict) -> dict:
    (version,) = doc["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_committed_crd_is_the_generated_one():
    assert CRD_FILE.read_text() == crd.render_crd(), (
        "crds/modelservices.yaml is stale: run `python -m modelservice.api.crd > "
        "charts/embedding-images/crds/modelservices.yaml`")


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


# --- the API server's judgement: schema, then defaults, then the CEL rules -----------------------

ROOT_SCHEMA = openapi(committed())
SPEC_SCHEMA = ROOT_SCHEMA["properties"]["spec"]
SPEC_VALIDATOR = jsonschema.Draft7Validator(SPEC_SCHEMA)
CEL = celpy.Environment()


def cel_rules(schema: dict, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict]]:
    """Each x-kubernetes-validations rule of a structural schema, with the path of the object it
    judges (`self`); "[]" in a path stands for each item of a list."""
    for rule in schema.get("x-kubernetes-validations", ()):
        yield path, rule
    for name, sub in schema.get("properties", {}).items():
        yield from cel_rules(sub, (*path, name))
        if sub.get("type") == "array":
            yield from cel_rules(sub.get("items", {}), (*path, name, "[]"))


def nodes_at(value: Any, path: tuple[str, ...]) -> list[Any]:
    """The objects at a cel_rules path of `value` (none where it is absent)."""
    if not path:
        return [value]
    head, rest = path[0], path[1:]
    if head == "[]":
        return [n for item in (value if isinstance(value, list) else []) for n in nodes_at(item, rest)]
    if isinstance(value, dict) and value.get(head) is not None:
        return nodes_at(value[head], rest)
    return []


SPEC_CEL_RULES = list(cel_rules(SPEC_SCHEMA))


def with_defaults(schema: dict, value: Any) -> Any:
    """`value` with the schema's defaults filled in, as the API server does before it runs CEL."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for name, sub in schema["properties"].items():
        if name in out:
            out[name] = with_defaults(sub, out[name])
        elif "default" in sub:
            out[name] = with_defaults(sub, sub["default"])
    return out


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return CEL.program(CEL.compile(rule))


def evaluate(rule: dict, node: Any) -> bool:
    verdict = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(node)})
    assert isinstance(verdict, celpy.celtypes.BoolType), f"{rule['rule']} on {node}: {verdict!r}"
    return bool(verdict)


def list_map_duplicates(schema: dict, value: Any, path: str = "spec") -> list[str]:
    """Where a list of x-kubernetes-list-type map holds two items with the same keys (the API
    server's "Duplicate value")."""
    found = []
    if isinstance(value, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in value]
        found += [f"{path}[{i}]" for i, key in enumerate(keys) if key in keys[:i]]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += list_map_duplicates(schema.get("items", {}), item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found += list_map_duplicates(sub, value[name], f"{path}.{name}")
    return found


def cel_refusals(spec: dict) -> list[str]:
    """The messages of the CEL rules that refuse a schema-valid spec. A rule is judged only where
    its object is present, on the defaulted spec; a rule that does not evaluate to a boolean
    (an error, or a Kubernetes CEL extension cel-python lacks) fails the test."""
    spec = with_defaults(SPEC_SCHEMA, spec)
    refused = []
    for path, rule in SPEC_CEL_RULES:
        if not all(evaluate(rule, node) for node in nodes_at(spec, path)):
            refused.append(rule["message"])
    return refused


def pydantic_refusals(spec: dict) -> list[str] | None:
    """The operator's error messages for a spec; None when it accepts it."""
    try:
        models.parse_spec(spec)
    except ValidationError as exc:
        return [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
    return None


BASE = {"task": "embed", "model": "BAAI/bge-small-en-v1.5"}

# Per CEL rule (by message): specs it must let through and one it must refuse, alone.
RULE_CASES = {
    models.SPEC_RULES[0]["message"]: (
        [{"accelerator": "cpu", "gpu": {"count": 0}}, {"accelerator": "cpu", "gpu": {}},
         {"accelerator": "hopper", "gpu": {"count": 2}}],
        {"accelerator": "cpu", "gpu": {"count": 1}}),
    models.SPEC_RULES[1]["message"]: (
        [{"accelerator": "ada", "gpu": {"product": "NVIDIA-L4"}}, {"accelerator": "auto", "gpu": {"product": "NVIDIA-L4"}}],
        {"accelerator": "cpu", "gpu": {"product": "NVIDIA-L4"}}),
    models.SPEC_RULES[2]["message"]: (
        [{"accelerator": "auto", "fallbackToCPU": True}, {"accelerator": "cpu", "fallbackToCPU": False}],
        {"accelerator": "hopper", "fallbackToCPU": True}),
    models.SPEC_RULES[3]["message"]: (
        [{"revision": "v1"}, {"cache": {"modelCache": "bge"}}, {"revision": "v1", "cache": {"sizeLimit": "1Gi"}}],
        {"revision": "v1", "cache": {"modelCache": "bge"}}),
    models.SPEC_RULES[4]["message"]: (
        [{"task": "rerank", "engine": "reranker"}, {"task": "embed", "engine": "tei"}],
        {"task": "embed", "engine": "reranker"}),
    models.SHARING_SPEC_RULES[0]["message"]: (
        [{"accelerator": "ada", "gpu": {"sharing": {"mode": "Shared"}}},
         {"accelerator": "cpu", "gpu": {"sharing": {"mode": "Exclusive"}}}],
        {"accelerator": "cpu", "gpu": {"sharing": {"mode": "Shared"}}}),
    models.SHARING_SPEC_RULES[1]["message"]: (
        [{"gpu": {"count": 1, "sharing": {"mode": "Shared"}}}, {"gpu": {"count": 2, "sharing": {"mode": "Exclusive"}}}],
        {"gpu": {"count": 2, "sharing": {"mode": "Shared"}}}),
    models.SHARING_SPEC_RULES[2]["message"]: (
        [{"fallbackToCPU": True, "gpu": {"sharing": {"mode": "Exclusive"}}}, {"gpu": {"sharing": {"mode": "Shared"}}}],
        {"fallbackToCPU": True, "gpu": {"sharing": {"mode": "Shared"}}}),
    models.SHARING_RULES[0]["message"]: (
        [{"gpu": {"sharing": {"mode": "Shared", "memory": "2Gi", "strategy": "TimeSlicing"}}},
         {"gpu": {"sharing": {}}}],
        {"gpu": {"sharing": {"memory": "2Gi"}}}),
    "defaultPrompt and defaultPromptName are exclusive (TEI accepts one of them)": (
        [{"engineArgs": {"defaultPrompt": "query: "}}, {"engineArgs": {"defaultPromptName": "query"}}],
        {"engineArgs": {"defaultPrompt": "query: ", "defaultPromptName": "query"}}),
    "set either sizeLimit (emptyDir) or existingClaim (PersistentVolumeClaim), not both": (
        [{"cache": {"sizeLimit": "10Gi"}}, {"cache": {"existingClaim": "models"}}],
        {"cache": {"sizeLimit": "10Gi", "existingClaim": "models"}}),
    models.CACHE_RULES[1]["message"]: (
        [{"cache": {"modelCache": "bge", "sizeLimit": "1Gi"}}, {"cache": {"existingClaim": "models"}}],
        {"cache": {"modelCache": "bge", "existingClaim": "models"}}),
    models.LABEL_KEY_MESSAGE: (
        [{"nodeSelector": {"pool": "gpu", "example.com/zone": "a", "kubernetes.io/hostname": "n-1",
                           "a" * 63: "", f"{'b' * 253}/{'c' * 63}": "x"}}, {"nodeSelector": {}}],
        {"nodeSelector": {"pool": "gpu", "bad key!": "x"}}),
    models.TOLERATION_RULES[0]["message"]: (
        [{"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"key": "", "operator": "Exists"}]}],
        {"tolerations": [{"key": "k"}, {"key": "bad key!", "operator": "Exists"}]}),
    models.TOLERATION_RULES[1]["message"]: (
        [{"tolerations": [{"operator": "Exists"}, {"key": "k", "operator": "Equal", "value": "v"}]}],
        {"tolerations": [{"operator": "Equal", "value": "v"}]}),
    models.TOLERATION_RULES[2]["message"]: (
        [{"tolerations": [{"key": "k", "operator": "Exists", "value": ""}, {"key": "k", "value": "v"}]}],
        {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
    models.TOLERATION_RULES[3]["message"]: (
        [{"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}],
        {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}]}),
    models.PEER_RULES[0]["message"]: (
        [{"networkPolicy": {"extraIngressFrom": [
            {"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"team": "a"}}},
            {"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}},
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}}],
        {"networkPolicy": {"extraIngressFrom": [{"podSelector": {}}, {}]}}),
    models.PEER_RULES[1]["message"]: (
        [{"networkPolicy": {"enabled": True, "extraIngressFrom": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}}],
        {"networkPolicy": {"extraIngressFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}}),
    models.POD_LABEL_RULES[0]["message"]: (
        [{"pod": {"labels": {"team": "search", "example.com/cost-centre": "42"}}}, {"pod": {"labels": {}}}],
        {"pod": {"labels": {"team": "search", "bad key!": "x"}}}),
    models.POD_LABEL_RULES[1]["message"]: (
        [{"pod": {"labels": {"app.kubernetes.io/part-of": "search", "serving.embedding-images.io/team": "a"}}}],
        {"pod": {"labels": {"app.kubernetes.io/component": "other"}}}),
    models.ANNOTATION_KEY_MESSAGE: (
        [{"pod": {"annotations": {"sidecar.istio.io/inject": "true", "vault.hashicorp.com/agent-inject": "true"}}}],
        {"pod": {"annotations": {"not a key": "x"}}}),
    models.POD_RULES[0]["message"]: (
        [{"pod": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}]}}],
        {"pod": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
            {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}]}}),
    models.AUTOSCALING_RULES[0]["message"]: (
        [{"autoscaling": {"minReplicas": 0, "maxReplicas": 1}}, {"autoscaling": {"minReplicas": 3, "maxReplicas": 3}},
         {"autoscaling": {"maxReplicas": 1}}],
        {"autoscaling": {"minReplicas": 2, "maxReplicas": 1}}),
}

# The rule at the root of the schema (self is the whole object; CEL may read metadata.name).
NAMES_GOOD = ["emb", "a", "a" * 63, "qwen3-reranker-0-6b", "a-1"]
NAMES_BAD = ["1digit", "has.dot", "a" * 64, "Upper", "trailing-", "-lead", "under_score", ""]


def test_every_cel_rule_of_the_crd_has_cases():
    everywhere = [rule["message"] for _, rule in cel_rules(ROOT_SCHEMA)]
    assert sorted(everywhere) == sorted([*RULE_CASES, models.NAME_RULE["message"]])
    assert ROOT_SCHEMA["x-kubernetes-validations"] == [models.NAME_RULE]


def name_refusals(name: str) -> tuple[bool, list[str] | None]:
    """(the API server's verdict on the name, the operator's error messages or None)."""
    api_ok = evaluate(models.NAME_RULE, {"metadata": {"name": name}, "spec": BASE})
    try:
        models.parse_modelservice({"metadata": {"name": name, "namespace": "ns"}, "spec": BASE})
    except ValidationError as exc:
        return api_ok, [e["msg"].removeprefix("Value error, ") for e in exc.errors()]
    return api_ok, None


@pytest.mark.parametrize("name", NAMES_GOOD + NAMES_BAD)
def test_the_name_rule_refuses_what_a_service_cannot_be_named(name):
    api_ok, operator = name_refusals(name)
    assert api_ok == (name in NAMES_GOOD)
    assert operator == (None if api_ok else [models.NAME_RULE["message"]])


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[a-z0-9.\-A_]{0,66}", fullmatch=True))
def test_api_server_and_pydantic_judge_names_alike(name):
    api_ok, operator = name_refusals(name)
    assert api_ok == (operator is None), (name, operator)


def k8s_is_qualified_name(key: str) -> bool:
    """k8s.io/apimachinery/pkg/util/validation IsQualifiedName, written from its definition."""
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        labels = prefix.split(".")
        if not prefix or len(prefix) > 253 or not all(
                label and label[0].isalnum() and label[-1].isalnum() and
                all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in label) for label in labels):
            return False
    else:
        return False
    return (0 < len(name) <= 63 and name[0].isascii() and name[0].isalnum() and name[-1].isascii()
            and name[-1].isalnum() and all(c.isascii() and (c.isalnum() or c in "-_.") for c in name))


label_keys = st.from_regex(r"([a-z0-9.\-]{0,6}/)?[A-Za-z0-9_.\- !]{0,6}", fullmatch=True) | st.sampled_from(
    ["a" * 63, "a" * 64, f"{'b' * 253}/c", f"{'b' * 254}/c", "a/b/c", "/a", "a/", "Example.com/a", "é"])


@settings(max_examples=400, deadline=None)
@given(label_keys)
def test_the_node_selector_key_rule_is_the_apis_label_key_syntax(key):
    """The CEL rule, pydantic and Kubernetes' own definition of a label key agree."""
    (rule,) = SPEC_SCHEMA["properties"]["nodeSelector"]["x-kubernetes-validations"]
    expected = k8s_is_qualified_name(key)
    assert evaluate(rule, {key: "v"}) == expected, key
    assert models.is_label_key(key) == expected, key


@pytest.mark.parametrize("message", sorted(RULE_CASES))
def test_cel_rule_refuses_its_bad_spec_and_passes_the_good_ones(message):
    goods, bad = RULE_CASES[message]
    for good in goods:
        spec = {**BASE, **good}
        assert SPEC_VALIDATOR.is_valid(spec), spec
        assert cel_refusals(spec) == [], spec
        assert pydantic_refusals(spec) is None, spec
    spec = {**BASE, **bad}
    assert SPEC_VALIDATOR.is_valid(spec), f"the schema alone refuses {spec}: the CEL rule is untested"
    assert cel_refusals(spec) == [message]
    assert pydantic_refusals(spec) == [message]


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
    "nodeSelector": st.dictionaries(st.sampled_from(["pool", "zone", "example.com/zone", "bad key!", "a/b/c"]),
                                    st.sampled_from(["a", "b", "", "bad value!"]), max_size=2),
    "env": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["A", "B", "A=B", ""])},
                                          optional={"value": st.just("1")}), max_size=3),
    "tolerations": st.lists(st.fixed_dictionaries({}, optional={
        "key": st.sampled_from(["k", "", "nvidia.com/gpu", "bad key!"]),
        "operator": st.sampled_from(["Exists", "Equal", "Maybe"]),
        "value": st.sampled_from(["", "v", "bad value!"]),
        "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
        "tolerationSeconds": st.just(30)}), max_size=2),
    "cache": st.fixed_dictionaries({}, optional={"sizeLimit": st.sampled_from(["10Gi", "ten"]),
                                                 "existingClaim": st.sampled_from(["models", "Bad_Name"]),
                                                 "modelCache": st.sampled_from(["bge", "Bad_Name"])}),
    "revision": st.sampled_from(["main", ""]),
    "engineArgs": st.fixed_dictionaries({}, optional={
        "maxBatchTokens": st.integers(0, 4), "pooling": st.sampled_from(["mean", "max"]),
        "defaultPrompt": st.just("q: "), "defaultPromptName": st.just("query")}),
    "hfTokenSecretRef": st.fixed_dictionaries({"name": st.sampled_from(["hf", "HF"])}),
    "autoscaling": st.fixed_dictionaries({}, optional={
        "minReplicas": st.integers(-1, 3), "maxReplicas": st.integers(0, 3),
        "targetRequests": st.sampled_from([0, 0.05, 0.5, 4, "4"]), "scaleDownDelaySeconds": st.integers(-1, 2)}),
}
specs = st.fixed_dictionaries({}, optional=values)
# Specs with a valid task and model, so that the CEL rules, not the schema, decide most of them.
near_valid_specs = st.fixed_dictionaries(
    {"task": st.sampled_from(["embed", "rerank"]), "model": st.sampled_from(["BAAI/bge-small-en-v1.5", "m"])},
    optional={k: v for k, v in values.items() if k not in ("task", "model")})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs | near_valid_specs)
def test_api_server_and_pydantic_judge_specs_alike(spec):
    """The API server accepts a spec (schema, list-map keys, then CEL on the defaulted spec) exactly
    when the operator does, and where only CEL refuses it, pydantic refuses it for the same reason."""
    schema_ok = SPEC_VALIDATOR.is_valid(spec)
    cel = cel_refusals(spec) if schema_ok else []
    duplicates = list_map_duplicates(SPEC_SCHEMA, spec)
    operator = pydantic_refusals(spec)
    api_ok = schema_ok and not cel and not duplicates
    assert api_ok == (operator is None), (
        f"API server: schema {schema_ok}, CEL {cel}, duplicates {duplicates}; operator: {operator}")
    if schema_ok and cel and not duplicates:
        assert set(operator) <= set(cel), f"{spec}: the operator says {operator}, the API server {cel}"


VALUES_ENGINE_ARGS = jsonschema.Draft7Validator(json.loads(
    (ROOT / "charts" / "embedding-images" / "values.schema.json").read_text()
)["properties"]["embedding"]["properties"]["engineArgs"])


@settings(max_examples=100, deadline=None)
@given(values["engineArgs"])
def test_values_schema_engine_args_refuse_what_the_crd_refuses(engine_args):
    """The chart's values.schema.json (modelservice.api.values_schema writes its CEL rule as JSON
    Schema) and the CRD judge engineArgs alike, without the operator in between."""
    spec = {**BASE, "engineArgs": engine_args}
    api_ok = SPEC_VALIDATOR.is_valid(spec) and not cel_refusals(spec)
    assert VALUES_ENGINE_ARGS.is_valid(engine_args) == api_ok, engine_args


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
