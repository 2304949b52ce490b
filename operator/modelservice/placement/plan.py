"""Deciding what to run, purely: engine, GPU variant, image and node pinning for a ModelService.

`build_plan(spec, nodes)` is the whole decision. It does no I/O: the caller lists the nodes
(only needed for `accelerator: auto`) and turns a `PlanError` into a status condition.

Engine/model compatibility (decided from the model id, before any pod exists):

* A model id containing ``qwen3-reranker`` (any case, hub id or local path) is a Qwen3-Reranker:
  a causal LM (Qwen3ForCausalLM) scored by the yes/no logits recipe. TEI cannot load it as a
  reranker (it fails at start-up), so only engine ``reranker`` serves it, and only for
  ``task: rerank`` (it is no embedding model).
* The reranker engine serves that recipe and classic sequence-classification cross-encoders
  (``bge-reranker``, ``ms-marco``, ...), chosen at start-up from the model's config.json; ``auto``
  still gives the latter to TEI, which serves them natively, and ``engine: reranker`` picks our
  service for them explicitly.
* ``task: embed`` never runs on engine ``reranker`` (also a CEL rule of the CRD).
* ``engine: auto`` resolves embed -> tei; rerank -> reranker for Qwen3-Reranker, tei otherwise.
* Engine arguments the resolved engine does not understand are refused (UnsupportedEngineArgs)
  rather than silently dropped; TEI's --dtype takes float16 or float32 only; the reranker
  service has no revision setting, so `revision` with engine reranker is refused too.

GPU choice for ``accelerator: auto`` (`choose_gpu_nodes`): a node counts when it is schedulable,
advertises allocatable ``nvidia.com/gpu``, its taints other than ``nvidia.com/gpu`` are tolerated
by the spec's tolerations and it matches the spec's nodeSelector (and gpu.product when set). Its
compute capability comes from the GPU Feature Discovery labels
``nvidia.com/gpu.compute.major``/``minor``, else from its ``nvidia.com/gpu.product`` through the
variant table. Nodes are grouped by capability; a group holds sum(floor(allocatable / gpu.count))
pods (allocatable, not free GPUs). Among the groups that hold max(replicas, 1) pods, the
previously chosen one is kept (no needless roll when a node joins); otherwise stable (not
experimental) variants win over experimental ones, then the newest architecture, then the
largest capacity. Pods are pinned with nodeSelector to the group's compute major/minor labels,
or to the product label when gpu.product is set. No group fits: `PlanError("NoMatchingGPUNodes")`,
or the CPU variant when fallbackToCPU is set.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pydantic import ValidationError

from ..api.models import RERANKER_ONLY_ARGS, TEI_ONLY_ARGS, ModelServiceSpec
from ..cache.builders import CacheMount
from .sharing import GpuShare
from .variants import AUTO, CPU, Variant, VariantTable, load_table

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MAJOR = "nvidia.com/gpu.compute.major"
LABEL_MINOR = "nvidia.com/gpu.compute.minor"
LABEL_MEMORY = "nvidia.com/gpu.memory"  # GFD: MiB of each GPU of the node
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

QWEN3_RERANKER = re.compile(r"qwen3-reranker", re.IGNORECASE)

# Reasons of PlanError, as they appear in the Ready condition.
UNSUPPORTED_MODEL = "UnsupportedModelForEngine"
UNSUPPORTED_ARGS = "UnsupportedEngineArgs"
NO_MATCHING_NODES = "NoMatchingGPUNodes"
UNKNOWN_PRODUCT = "UnknownGPUProduct"
PRODUCT_MISMATCH = "GPUProductNotInAccelerator"
CACHE_NOT_FOUND = "ModelCacheNotFound"
CACHE_NOT_READY = "ModelCacheNotReady"
CACHE_MODEL_MISMATCH = "ModelCacheModelMismatch"
NODES_REQUIRED = "NodesRequired"
INVALID_SPEC = "InvalidSpec"


class PlanError(Exception):
    """The spec cannot be turned into pods. `retry`: may heal without a spec change (nodes)."""

    def __init__(self, reason: str, message: str, retry: bool = False):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


def invalid_spec(exc: ValidationError) -> PlanError:
    """The PlanError of a ModelService that does not validate (models.parse_modelservice), naming
    each field (spec.*, metadata.name) and what is wrong."""
    return PlanError(INVALID_SPEC, "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()))


@dataclass(frozen=True)
class Plan:
    """What the pods run and where: the input of the build_* functions besides the spec."""

    engine: str                      # tei | reranker
    variant: str                     # a variants.yaml name
    image: str
    gpu_count: int                   # GPUs per pod, 0 for cpu
    node_selector: dict[str, str] = field(default_factory=dict)  # the pinning only
    fell_back_to_cpu: bool = False
    cache: "CacheMount | None" = None  # spec.cache.modelCache's volume, once a revision is complete
    share: GpuShare | None = None    # gpu.sharing.mode Shared: each pod's share of one GPU


@dataclass(frozen=True)
class GpuChoice:
    variant: Variant
    capability: str
    capacity: int                    # pods the chosen nodes hold
    node_selector: dict[str, str]


def resolve_engine(task: str, model: str, engine: str) -> str:
    """The engine that serves (task, model); PlanError(UnsupportedModelForEngine) if none can."""
    qwen3 = bool(QWEN3_RERANKER.search(model))
    if task == "embed" and engine == "reranker":
        raise PlanError(UNSUPPORTED_MODEL, "engine reranker only serves task rerank: use engine auto "
                                           "or tei for embeddings")
    if task == "embed" and qwen3:
        raise PlanError(UNSUPPORTED_MODEL, f"model {model} is a Qwen3-Reranker (it scores query-document "
                                           "pairs and makes no embeddings): use task rerank")
    if engine == "auto":
        return "reranker" if task == "rerank" and qwen3 else "tei"
    if engine == "tei" and qwen3:
        raise PlanError(UNSUPPORTED_MODEL, f"model {model} is a Qwen3-Reranker, a causal LM that TEI "
                                           "cannot load as a reranker: use engine reranker (or auto)")
    return engine


def check_engine_args(spec: ModelServiceSpec, engine: str) -> None:
    """Refuses engine arguments the resolved engine does not understand."""
    if engine == "reranker" and spec.revision:
        raise PlanError(UNSUPPORTED_ARGS, "revision is not a setting of the reranker engine: pin the "
                                          "model with a local path in the cache volume, or an image "
                                          "with the model baked in")
    if spec.engine_args is None:
        return
    given = spec.engine_args.model_dump(by_alias=True, exclude_none=True)
    foreign = RERANKER_ONLY_ARGS if engine == "tei" else TEI_ONLY_ARGS
    wrong = [name for name in foreign if name in given]
    if wrong:
        raise PlanError(UNSUPPORTED_ARGS, f"engineArgs {', '.join(wrong)} do not apply to engine "
                                          f"{engine}: remove them, or choose the other engine")
    if engine == "reranker" and given.get("maxBatchTokens", 256) < 256:
        raise PlanError(UNSUPPORTED_ARGS, "engineArgs.maxBatchTokens must be at least 256 for the "
                                          "reranker engine (RERANKER_BATCH_TOKENS)")
    if engine == "tei" and given.get("dtype") == "bfloat16":
        raise PlanError(UNSUPPORTED_ARGS, "engineArgs.dtype bfloat16 is not a TEI --dtype: use "
                                          "float16 or float32")


def _tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator", "Equal") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def node_capability(node: Mapping[str, Any], table: VariantTable) -> str | None:
    """Compute capability ("8.9") of a node's GPUs, from GFD labels or the product table."""
    labels = node.get("metadata", {}).get("labels") or {}
    major, minor = labels.get(LABEL_MAJOR), labels.get(LABEL_MINOR)
    if major is not None and minor is not None:
        return f"{major}.{minor}"
    product = labels.get(LABEL_PRODUCT)
    return table.product_capability(product) if product else None


