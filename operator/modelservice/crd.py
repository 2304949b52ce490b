"""The ModelService CustomResourceDefinition, generated from the pydantic models.

`build_crd()` turns the JSON schema of `models.ModelServiceSpec` / `ModelServiceStatus` into a
structural OpenAPI v3 schema (references inlined, optional fields plain, CEL rules kept) and adds
names, printer columns and the status and scale subresources. The committed file
charts/embedding-images/files/crd-modelservices.yaml is its output:

    python -m modelservice.crd > charts/embedding-images/files/crd-modelservices.yaml

and tests/unit/test_operator_models.py fails when the two differ.
"""
from __future__ import annotations

import sys
from typing import Any

import yaml

from . import models

# JSON-schema keys that have no place in a CRD schema.
_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """One JSON-schema node as a structural schema node."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    any_of = node.get("anyOf")
    if any_of and {"type": "null"} in any_of:
        # Optional[X]: the API simply omits the field.
        rest = [n for n in any_of if n != {"type": "null"}]
        base = rest[0] if len(rest) == 1 else {"anyOf": rest}
        merged = {**{k: v for k, v in node.items() if k not in ("anyOf", "default")}, **base}
        if node.get("default") is not None:
            merged["default"] = node["default"]
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "x-kubernetes-validations"):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "additionalProperties" in out and out["additionalProperties"] is False:
        del out["additionalProperties"]  # structural schemas prune unknown fields by default
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def schema_of(model: type) -> dict[str, Any]:
    """The structural OpenAPI schema of a pydantic model (by alias, validation mode)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


PRINTER_COLUMNS = [
    {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Variant", "type": "string", "jsonPath": ".status.variant"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {"name": "Node-Selector", "type": "string", "jsonPath": ".status.nodeSelector", "priority": 1},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Image", "type": "string", "jsonPath": ".status.image", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    spec_schema = schema_of(models.ModelServiceSpec)
    status_schema = schema_of(models.ModelServiceStatus)
    spec_schema["description"] = (
        "What to serve and where. Field reference: operator/modelservice/models.py.")
    status_schema["description"] = "Written by the operator; read it, do not set it."
    status_schema["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status_schema["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": ["embedding-images"],
            },
            "versions": [{
                "name": models.VERSION,
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A text embedding or reranking model served in the cluster: the "
                                   "operator turns it into a Deployment and a ClusterIP Service.",
                    "required": ["spec"],
                    "x-kubernetes-validations": [models.NAME_RULE],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
            }],
        },
    }


HEADER = """\
# The ModelService CustomResourceDefinition (serving.embedding-images.io/v1alpha1).
# Generated from operator/modelservice/models.py; do not edit by hand. Regenerate with:
#   python -m modelservice.crd > charts/embedding-images/files/crd-modelservices.yaml
"""


class _NoAliases(yaml.SafeDumper):
    """Writes shared sub-schemas out in full (no YAML anchors: kubectl users read this file)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd() -> str:
    """The CRD file's text, as committed."""
    return HEADER + yaml.dump(build_crd(), Dumper=_NoAliases, sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render_crd())
