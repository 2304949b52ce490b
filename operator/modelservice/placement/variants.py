"""The GPU variant table (variants.yaml), read once, as typed lookups.

The table itself lives in charts/embedding-images/files/variants.yaml (this package's
variants.yaml is a symlink to it, and a plain copy inside the installed package), so the chart's
templates and the operator can never disagree about which image runs on which GPU. This module
only reads it: accelerator name -> TEI tag and reranker tag; GPU product -> compute capability;
compute capability -> variant.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources as importlib_resources
from typing import Any

import yaml

CPU = "cpu"
AUTO = "auto"


@dataclass(frozen=True)
class Variant:
    """One row of the table: an accelerator value and the images built for it."""

    name: str
    gpu: bool
    tei_tag: str
    reranker_tag: str
    compute_capabilities: tuple[str, ...]
    experimental: bool = False
    description: str = ""


@dataclass(frozen=True)
class VariantTable:
    """The whole table: image repositories, variants in file order, GPU products."""

    tei_repository: str
    reranker_repository: str
    variants: tuple[Variant, ...]
    products: dict[str, str]

    @property
    def names(self) -> tuple[str, ...]:
        """Accelerator values in table order (cpu first), without `auto`."""
        return tuple(v.name for v in self.variants)

    def by_name(self, name: str) -> Variant:
        """The variant an accelerator value names; KeyError for an unknown one."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def for_capability(self, capability: str) -> Variant | None:
        """The GPU variant whose image runs on this compute capability ("8.9"), if any."""
        for variant in self.variants:
            if capability in variant.compute_capabilities:
                return variant
        return None

    def product_capability(self, product: str) -> str | None:
        """Compute capability of a GPU product (the nvidia.com/gpu.product label), if known."""
        return self.products.get(product)

    def tei_image(self, variant: Variant) -> str:
        return f"{self.tei_repository}:{variant.tei_tag}"

    def reranker_image(self, variant: Variant) -> str:
        return f"{self.reranker_repository}:{variant.reranker_tag}"


def parse_table(doc: dict[str, Any]) -> VariantTable:
    """Builds the typed table from the parsed YAML document."""
    variants = tuple(
        Variant(
            name=str(row["name"]),
            gpu=bool(row["gpu"]),
            tei_tag=str(row["teiTag"]),
            reranker_tag=str(row["rerankerTag"]),
            compute_capabilities=tuple(str(c) for c in row.get("computeCapabilities") or ()),
            experimental=bool(row.get("experimental", False)),
            description=str(row.get("description", "")),
        )
        for row in doc["variants"]
    )
    return VariantTable(
        tei_repository=str(doc["tei"]["repository"]),
        reranker_repository=str(doc["reranker"]["repository"]),
        variants=variants,
        products={str(k): str(v) for k, v in (doc.get("products") or {}).items()},
    )


@functools.cache
def load_table() -> VariantTable:
    """The table shipped with the package (read once per process)."""
    text = importlib_resources.files("modelservice").joinpath("variants.yaml").read_text()
    return parse_table(yaml.safe_load(text))
