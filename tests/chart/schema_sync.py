"""The chart's `engineArgs` schema is the ModelService CRD's, in JSON Schema form.

The operator's pydantic model generates the CRD (files/crd-modelservices.yaml); values.schema.json
must accept exactly the engine arguments the CRD accepts, with the same bounds, or a value that
installs in one mode fails in the other. `python tests/chart/schema_sync.py` rewrites the chart's
copy; tests/chart/test_schema_sync.py fails when the two differ.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "embedding-images"
CRD = CHART / "files" / "crd-modelservices.yaml"
VALUES_SCHEMA = CHART / "values.schema.json"
COMPONENTS = ("embedding", "reranker")

# OpenAPI keywords of the CRD that JSON Schema (draft-07) shares; the rest (x-kubernetes-*,
# default) are the API server's business.
KEPT = ("type", "description", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "required")


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    out = {k: node[k] for k in KEPT if k in node}
    if "properties" in node:
        out["additionalProperties"] = False
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    return out


def crd_spec_property(name: str) -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][name]


def expected_engine_args() -> dict[str, Any]:
    schema = to_json_schema(crd_spec_property("engineArgs"))
    # The CRD's CEL rule (defaultPrompt and defaultPromptName are exclusive) as JSON Schema.
    schema["not"] = {"required": ["defaultPrompt", "defaultPromptName"]}
    return schema


def main() -> int:
    schema = json.loads(VALUES_SCHEMA.read_text())
    for component in COMPONENTS:
        schema["properties"][component]["properties"]["engineArgs"] = expected_engine_args()
    VALUES_SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote engineArgs of {', '.join(COMPONENTS)} into {VALUES_SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
