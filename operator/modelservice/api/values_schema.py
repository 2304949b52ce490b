"""The chart's `engineArgs`, `modelCache` and pod value schemas, generated from the CRDs'.

values.schema.json (charts/embedding-images) must accept exactly the engine arguments the CRD
accepts, with the same bounds and the same CEL rules, or a value that installs in one mode fails
in the other. This module writes the ModelService CRD's `engineArgs` (from `crd.build_crd()`, so
from the pydantic models) into both model sections of values.schema.json, as JSON Schema
draft-07, and their `modelCache` block from the ModelCache CRD's fields it sets (size, storage
class, access mode, retention; `enabled` and the empty defaults are the chart's), and the pod
values (podLabels, podAnnotations, imagePullSecrets, priorityClassName, topologySpreadConstraints,
serviceAccountName) from spec.pod (POD_VALUES). Run from the
repository root:

    python -m modelservice.api.values_schema          # rewrite those blocks of values.schema.json
    python -m modelservice.api.values_schema --check  # exit 1 when the file is out of date

tests/chart/test_schema_sync.py fails when the committed file differs from the output.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from .crd import build_cache_crd, build_crd

VALUES_SCHEMA_PATH = Path("charts/embedding-images/values.schema.json")
COMPONENTS = ("embedding", "reranker")
COMMAND = "python -m modelservice.api.values_schema"

# OpenAPI keywords of the CRD that JSON Schema (draft-07) shares; the rest (x-kubernetes-*,
# default) are the API server's business.
KEPT = ("type", "description", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "required",
        "maxItems", "maxProperties")

# The one shape of CEL rule that JSON Schema can say: two fields that exclude each other.
_EXCLUSIVE = re.compile(r"^!\(has\(self\.(\w+)\) && has\(self\.(\w+)\)\)$")


def cel_as_json_schema(rule: str) -> dict[str, Any]:
    """A CEL rule as the JSON Schema that refuses the same objects; ValueError for a rule this
    translation does not know (add its form here, or the chart would silently accept more)."""
    match = _EXCLUSIVE.match(rule)
    if not match:
        raise ValueError(f"no JSON Schema form for the CEL rule {rule!r}")
    return {"not": {"required": list(match.groups())}}


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A structural CRD schema node as JSON Schema, unknown properties refused, CEL rules kept."""
    out = {k: node[k] for k in KEPT if k in node}
    if "properties" in node:
        out["additionalProperties"] = False
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    rules = [cel_as_json_schema(r["rule"]) for r in node.get("x-kubernetes-validations", ())]
    if len(rules) == 1:
        out.update(rules[0])
    elif rules:
        out["allOf"] = rules
    return out


def crd_spec_property(name: str, crd: dict[str, Any] | None = None) -> dict[str, Any]:
    """One property of a CRD's spec (default: the ModelService's), as the generated CRD defines it."""
    (version,) = [v for v in (crd or build_crd())["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][name]


def expected_engine_args() -> dict[str, Any]:
    """The JSON Schema of a model section's engineArgs in values.schema.json."""
    return to_json_schema(crd_spec_property("engineArgs"))


def _or_empty(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD string field as a chart value whose empty string means unset (the chart leaves it out)."""
    out = {k: v for k, v in node.items() if k != "minLength"}
    if "pattern" in out:
        out["pattern"] = f"^$|{out['pattern']}"
    return out


def expected_model_cache() -> dict[str, Any]:
    """The JSON Schema of a model section's modelCache block: the ModelCache CRD's size,
    storageClassName, accessMode and retention (their enums and patterns), with the chart's
    `enabled` switch; size and storageClassName may be empty (off, or the cluster's default)."""
    crd = build_cache_crd()

    def field(name: str) -> dict[str, Any]:
        # Their only CEL rules are `self == oldSelf` (immutable): transitions, which a values file has none of.
        node = crd_spec_property(name, crd)
        assert all(r["rule"] == "self == oldSelf" for r in node.get("x-kubernetes-validations", ())), node
        return to_json_schema({k: v for k, v in node.items() if k != "x-kubernetes-validations"})

    size = field("size")
    size = _or_empty({"type": ["string", "integer"], **{k: v for k, v in size.items() if k != "type"}})
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "A ModelCache for the model (with the operator), or the chart's own claim and download "
                       "Job (without it): the files fetched once, served read-only at /models.",
        "properties": {
            "enabled": {"type": "boolean", "description": "Serve the model from a volume it is fetched into once."},
            "size": {**size, "description": size["description"] + " Required when enabled."},
            "storageClassName": _or_empty(field("storageClassName")),
            "accessMode": field("accessMode"),
            "retention": field("retention"),
        },
    }


# A model section's pod values (flat, as nodeSelector and tolerations are) -> the ModelService's
# spec.pod field the chart sets from each.
POD_VALUES = {"podLabels": "labels", "podAnnotations": "annotations", "imagePullSecrets": "imagePullSecrets",
              "priorityClassName": "priorityClassName", "topologySpreadConstraints": "topologySpreadConstraints",
              "serviceAccountName": "serviceAccountName"}


def _without_rules(node: Any) -> Any:
    """A schema node less its CEL rules (label-key formats and the reserved selector labels, which
    the chart checks itself with `fail`, and the API server at apply)."""
    if isinstance(node, list):
        return [_without_rules(n) for n in node]
    if not isinstance(node, dict):
        return node
    return {k: _without_rules(v) for k, v in node.items() if k != "x-kubernetes-validations"}


def expected_pod_values() -> dict[str, dict[str, Any]]:
    """The JSON Schemas of a model section's pod values, from the CRD's spec.pod; names may be
    empty (unset)."""
    pod = crd_spec_property("pod")["properties"]
    out = {}
    for value, field_name in POD_VALUES.items():
        node = to_json_schema(_without_rules(pod[field_name]))
        out[value] = _or_empty(node) if node.get("type") == "string" else node
    return out


def render_values_schema(current: str) -> str:
    """values.schema.json's text with both model sections' generated blocks replaced."""
    schema = json.loads(current)
    for component in COMPONENTS:
        section = schema["properties"][component]["properties"]
        section["engineArgs"] = expected_engine_args()
        section["modelCache"] = expected_model_cache()
        section.update(expected_pod_values())
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when values.schema.json is out of date")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    path = args.root / VALUES_SCHEMA_PATH
    try:
        current = path.read_text()
        text = render_values_schema(current)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    if text == current:
        return 0
    if args.check:
        print(f"{path} is out of date: run `{COMMAND}`", file=sys.stderr)
        return 1
    path.write_text(text)
    print(f"wrote engineArgs and modelCache of {', '.join(COMPONENTS)} into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
