"""Reranker latency in the shape of vLLM's published figure: 16 documents of 1,024 tokens.

vLLM reports about 65 ms for Qwen3-Reranker-0.6B scoring 16 documents of 1,024 tokens on an RTX
PRO 6000 in bf16. This measures the same request on this machine: a random-weight model of the
real 0.6B shape (`--layers` to shorten it) with the real Qwen3 tokenizer, one query and `--docs`
documents of exactly `--doc-tokens` tokens, scored by `reranker.model.loader.TransformersEngine` on
`--device` in `--dtype` (default: CUDA in bf16 when a GPU is visible, else the CPU in fp32), and,
side by side in the same run, by the model card's recipe on the same device and dtype (one
batch of 16, transformers' SDPA attention standing in for the card's flash_attention_2).
Each side gets `--warmup` untimed calls, then `--repeats` timed ones (the scores are read back
to the host, which waits for the GPU).

    .venv/bin/python benchmarks/rerank_latency.py                      # auto device, 28 layers
    .venv/bin/python benchmarks/rerank_latency.py --layers 2 --repeats 3 --docs 4 --doc-tokens 256

Prints a table and writes JSON (default benchmarks/results/rerank_latency.json) with
engine_p50_ms, engine_min_ms, baseline_p50_ms, speedup (baseline p50 / engine p50),
max_abs_score_diff, the device name, dtype, engine_peak_mb and baseline_peak_mb (CUDA: peak
allocated memory; CPU: the process's peak RSS, which includes both sides' loads) and
reference_vllm_ms (65, the published figure, on other hardware).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rerank_bench import QUERY  # noqa: E402  (benchmarks/ is the script's own folder)
from rerank_load import text  # noqa: E402  (words of one token each with their leading space)
from reporting import Column, Table, finish  # noqa: E402
from reranker.memory import keep_freed_memory  # noqa: E402  (imports no torch)

REFERENCE_VLLM_MS = 65.0


def make_documents(tokenizer, n: int, tokens: int, seed: int) -> list[str]:
    """n documents of exactly `tokens` tokens (as the engine tokenizes them, leading space)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        doc = text(rng, tokens)
        ids = tokenizer.encode(" " + doc, add_special_tokens=False)
        if len(ids) != tokens:
            raise RuntimeError(f"expected {tokens} tokens, got {len(ids)}: a word is not one token")
        docs.append(doc)
    return docs


def timed(call, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """(milliseconds of each timed call, the last call's scores)."""
    for _ in range(warmup):
        call()
    times, scores = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = call()
        times.append(1000 * (time.perf_counter() - start))
    return times, scores


def peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (0.6B has 28)")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--doc-tokens", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-baseline", action="store_true", help="the engine alone")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rerank_latency.json")
    args = parser.parse_args(argv)
    keep_freed_memory()  # what `python -m reranker` does

    import torch
    from transformers import AutoTokenizer

    from reranker.engine import sigmoid
    from reranker.model.loader import TransformersEngine
    from reranker.settings import Settings
    from testkit.models import OfficialRecipe, build_qwen3_reranker

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rerank-latency-") as model_dir:
        build_qwen3_reranker(model_dir, "0.6b", layers=args.layers, seed=args.seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        docs = make_documents(tokenizer, args.docs, args.doc_tokens, args.seed)
        settings = Settings(
            model=model_dir, device=args.device, dtype=args.dtype, threads=args.threads
        )
        engine = TransformersEngine(settings)
        engine.start()
        device, dtype = engine.info.device, engine.info.dtype
        engine_ms, logits = timed(
            lambda: engine.score(QUERY, docs).logits, args.warmup, args.repeats
        )
        engine_scores = [sigmoid(x) for x in logits]
        engine_peak = peak_mb(device)
        engine.stop()
        del engine
        report: dict = {
            "model_shape": "Qwen3-Reranker-0.6B (random weights)",
            "layers": args.layers,
            "documents": args.docs,
            "tokens_per_document": args.doc_tokens,
            "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "dtype": dtype,
            "threads": args.threads,
            "repeats": args.repeats,
            "engine_p50_ms": statistics.median(engine_ms),
            "engine_min_ms": min(engine_ms),
            "engine_peak_mb": engine_peak,
            "reference_vllm_ms": REFERENCE_VLLM_MS,
        }
        if not args.no_baseline:
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            card = OfficialRecipe(model_dir, device=device, dtype=getattr(torch, dtype))
            base_ms, base_scores = timed(
                lambda: card.scores(QUERY, docs, batch_size=16), args.warmup, args.repeats
            )
            report.update(
                baseline_p50_ms=statistics.median(base_ms),
                baseline_min_ms=min(base_ms),
                baseline_peak_mb=peak_mb(device),
                speedup=statistics.median(base_ms) / statistics.median(engine_ms),
                max_abs_score_diff=max(abs(a - b) for a, b in zip(base_scores, engine_scores)),
            )

    def cell(key: str) -> str:
        return f"{report[key]:.1f}" if key in report else "-"

    rows = [
        ("p50 ms", "baseline_p50_ms", "engine_p50_ms"),
        ("min ms", "baseline_min_ms", "engine_min_ms"),
        ("peak MB", "baseline_peak_mb", "engine_peak_mb"),
    ]
    notes = []
    if "speedup" in report:
        notes.append(
            f"speedup {report['speedup']:.2f}x   "
            f"max |score diff| {report['max_abs_score_diff']:.2e}"
        )
    notes.append(f"published vLLM figure (RTX PRO 6000, bf16): {REFERENCE_VLLM_MS:.0f} ms")
    finish(
        args.out,
        report,
        title=f"{args.docs} documents x {args.doc_tokens} tokens, {args.layers} layers, "
        f"{report['device_name']} {dtype}, {args.repeats} timed calls",
        table=Table(
            [Column("", 12, "<"), Column("model card", 14), Column("engine", 14)],
            [(name, cell(base), cell(engine)) for name, base, engine in rows],
        ),
        notes=notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
