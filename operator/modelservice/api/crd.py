"""The ModelService CustomResourceDefinition, generated from the pydantic models.

`build_crd()` (and `build_cache_crd()` for ModelCache) turns the JSON schema of
`models.ModelServiceSpec` / `ModelServiceStatus` (`ModelCacheSpec` / `ModelCacheStatus`) into a
structural OpenAPI v3 schema (references inlined, optional fields plain, CEL rules kept) and adds
names, printer columns and the status (and scale) subresources. The committed files
charts/embedding-images/crds/<plural>.yaml are its output:

    python -m modelservice.api.crd modelservices > charts/embedding-images/crds/modelservices.yaml
    python -m modelservice.api.crd modelcaches > charts/embedding-images/crds/modelcaches.yaml

and tests/unit/test_operator_models.py fails when the two differ.
"""
from __future__ import annotations

import sys
from typing import Any

import yaml

from . import models

# JSON-schema keys that have no place in a CRD schema (the API server drops propertyNames from a
# stored CRD: kept, the file would differ from what the cluster holds, and server-side applies of
# it by two managers, Helm 4 and kubectl, would conflict on .spec.versions).
_DROP = {"title", "$defs", "propertyNames"}


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
    {"name": "GPU-Memory", "type": "string", "jsonPath": ".status.gpuShare.memory", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


CACHE_PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
    {"name": "Revision", "type": "string", "jsonPath": ".spec.revision"},
    {"name": "Cached", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Cached\")].status"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Cached\")].reason"},
    {"name": "Bytes", "type": "integer", "jsonPath": ".status.bytes"},
    {"name": "Commit", "type": "string", "jsonPath": ".status.commit", "priority": 1},
    {"name": "Users", "type": "string", "jsonPath": ".status.users", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _crd(*, kind: str, plural: str, singular: str, short_names: tuple[str, ...], spec_model: type,
         status_model: type, description: str, spec_description: str, name_rule: dict[str, Any],
         printer_columns: list[dict[str, Any]], subresources: dict[str, Any]) -> dict[str, Any]:
    spec_schema = schema_of(spec_model)
    status_schema = schema_of(status_model)
    spec_schema["description"] = spec_description
    status_schema["description"] = "Written by the operator; read it, do not set it."
    status_schema["properties"]["conditions"]["x-kubernetes-list-type"] = "map"
    status_schema["properties"]["conditions"]["x-kubernetes-list-map-keys"] = ["type"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["embedding-images"],
            },
            "versions": [{
                "name": models.VERSION,
                "served": True,
                "storage": True,
                "subresources": subresources,
                "additionalPrinterColumns": printer_columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": description,
                    "required": ["spec"],
                    "x-kubernetes-validations": [name_rule],
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


def build_crd() -> dict[str, Any]:
    """The ModelService CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    return _crd(
        kind=models.KIND, plural=models.PLURAL, singular=models.SINGULAR, short_names=models.SHORT_NAMES,
        spec_model=models.ModelServiceSpec, status_model=models.ModelServiceStatus,
        description="A text embedding or reranking model served in the cluster: the operator turns it "
                    "into a Deployment and a ClusterIP Service.",
        spec_description="What to serve and where. Field reference: operator/modelservice/api/models.py.",
        name_rule=models.NAME_RULE, printer_columns=PRINTER_COLUMNS,
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        })


def build_cache_crd() -> dict[str, Any]:
    """The ModelCache CustomResourceDefinition object."""
    return _crd(
        kind=models.CACHE_KIND, plural=models.CACHE_PLURAL, singular=models.CACHE_SINGULAR,
        short_names=models.CACHE_SHORT_NAMES, spec_model=models.ModelCacheSpec,
        status_model=models.ModelCacheStatus,
        description="A model's files fetched once into a PersistentVolumeClaim by a download Job, "
                    "mounted read-only by the pods of every ModelService of the namespace that names it "
                    "(spec.cache.modelCache).",
        spec_description="What to fetch and where to keep it. Field reference: operator/modelservice/api/models.py.",
        name_rule=models.CACHE_NAME_RULE, printer_columns=CACHE_PRINTER_COLUMNS,
        subresources={"status": {}})


# What `python -m modelservice.api.crd <plural>` writes, and where the chart keeps it.
CRDS = {models.PLURAL: build_crd, models.CACHE_PLURAL: build_cache_crd}


HEADER = """\
# The {kind} CustomResourceDefinition (serving.embedding-images.io/v1alpha1).
# Generated from operator/modelservice/api/models.py; do not edit by hand. Regenerate with:
#   python -m modelservice.api.crd {plural} > charts/embedding-images/crds/{plural}.yaml
"""


class _NoAliases(yaml.SafeDumper):
    """Writes shared sub-schemas out in full (no YAML anchors: kubectl users read this file)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd(plural: str = models.PLURAL) -> str:
    """The CRD file's text, as committed (charts/embedding-images/crds/<plural>.yaml)."""
    crd = CRDS[plural]()
    header = HEADER.format(kind=crd["spec"]["names"]["kind"], plural=plural)
    return header + yaml.dump(crd, Dumper=_NoAliases, sort_keys=False, width=100)


if __name__ == "__main__":
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1] not in CRDS):
        sys.exit(f"usage: python -m modelservice.api.crd [{'|'.join(CRDS)}]")
    sys.stdout.write(render_crd(*sys.argv[1:]))
