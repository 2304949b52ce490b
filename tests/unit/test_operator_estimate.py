"""The GPU memory estimate (placement/estimate.py) against the published sizes of real models.

PUBLISHED holds, per model the examples and issue 25 name, the parameter count of its model card
and the bytes of its safetensors weights (all shards) as the Hub lists them, with the dtype they
are stored in. They were written from the models' cards and file listings, not downloaded here
(this machine reaches no model hub); the estimate's own table (KNOWN_MODELS) is checked against
them, and the estimate from a ModelCache's bytes against the one from the table.
"""
from __future__ import annotations

import pytest

from modelservice.placement import estimate
from modelservice.placement.estimate import MIB, UnknownModel, estimate_memory

# model id: (engine, parameters, safetensors bytes, stored dtype)
PUBLISHED = {
    "sentence-transformers/all-MiniLM-L6-v2": ("tei", 22_700_000, 90_900_000, "float32"),
    "BAAI/bge-small-en-v1.5": ("tei", 33_400_000, 133_000_000, "float32"),
    "BAAI/bge-base-en-v1.5": ("tei", 109_000_000, 438_000_000, "float32"),
    "BAAI/bge-large-en-v1.5": ("tei", 335_000_000, 1_340_000_000, "float32"),
    "BAAI/bge-m3": ("tei", 568_000_000, 2_270_000_000, "float32"),
    "Qwen/Qwen3-Embedding-0.6B": ("tei", 596_000_000, 1_190_000_000, "bfloat16"),
    "Qwen/Qwen3-Embedding-4B": ("tei", 4_020_000_000, 8_050_000_000, "bfloat16"),
    "Qwen/Qwen3-Reranker-0.6B": ("reranker", 596_000_000, 1_190_000_000, "bfloat16"),
    "Qwen/Qwen3-Reranker-4B": ("reranker", 4_020_000_000, 8_050_000_000, "bfloat16"),
    "Qwen/Qwen3-Reranker-8B": ("reranker", 8_190_000_000, 16_400_000_000, "bfloat16"),
}
# GFD's nvidia.com/gpu.memory (MiB) of the fleet's GPUs (tests/cluster/nodes.yaml).
GPU_MIB = {"T4": 15360, "L4": 23034, "A100-80GB": 81920, "H100": 81559}
TOKENIZER_BYTES = 17_000_000  # the cache also holds tokenizer and config files (XLM-R's is 17 MB)


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_the_table_matches_the_published_parameters_and_file_sizes(model):
    _, parameters, file_bytes, stored = PUBLISHED[model]
    shape = estimate.known_shape(model)
    assert shape is not None, f"{model} is missing from KNOWN_MODELS"
    assert shape.stored_dtype == stored
    assert shape.parameters == pytest.approx(parameters, rel=0.01)
    # Parameters x bytes of the stored dtype are the weights' file size (plus a small header).
    assert shape.parameters * estimate.DTYPE_BYTES[stored] == pytest.approx(file_bytes, rel=0.02)


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_the_estimate_from_a_cache_of_the_revision_agrees_with_the_table(model):
    engine, _, file_bytes, _ = PUBLISHED[model]
    from_table = estimate_memory(model, engine)
    from_cache = estimate_memory(model, engine, cache_bytes=file_bytes + TOKENIZER_BYTES)
    assert from_cache.weights_mib == pytest.approx(from_table.weights_mib, rel=0.04, abs=16)
    assert from_cache.activations_mib == from_table.activations_mib
    # Weights are in the dtype the engine runs in on a GPU: half the fp32 files.
    run_bytes = 2
    assert from_table.weights_mib == pytest.approx(
        file_bytes * run_bytes / estimate.DTYPE_BYTES[PUBLISHED[model][3]] / MIB, rel=0.02)


def test_the_estimates_of_the_fleet_fit_where_the_issue_says():
    """Six bge-small and one Qwen3-Reranker-0.6B share one L4 with room to spare; the 8B
    reranker needs more than a T4; every model fits one A100-80GB alone."""
    small = estimate_memory("BAAI/bge-small-en-v1.5", "tei").total_mib
    reranker = estimate_memory("Qwen/Qwen3-Reranker-0.6B", "reranker").total_mib
    assert 6 * small + reranker <= GPU_MIB["L4"]
    big = estimate_memory("Qwen/Qwen3-Reranker-8B", "reranker").total_mib
    assert GPU_MIB["T4"] < big <= GPU_MIB["L4"]
    for model, (engine, *_rest) in PUBLISHED.items():
        assert estimate_memory(model, engine).total_mib <= GPU_MIB["A100-80GB"], model


def test_each_term_follows_its_input():
    base = estimate_memory("BAAI/bge-base-en-v1.5", "tei")
    half = estimate_memory("BAAI/bge-base-en-v1.5", "tei", max_batch_tokens=8192)
    fp32 = estimate_memory("BAAI/bge-base-en-v1.5", "tei", dtype="float32")
    assert half.activations_mib == pytest.approx(base.activations_mib / 2, abs=1)
    assert half.weights_mib == base.weights_mib
    assert fp32.weights_mib == pytest.approx(2 * base.weights_mib, abs=1)
    assert base.context_mib == estimate.CUDA_CONTEXT_MIB
    assert base.total_mib % estimate.ROUND_MIB == 0
    assert base.total_mib >= base.weights_mib + base.activations_mib + base.context_mib
    # The reranker's pass is max(batch tokens, max length) rows plus its prompt cache.
    rr = estimate_memory("Qwen/Qwen3-Reranker-0.6B", "reranker", max_batch_tokens=2048, max_length=1024,
                         prompt_cache_tokens=0)
    full = estimate_memory("Qwen/Qwen3-Reranker-0.6B", "reranker")
    assert rr.activations_mib == pytest.approx(full.activations_mib * 2048 / (8192 + 512), abs=1)


def test_the_reranker_factor_is_the_measured_row_cost():
    """ACTIVATION_FACTOR reproduces the README's measured 0.15 MB a row at the 0.6B shape in fp32
    (within the rounding up it documents)."""
    shape = estimate.known_shape("Qwen/Qwen3-Reranker-0.6B")
    row = estimate.ACTIVATION_FACTOR * (shape.hidden + shape.intermediate) * 4
    assert 0.15e6 <= row <= 0.15e6 * 1.15


def test_models_are_matched_by_name_and_unknown_ones_need_a_size():
    assert estimate.known_shape("/models/bge-m3") == estimate.known_shape("BAAI/bge-m3")
    assert estimate.known_shape("my-mirror/BGE-M3") == estimate.known_shape("BAAI/bge-m3")
    with pytest.raises(UnknownModel, match="spec.gpu.sharing.memory"):
        estimate_memory("acme/secret-encoder", "tei")
    # A cache's bytes size an unknown model (files taken to hold the dtype it runs in, fp16: an
    # fp32 checkpoint is overestimated, never under), shaped like the known model nearest in size.
    guess = estimate_memory("acme/secret-encoder", "tei", cache_bytes=670_000_000)
    assert guess.activations_mib == estimate_memory("BAAI/bge-large-en-v1.5", "tei").activations_mib
