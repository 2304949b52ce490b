"""The GPU memory one replica of a ModelService needs, estimated purely (no Hub, no I/O).

The estimate is what a shared GPU reserves for a pod (`spec.gpu.sharing.mode: Shared`); the
spec's `gpu.sharing.memory` overrides it. It is the sum of four terms, in MiB, rounded up to a
multiple of 64 MiB:

    weights      = parameters x bytes of the dtype the engine runs in
                   (or, with a ModelCache, the bytes of the downloaded revision, converted from the
                   dtype the files hold to the one the engine runs in)
    activations  = rows x ACTIVATION_FACTOR x (hidden + intermediate) x bytes of the dtype
    context      = CUDA_CONTEXT_MIB
    headroom     = HEADROOM x (weights + activations)

**Parameters.** The operator cannot read a model's config.json from the Hub (it never downloads),
so the parameter count and the shape (hidden and intermediate sizes) come from `KNOWN_MODELS`, a
table of well-known embedding and rerank models written from their published configs and model
cards, matched by the last path segment of `spec.model` (case-insensitive: `BAAI/bge-m3`, a mirror
`my-org/bge-m3` and a local path `/models/bge-m3` are the same model). A model outside the table
needs either `gpu.sharing.memory`, or a ModelCache: the cache's status says how many bytes its
revision holds (one weight format plus tokenizer and config files, a few MB more than the
weights), and the shape is then the one of the table's model nearest in size. With neither, the
plan fails with reason `GPUMemoryUnknown`.

**Dtype.** TEI runs `--dtype` (engineArgs.dtype), float16 by default on a GPU. The reranker runs
`RERANKER_DTYPE`, by default bfloat16 on a GPU (float16 where bf16 is missing): 2 bytes either
way; float32 is 4.

**Rows.** The largest forward pass the engine makes, in token rows: TEI's `--max-batch-tokens`
(engineArgs.maxBatchTokens, TEI's default 16384; TEI warms up at that size, so the peak is reached
at start); the reranker's max(RERANKER_BATCH_TOKENS, RERANKER_MAX_LENGTH) (both 8192 by default)
plus RERANKER_PROMPT_CACHE_TOKENS (512), whose keys and values stay between passes.

**ACTIVATION_FACTOR = 10** values of (hidden + intermediate) per row: the reranker's measured
peak of a pass is 0.15 MB a row at the Qwen3-Reranker-0.6B shape (hidden 1024, intermediate
3072) in float32 (top README, "Reranker API"): 0.15e6 / (4096 x 4) = 9.2, rounded up. It holds
the residual stream, the attention's q/k/v and output, the MLP's gate/up/down intermediates and
the allocator's blocks of one layer at a time (inference keeps no layer's activations after it).
Attention scores are not counted: both engines use flash or memory-efficient attention on
Ampere and newer; TEI on Turing pads and materialises them (batch x heads x length^2), a few
hundred MB more at 512-token inputs.

**CUDA_CONTEXT_MIB = 512**: the driver's context plus the CUDA runtime, cuBLAS handles and
workspaces of one process, as nvidia-smi shows it for a PyTorch or candle process that has loaded
nothing (300-500 MiB on Ampere to Hopper with lazy module loading, CUDA 12).

**HEADROOM = 10 %** of weights plus activations: the caching allocator's fragmentation (blocks
rounded up to 2 MiB pages and size classes) and the pass's sizes varying with the mix of requests.

What cannot be capped: the estimate is a reservation the scheduler packs by; the engines do not
read it (the NVIDIA DRA driver's MPS sharing caps each pod's device memory at its share; with
time-slicing or the device plugin nothing caps it, and a pod that outgrows its share fails with
CUDA out-of-memory, restarts, and the ModelService reports the restarts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

MIB = 1024 * 1024
ACTIVATION_FACTOR = 10
CUDA_CONTEXT_MIB = 512
HEADROOM = 0.10
ROUND_MIB = 64

TEI_DEFAULT_BATCH_TOKENS = 16384
RERANKER_DEFAULT_BATCH_TOKENS = 8192
RERANKER_DEFAULT_MAX_LENGTH = 8192
RERANKER_DEFAULT_PROMPT_CACHE_TOKENS = 512

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model's config: its parameter count, the widths of its layers
    and the dtype its published weights are stored in."""

    parameters: int
    hidden: int
    intermediate: int
    stored_dtype: str