def _allocatable_gpus(node: Mapping[str, Any]) -> int:
    raw = (node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE, 0)
    try:
        return int(str(raw))
    except ValueError:
        return 0


def _gpu_memory_mib(node: Mapping[str, Any]) -> int:
    raw = (node.get("metadata", {}).get("labels") or {}).get(LABEL_MEMORY, "")
    return int(raw) if raw.isdigit() else 0


def choose_gpu_nodes(
    nodes: Iterable[Mapping[str, Any]],
    *,
    gpu_count: int,
    replicas: int,
    product: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Iterable[Mapping[str, Any]] = (),
    previous: Mapping[str, str] | None = None,
    table: VariantTable | None = None,
    share_mib: int | None = None,
) -> GpuChoice | None:
    """The GPU architecture (and its node pinning) that can hold `replicas` pods, or None. With
    `share_mib`, a pod takes that much of one GPU's memory instead of `gpu_count` GPUs."""
    table = table or load_table()
    tolerations = [*tolerations, GPU_TOLERATION]
    groups: dict[str, list[int]] = {}
    for node in nodes:
        labels = node.get("metadata", {}).get("labels") or {}
        if node.get("spec", {}).get("unschedulable"):
            continue
        taints = [t for t in node.get("spec", {}).get("taints") or []
                  if t.get("effect") in ("NoSchedule", "NoExecute")]
        if not all(_tolerates(tolerations, t) for t in taints):
            continue
        if any(labels.get(k) != v for k, v in (node_selector or {}).items()):
            continue
        if product is not None and labels.get(LABEL_PRODUCT) != product:
            continue
        gpus = _allocatable_gpus(node)
        if share_mib and not gpus:
            # Shared GPUs need not be nvidia.com/gpu: DRA nodes run no device plugin, and the
            # plugin's renamed shared resource replaces it. GFD counts them either way.
            count = labels.get("nvidia.com/gpu.count", "")
            gpus = int(count) if count.isdigit() else 0
        capability = node_capability(node, table)
        if gpus < gpu_count or capability is None or table.for_capability(capability) is None:
            continue
        if share_mib:
            # Shares a GPU holds, by GFD's memory label (one a GPU where the node has none).
            per_gpu = _gpu_memory_mib(node) // share_mib if _gpu_memory_mib(node) else 1
            groups.setdefault(capability, []).append(gpus * per_gpu)
            continue
        groups.setdefault(capability, []).append(gpus // gpu_count)
    needed = max(replicas, 1)
    fitting = []
    for capability, slots in groups.items():
        variant = table.for_capability(capability)
        assert variant is not None
        major, minor = capability.split(".")
        pin = ({LABEL_PRODUCT: product} if product is not None
               else {LABEL_MAJOR: major, LABEL_MINOR: minor})
        if sum(slots) >= needed:
            fitting.append(GpuChoice(variant, capability, sum(slots), pin))
    if not fitting:
        return None
    for choice in fitting:
        if previous and dict(previous) == choice.node_selector:
            return choice

    def rank(choice: GpuChoice) -> tuple:
        return (not choice.variant.experimental,
                tuple(int(p) for p in choice.capability.split(".")), choice.capacity)

    return max(fitting, key=rank)


def _image(table: VariantTable, variant: Variant, engine: str, override: str | None) -> str:
    if override:
        return override
    return table.tei_image(variant) if engine == "tei" else table.reranker_image(variant)


def build_plan(
    spec: ModelServiceSpec,
    nodes: Iterable[Mapping[str, Any]] | None = None,
    *,
    previous: Mapping[str, str] | None = None,
    table: VariantTable | None = None,
    share: GpuShare | None = None,
) -> Plan:
    """Engine, variant, image, GPU count and node pinning for a spec.

    `nodes` (Node objects as the API returns them) is needed only for accelerator auto without a
    gpu.product; with a product they check capacity when given. `previous` is the node pinning
    chosen last time (status.nodeSelector), kept while it still fits. `share`: the share of one
    GPU each pod takes (sharing.plan_share), counted against GFD's memory labels. Raises PlanError.
    """
    table = table or load_table()
    engine = resolve_engine(spec.task, spec.model, spec.engine)
    check_engine_args(spec, engine)
    gpu = spec.gpu
    count = gpu.count if gpu and gpu.count else 1
    product = gpu.product if gpu else None

    product_cap = None
    if product is not None:
        product_cap = table.product_capability(product)
        if product_cap is None and nodes is not None:
            caps = {node_capability(n, table) for n in nodes
                    if (n.get("metadata", {}).get("labels") or {}).get(LABEL_PRODUCT) == product}
            caps.discard(None)
            if len(caps) == 1:
                product_cap = caps.pop()
        if product_cap is None:
            raise PlanError(UNKNOWN_PRODUCT, f"gpu.product {product} is neither in the variant table "
                            f"nor on a node with nvidia.com/gpu.compute labels; known products: "
                            f"{', '.join(sorted(table.products))}", retry=nodes is not None)
        if table.for_capability(product_cap) is None:
            raise PlanError(UNKNOWN_PRODUCT, f"gpu.product {product} has compute capability "
                            f"{product_cap}, which no image in the variant table supports")

    if spec.accelerator == CPU:
        return Plan(engine, CPU, _image(table, table.by_name(CPU), engine, spec.image), 0)

    if spec.accelerator != AUTO:
        variant = table.by_name(spec.accelerator)
        if product_cap is not None and product_cap not in variant.compute_capabilities:
            raise PlanError(PRODUCT_MISMATCH, f"gpu.product {product} (compute capability "
                            f"{product_cap}) does not run the {variant.name} image: set accelerator "
                            f"to auto or to the product's architecture")
        if product is not None:
            pin = {LABEL_PRODUCT: product}
        else:
            major, minor = variant.compute_capabilities[0].split(".")
            pin = {LABEL_MAJOR: major, LABEL_MINOR: minor}
        return Plan(engine, variant.name, _image(table, variant, engine, spec.image), count, pin,
                    share=share)

    # accelerator auto
    if nodes is None:
        if product_cap is None:
            raise PlanError(NODES_REQUIRED, "accelerator auto without gpu.product needs the cluster's "
                            "nodes to choose an architecture", retry=True)
        variant = table.for_capability(product_cap)
        assert variant is not None
        return Plan(engine, variant.name, _image(table, variant, engine, spec.image), count,
                    {LABEL_PRODUCT: product}, share=share)
    choice = choose_gpu_nodes(
        nodes, gpu_count=count, replicas=spec.replicas, product=product,
        node_selector=spec.node_selector,
        tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []],
        previous=previous, table=table, share_mib=share.memory_mib if share is not None else None)
    if choice is not None:
        return Plan(engine, choice.variant.name, _image(table, choice.variant, engine, spec.image),
                    count, choice.node_selector, share=share)
    if spec.fallback_to_cpu:
        return Plan(engine, CPU, _image(table, table.by_name(CPU), engine, spec.image), 0,
                    fell_back_to_cpu=True)
    where = f"with gpu.product {product}" if product else "with a GPU architecture in the variant table"
    if share is not None:
        raise PlanError(NO_MATCHING_NODES, f"no schedulable nodes {where} hold {max(spec.replicas, 1)} "
                        f"share(s) of {share.memory} of GPU memory (nvidia.com/gpu.memory); add such "
                        f"nodes, lower replicas, or set a smaller gpu.sharing.memory", retry=True)
    raise PlanError(NO_MATCHING_NODES, f"no schedulable nodes {where} hold {max(spec.replicas, 1)} "
                    f"pod(s) of {count} GPU(s) each; add such nodes, lower replicas or gpu.count, "
                    f"or set fallbackToCPU", retry=True)
