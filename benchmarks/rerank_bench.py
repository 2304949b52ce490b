"""Reranker benchmark: the model card's recipe vs the service's engine, side by side, one run.

A random-weight model of the real Qwen3-Reranker-0.6B shape (`--layers` to shorten it) and the
real Qwen3 tokenizer are written to a temporary directory; one query and `--docs` documents of
50-400 words are drawn from a fixed seed. The baseline is the model card's transformers recipe
applied to the documents in input order, in batches of 16; the candidate is
`reranker.model.loader.TransformersEngine` with its default settings. Each runs in its own process
(so peak RSS is its own), after one small warm-up call, with the service's allocator setting
(`reranker.memory.keep_freed_memory`, as `python -m reranker` applies it) for both alike.

    .venv/bin/python benchmarks/rerank_bench.py                  # full depth, 64 documents
    .venv/bin/python benchmarks/rerank_bench.py --layers 4       # quicker, for iterating

Prints a table and writes JSON (default benchmarks/results/rerank.json) with
baseline_docs_per_s, engine_docs_per_s, speedup, max_abs_score_diff, baseline_peak_rss_mb,
engine_peak_rss_mb, engine_gflops and matmul_gflops (a plain fp32 4096^3 matmul on the same
machine, the better of a measurement before and one after the runs: how close the engine
runs to the hardware).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reporting import Column, Table, finish  # noqa: E402  (benchmarks/ is the script's own folder)
from reranker.memory import keep_freed_memory  # noqa: E402  (imports no torch)

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be "
    "or has had not but what all their when who will more would there been one so if them into "
    "river city market history science energy water paper system model network query document "
    "answer capital france germany paris berlin tower museum bridge mountain forest ocean music "
    "theory engine battery storage protein cell climate policy economy language reading search "
    "result relevance ranking kitchen recipe pizza bread cheese garden winter summer football "
    "election court trial evidence report annual growth company product launch software update"
).split()
QUERY = "which european city is home to the tallest iron tower and what is its history"


def make_documents(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 400))) + "." for _ in range(n)
    ]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_baseline(model_dir: str, docs: list[str], threads: int, conn) -> None:
    keep_freed_memory()  # the service's allocator setting, for both sides alike
    import torch

    from testkit.models import OfficialRecipe

    torch.set_num_threads(threads)
    recipe = OfficialRecipe(model_dir)
    recipe.scores(QUERY, docs[:2], batch_size=16)  # warm-up
    start = time.perf_counter()
    scores = recipe.scores(QUERY, docs, batch_size=16)
    elapsed = time.perf_counter() - start
    conn.send({"scores": scores, "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()})


def _run_engine(model_dir: str, docs: list[str], threads: int, conn) -> None:
    keep_freed_memory()  # what `python -m reranker` does (RERANKER_KEEP_FREED_MEMORY)
    from reranker.engine import sigmoid
    from reranker.model.loader import TransformersEngine
    from reranker.settings import Settings

    engine = TransformersEngine(Settings(model=model_dir, device="cpu", threads=threads))
    engine.start()
    engine.score(QUERY, docs[:2])  # warm-up
    start = time.perf_counter()
    result = engine.score(QUERY, docs)
    elapsed = time.perf_counter() - start
    qwen = engine.backend
    ids = qwen.prompt.build(QUERY, docs, engine.settings.instruction)
    # The warm-up left the prompt head (system prompt and instruction) in the engine's cache.
    cached = ids.head if qwen.packed.cache else 0
    flops = engine_flops(
        qwen.packed.model.config, len(ids.shared), [len(t) for t in ids.tails], cached
    )
    conn.send(
        {
            "scores": [sigmoid(x) for x in result.logits],
            "seconds": elapsed,
            "peak_rss_mb": _peak_rss_mb(),
            "flops": flops,
        }
    )


def engine_flops(config, shared: int, tails: list[int], cached: int = 0) -> float:
    """Multiply-add FLOPs the engine performs: linear layers and attention, the prefix's once
    (a lower bound: it runs once per pass), less its first `cached` rows, whose keys and
    values come from the prompt cache."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    d = config.head_dim
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    qkv_w, o_w, mlp_w = h * (q + 2 * kv), q * h, 3 * h * inter
    per_token = 2 * (qkv_w + o_w + mlp_w)

    def attention(queries: int, keys: int) -> float:
        return 4 * config.num_attention_heads * d * queries * keys

    total = 0.0
    # Shared prefix: every layer but the last's attention/MLP, causal attention.
    run = shared - cached
    total += (layers - 1) * (run * per_token + attention(run, cached + run / 2))
    total += run * 2 * h * 2 * kv
    for n in tails:
        total += (layers - 1) * (n * per_token + attention(n, shared + n / 2))
        total += n * 2 * h * 2 * kv + 2 * (h * q + o_w + mlp_w) + attention(1, shared + n)
        total += 2 * h  # the yes-minus-no row
    return total