# From the models' config.json (hidden_size, intermediate_size, torch_dtype) and model cards
# (parameter counts), keyed by the lower-cased repository name.
KNOWN_MODELS: Mapping[str, ModelShape] = {
    "all-minilm-l6-v2": ModelShape(22_713_216, 384, 1536, "float32"),
    "all-minilm-l12-v2": ModelShape(33_360_000, 384, 1536, "float32"),
    "bge-small-en-v1.5": ModelShape(33_360_000, 384, 1536, "float32"),
    "bge-base-en-v1.5": ModelShape(109_482_240, 768, 3072, "float32"),
    "bge-large-en-v1.5": ModelShape(335_141_888, 1024, 4096, "float32"),
    "bge-m3": ModelShape(567_754_752, 1024, 4096, "float32"),
    "bge-reranker-base": ModelShape(278_043_648, 768, 3072, "float32"),
    "bge-reranker-v2-m3": ModelShape(567_755_777, 1024, 4096, "float32"),
    "qwen3-embedding-0.6b": ModelShape(595_776_512, 1024, 3072, "bfloat16"),
    "qwen3-embedding-4b": ModelShape(4_021_774_336, 2560, 9728, "bfloat16"),
    "qwen3-embedding-8b": ModelShape(7_567_295_488, 4096, 12288, "bfloat16"),
    "qwen3-reranker-0.6b": ModelShape(595_776_512, 1024, 3072, "bfloat16"),
    "qwen3-reranker-4b": ModelShape(4_021_774_336, 2560, 9728, "bfloat16"),
    "qwen3-reranker-8b": ModelShape(8_190_735_360, 4096, 12288, "bfloat16"),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """One replica's GPU memory, term by term, in MiB."""

    weights_mib: int
    activations_mib: int
    context_mib: int
    headroom_mib: int

    @property
    def total_mib(self) -> int:
        total = self.weights_mib + self.activations_mib + self.context_mib + self.headroom_mib
        return -(-total // ROUND_MIB) * ROUND_MIB

    def describe(self) -> str:
        return (f"weights {self.weights_mib} + activations {self.activations_mib} + CUDA context "
                f"{self.context_mib} + headroom {self.headroom_mib} MiB")


class UnknownModel(LookupError):
    """Neither the table nor a cache says how large the model is."""


def model_key(model: str) -> str:
    """The table's key of a model id or local path: its last path segment, lower-cased."""
    return model.rstrip("/").rsplit("/", 1)[-1].lower()


def known_shape(model: str) -> ModelShape | None:
    return KNOWN_MODELS.get(model_key(model))


def nearest_shape(weight_bytes: int, dtype: str) -> ModelShape:
    """The table's model whose weights in `dtype` are nearest to `weight_bytes` (the shape of a
    model outside the table)."""
    params = weight_bytes / DTYPE_BYTES[dtype]
    return min(KNOWN_MODELS.values(), key=lambda s: abs(math.log(s.parameters / max(params, 1.0))))


def run_dtype(engine: str, dtype: str | None) -> str:
    """The dtype the engine runs in on a GPU: engineArgs.dtype, else TEI float16, reranker
    bfloat16 (float16 on GPUs without bf16: the same size)."""
    if dtype:
        return dtype
    return "float16" if engine == "tei" else "bfloat16"


def activation_rows(engine: str, *, max_batch_tokens: int | None = None, max_length: int | None = None,
                    prompt_cache_tokens: int | None = None) -> int:
    """The token rows of the engine's largest pass (and, for the reranker, its prompt cache)."""
    if engine == "tei":
        return max_batch_tokens or TEI_DEFAULT_BATCH_TOKENS
    rows = max(max_batch_tokens or RERANKER_DEFAULT_BATCH_TOKENS, max_length or RERANKER_DEFAULT_MAX_LENGTH)
    cache = RERANKER_DEFAULT_PROMPT_CACHE_TOKENS if prompt_cache_tokens is None else prompt_cache_tokens
    return rows + cache


def estimate_memory(model: str, engine: str, *, dtype: str | None = None,
                    max_batch_tokens: int | None = None, max_length: int | None = None,
                    prompt_cache_tokens: int | None = None,
                    cache_bytes: int | None = None) -> MemoryEstimate:
    """The GPU memory one replica needs (the module's formula). `cache_bytes`: the size of the
    ModelCache's downloaded revision, when one is used. Raises UnknownModel."""
    run = run_dtype(engine, dtype)
    size = DTYPE_BYTES[run]
    shape = known_shape(model)
    if cache_bytes:
        # The files hold the weights in their stored dtype: converted to the one the engine runs in.
        stored = shape.stored_dtype if shape is not None else run
        weight_bytes = cache_bytes * size / DTYPE_BYTES[stored]
        shape = shape or nearest_shape(weight_bytes, run)
    elif shape is not None:
        weight_bytes = shape.parameters * size
    else:
        raise UnknownModel(f"the GPU memory of {model} is unknown: it is not among the operator's "
                           f"well-known models ({', '.join(sorted(KNOWN_MODELS))}) and no ModelCache "
                           f"says its size; set spec.gpu.sharing.memory")
    rows = activation_rows(engine, max_batch_tokens=max_batch_tokens, max_length=max_length,
                           prompt_cache_tokens=prompt_cache_tokens)
    activation_bytes = rows * ACTIVATION_FACTOR * (shape.hidden + shape.intermediate) * size
    weights_mib = math.ceil(weight_bytes / MIB)
    activations_mib = math.ceil(activation_bytes / MIB)
    return MemoryEstimate(weights_mib, activations_mib, CUDA_CONTEXT_MIB,
                          math.ceil(HEADROOM * (weights_mib + activations_mib)))
