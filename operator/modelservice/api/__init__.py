"""The resources the operator serves, defined once, and what is generated from them.

`models` holds the ModelService and ModelCache as pydantic models (spec, status, CEL rules);
`crd` turns them into the CRDs the chart ships; `reference` writes the Markdown reference;
`values_schema` writes the chart's `engineArgs` and `modelCache` schemas from the CRDs.
"""