def matmul_gflops(threads: int, size: int = 4096, repeats: int = 3) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    result = parent.recv()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"{target.__name__} exited with {proc.exitcode}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=28, help="decoder layers (0.6B has 28)")
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rerank.json")
    args = parser.parse_args(argv)
    keep_freed_memory()  # the reference matmul gets the same allocator as both runs

    from testkit.models import build_qwen3_reranker

    docs = make_documents(args.docs, args.seed)
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as model_dir:
        build_qwen3_reranker(model_dir, "0.6b", layers=args.layers, seed=args.seed)
        before = matmul_gflops(args.threads)
        base = _in_child(_run_baseline, model_dir, docs, args.threads)
        cand = _in_child(_run_engine, model_dir, docs, args.threads)
        # On a shared machine the matmul rate drifts with the load: the better of two
        # measurements (before and after) is the conservative reference.
        mm = max(before, matmul_gflops(args.threads))

    diff = max(abs(a - b) for a, b in zip(base["scores"], cand["scores"]))
    report = {
        "model_shape": "Qwen3-Reranker-0.6B (random weights)",
        "layers": args.layers,
        "documents": args.docs,
        "seed": args.seed,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "load_average_1m": os.getloadavg()[0],
        "baseline_seconds": base["seconds"],
        "engine_seconds": cand["seconds"],
        "baseline_docs_per_s": args.docs / base["seconds"],
        "engine_docs_per_s": args.docs / cand["seconds"],
        "speedup": base["seconds"] / cand["seconds"],
        "max_abs_score_diff": diff,
        "baseline_peak_rss_mb": base["peak_rss_mb"],
        "engine_peak_rss_mb": cand["peak_rss_mb"],
        "engine_gflops": cand["flops"] / cand["seconds"] / 1e9,
        "matmul_gflops": mm,
    }
    report["engine_matmul_ratio"] = report["engine_gflops"] / mm

    rows = [  # (row, JSON key after baseline_/engine_, number format)
        ("docs/s", "docs_per_s", ".2f"),
        ("seconds", "seconds", ".1f"),
        ("peak RSS MB", "peak_rss_mb", ".0f"),
    ]
    table = Table(
        [Column("", 14, "<"), Column("model card", 14), Column("engine", 14)],
        [
            (name, f"{report['baseline_' + key]:{spec}}", f"{report['engine_' + key]:{spec}}")
            for name, key, spec in rows
        ],
    )
    finish(
        args.out,
        report,
        title=f"{args.docs} documents, {args.layers} layers, {args.threads} threads",
        table=table,
        notes=[
            f"speedup {report['speedup']:.2f}x   max |score diff| {diff:.2e}",
            f"engine {report['engine_gflops']:.1f} GFLOP/s = "
            f"{100 * report['engine_matmul_ratio']:.0f}% of fp32 matmul {mm:.1f} GFLOP/s",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
