"""Reranker under load: real HTTP servers, cross-request batching on vs off, side by side.

A random-weight Qwen3 reranker (`--shape` tiny, small or 0.6b, `--layers` deep; default the
real Qwen3-Reranker-0.6B width at 4 layers) with the real Qwen3 tokenizer is written to a
temporary directory and served twice by `python -m reranker`: once as configured (documents
of concurrent requests share forward passes) and once with RERANKER_BATCH_REQUESTS=false (one
request per pass: the baseline). Both servers stay up; for each concurrency (1, 4, 16 clients
sending requests back to back, a different query per request, `--docs` documents of `--words`
words) the run alternates `--rounds` windows of `--seconds` between the two servers, so a
change in the machine's load hits both alike. Throughput is documents answered per second
over all windows; p50/p99 are per request, pooled.

Then a burst of 4 x RERANKER_MAX_QUEUE requests at once against the batched server: the
excess is refused 429 with Retry-After (deliberate); each refused request waits Retry-After
and tries again, and every request must end 200.

Then peak memory: a fresh server per case and its peak RSS (VmHWM) once loaded (after one
warm-up request), after one request of 1,000 documents of ~2,000 tokens and after one of a
single ~8,000-token document, on the `small` shape (hidden 256, 4 layers); and, at the real
0.6B width (`--memory-layers`, default 2, 0 for all 28), after 16 documents of ~2,000 tokens
(four full passes) and after the 8,000-token document (`--skip-memory` to leave this out,
`--memory-only` for these 0.6B-width cases alone).

    nice .venv/bin/python benchmarks/rerank_load.py                # about 10 minutes, 2 cores
    nice .venv/bin/python benchmarks/rerank_load.py --docs 1       # single-document requests
    nice .venv/bin/python benchmarks/rerank_load.py --seconds 3 --rounds 1 --skip-memory
    nice .venv/bin/python benchmarks/rerank_load.py --memory-only --memory-layers 0 \
        --out benchmarks/results/rerank_memory_0.6b.json          # 28 layers, about 6 minutes

Prints a table and writes JSON (default benchmarks/results/rerank_load.json) with
throughput_docs_per_s, unbatched_throughput_docs_per_s, p50_ms, p99_ms, unbatched_p50_ms,
unbatched_p99_ms (each a map "1", "4", "16" -> value), speedup_16, failed_requests (non-200
answers other than the burst's deliberate 429s), deliberate_429, burst, peak_rss_mb (the
highest of every server in the run), peak_rss_mb_by_case and the load average before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from reporting import Column, Table, finish  # benchmarks/ is the script's own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.processes import die_with_parent, interrupt_on_termination  # noqa: E402

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be "
    "river city market history science energy water paper system model network query document "
    "answer capital france germany paris berlin tower museum bridge mountain forest ocean music "
    "theory engine battery storage protein cell climate policy economy language reading search"
).split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def make_bodies(n: int, docs: int, low: int, high: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "query": f"question {i}: {text(rng, 8)}?",
                "documents": [text(rng, rng.randint(low, high)) for _ in range(docs)],
                "return_documents": False,
            }
        ).encode()
        for i in range(n)
    ]


class Server:
    """`python -m reranker` in its own process, on a free port."""

    def __init__(self, model: Path, threads: int, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "RERANKER_MODEL": str(model),
            "RERANKER_PORT": str(self.port),
            "RERANKER_DEVICE": "cpu",
            "RERANKER_THREADS": str(threads),
            "RERANKER_LOG_LEVEL": "warning",
            **{f"RERANKER_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "reranker"], env=env, cwd=ROOT,
                                     preexec_fn=die_with_parent())

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def load(url: str, bodies: list[bytes], clients: int, seconds: float, docs: int) -> dict:
    """`clients` loops posting bodies back to back until `seconds` have passed."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(10**9))
    headers = {"Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client():
            while time.perf_counter() < deadline:
                body = bodies[next(counter) % len(bodies)]
                sent = time.perf_counter()
                response = await client.post("/v1/rerank", content=body, headers=headers)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "docs_per_s": len(latencies) * docs / elapsed,
        "seconds": elapsed,
        "latencies": latencies,
        "requests": len(latencies),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "failed": sum(n for code, n in statuses.items() if code != 200),
        "statuses": statuses,
    }


def merge(windows: list[dict], docs: int) -> dict:
    """Windows of one server and concurrency pooled: docs over total time, pooled latencies."""
    latencies = sorted(x for w in windows for x in w["latencies"])
    statuses: dict[int, int] = {}
    for w in windows:
        for code, n in w["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "docs_per_s": len(latencies) * docs / sum(w["seconds"] for w in windows),
        "requests": len(latencies),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "failed": sum(n for code, n in statuses.items() if code != 200),
        "window_docs_per_s": [round(w["docs_per_s"], 1) for w in windows],
    }


async def burst(url: str, bodies: list[bytes], n: int, attempts: int = 20) -> dict:
    """n requests at once; a refused one waits Retry-After, plus up to as much again at random
    (so that the refused do not all come back at the same instant), and tries again, up to
    `attempts` times. The first refusals are the deliberate 429s; every request must end 200."""
    rng = random.Random(1)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(i):
            body = bodies[i % len(bodies)]
            codes = []
            for _ in range(attempts):
                response = await client.post("/v1/rerank", content=body, headers=headers)
                codes.append(response.status_code)
                if response.status_code != 429:
                    break
                await asyncio.sleep(float(response.headers["retry-after"]) * (1 + rng.random()))
            return codes

        answers = await asyncio.gather(*(one(i) for i in range(n)))
    return {
        "sent": n,
        "ok_at_once": sum(1 for codes in answers if codes[0] == 200),
        "refused_429": sum(1 for codes in answers if codes[0] == 429),
        "ok_after_retry_after": sum(1 for c in answers if c[0] == 429 and c[-1] == 200),
        "retries": sum(len(codes) - 1 for codes in answers),
        "failed": sum(1 for codes in answers if codes[-1] != 200),
    }


def memory_cases(model: Path, label: str, threads: int, budget: int, many: int) -> dict[str, float]:
    """Peak RSS of a fresh server per case: loaded (one warm-up request), `many` documents of
    ~2,000 tokens in one request, one document of ~8,000 tokens."""
    rng = random.Random(7)
    query = "which document talks about the history of paris"
    cases = {
        "loaded": None,
        # These words are one token each with their leading space: ~2,000 and ~8,000 tokens.
        f"{many}_docs_2000_tokens": {
            "query": query,
            "documents": [text(rng, 2000) for _ in range(many)],
        },
        "1_doc_8000_tokens": {"query": query, "documents": [text(rng, 8000)]},
    }
    warm_up = {"query": "warm-up", "documents": ["a short document"]}
    peaks = {}
    for name, body in cases.items():
        server = Server(
            model,
            threads,
            max_body_bytes=64 * 1024 * 1024,
            request_timeout=3600,
            batch_tokens=budget,
        )
        try:
            server.wait_ready()
            httpx.post(f"{server.url}/v1/rerank", json=warm_up, timeout=60).raise_for_status()
            started = time.perf_counter()
            tokens = 0
            if body is not None:
                response = httpx.post(f"{server.url}/v1/rerank", json=body, timeout=3600)
                response.raise_for_status()
                tokens = int(response.headers["x-compute-tokens"])
            seconds = time.perf_counter() - started
            key = f"{label}: {name}"
            peaks[key] = server.peak_rss_mb()
            print(
                f"  {key}: {tokens} tokens in {seconds:.1f} s, peak RSS {peaks[key]:.0f} MB",
                flush=True,
            )
        finally:
            server.stop()
    return peaks


def memory_only(args) -> int:
    """The 0.6B-width memory cases alone, at --memory-layers (0: the full 28)."""
    from testkit.models import build_qwen3_reranker

    label = f"0.6b-{args.memory_layers or 28}-layers"
    with tempfile.TemporaryDirectory(prefix="rerank-memory-") as tmp:
        model = build_qwen3_reranker(Path(tmp) / "model", "0.6b", layers=args.memory_layers or None)
        print(f"memory, {label}, batch_tokens {args.batch_tokens}:", flush=True)
        peaks = memory_cases(model, label, args.threads, args.batch_tokens, 16)
    report = {
        "model_shape": f"Qwen3 reranker, {label} (random weights)",
        "batch_tokens": args.batch_tokens,
        "threads": args.threads,
        "peak_rss_mb": round(max(peaks.values()), 1),
        "peak_rss_mb_by_case": {k: round(v, 1) for k, v in peaks.items()},
    }
    finish(args.out, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="0.6b", choices=["tiny", "small", "0.6b"])
    parser.add_argument("--layers", type=int, default=4, help="depth (0 = the shape's own)")
    parser.add_argument("--docs", type=int, default=3, help="documents per request")
    parser.add_argument("--words", default="5-15", help="words per document, low-high")
    parser.add_argument("--seconds", type=float, default=8, help="per measurement window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per server and level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument(
        "--memory-layers",
        type=int,
        default=2,
        help="depth of the 0.6B-shape memory model (0 = all 28)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only the 0.6B-shape memory cases (JSON to --out: peak_rss_mb_by_case)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rerank_load.json")
    args = parser.parse_args(argv)
    interrupt_on_termination()  # SIGTERM and SIGHUP clean up as Ctrl-C does

    from testkit.models import build_qwen3_reranker

    if args.memory_only:
        return memory_only(args)
    low, high = (int(x) for x in args.words.split("-"))
    levels = [int(c) for c in args.concurrency.split(",")]
    bodies = make_bodies(256, args.docs, low, high, args.seed)
    load_before = os.getloadavg()
    report: dict = {
        "model_shape": f"Qwen3 reranker, {args.shape} shape (random weights)",
        "layers": args.layers,
        "documents_per_request": args.docs,
        "words_per_document": args.words,
        "seconds_per_window": args.seconds,
        "windows_per_level": args.rounds,
        "threads": args.threads,
        "batch_tokens": args.batch_tokens,
        "max_queue": args.max_queue,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    peaks: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rerank-load-") as tmp:
        model = build_qwen3_reranker(Path(tmp) / "model", args.shape, layers=args.layers or None)
        servers = {
            mode: Server(
                model,
                args.threads,
                batch_requests=str(mode == "batched").lower(),
                max_queue=args.max_queue,
                batch_tokens=args.batch_tokens,
                request_timeout=600,
            )
            for mode in ("batched", "unbatched")
        }
        try:
            for server in servers.values():
                server.wait_ready()
                asyncio.run(load(server.url, bodies, 4, 2, args.docs))  # warm-up
            # Both servers are up but only one is loaded at a time; windows alternate between
            # them so that a change in the machine's load hits both alike.
            windows: dict[str, dict[int, list[dict]]] = {
                m: {c: [] for c in levels} for m in servers
            }
            for c in levels:
                for _ in range(args.rounds):
                    for mode, server in servers.items():
                        r = asyncio.run(load(server.url, bodies, c, args.seconds, args.docs))
                        windows[mode][c].append(r)
                        print(
                            f"{mode:>9} {c:>3} clients: {r['docs_per_s']:8.1f} docs/s "
                            f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                            f"statuses {r['statuses']}",
                            flush=True,
                        )
            results = {
                mode: {c: merge(w, args.docs) for c, w in per.items()}
                for mode, per in windows.items()
            }
            report["burst"] = asyncio.run(burst(servers["batched"].url, bodies, 4 * args.max_queue))
            print(f"burst of {4 * args.max_queue}: {report['burst']}")
            for mode, server in servers.items():
                peaks[f"load_{mode}"] = server.peak_rss_mb()
        finally:
            for server in servers.values():
                server.stop()
        if not args.skip_memory:
            # The small shape reads 1,000 long documents in minutes on two cores; the 0.6B
            # shape (real width, fewer layers) shows the activations at the real width.
            for shape, layers, many in (("small", None, 1000), ("0.6b", args.memory_layers, 16)):
                label = shape if layers is None else f"{shape}-{layers or 28}-layers"
                mem_model = build_qwen3_reranker(
                    Path(tmp) / f"memory-{label}", shape, layers=layers
                )
                print(f"memory, {label}, batch_tokens {args.batch_tokens}:", flush=True)
                peaks.update(memory_cases(mem_model, label, args.threads, args.batch_tokens, many))
                shutil.rmtree(mem_model)
    load_after = os.getloadavg()

    def per_level(mode: str, key: str) -> dict[str, float]:
        return {str(c): round(results[mode][c][key], 2) for c in levels}

    report.update(
        throughput_docs_per_s=per_level("batched", "docs_per_s"),
        unbatched_throughput_docs_per_s=per_level("unbatched", "docs_per_s"),
        p50_ms=per_level("batched", "p50_ms"),
        p99_ms=per_level("batched", "p99_ms"),
        unbatched_p50_ms=per_level("unbatched", "p50_ms"),
        unbatched_p99_ms=per_level("unbatched", "p99_ms"),
        failed_requests=sum(r["failed"] for mode in results.values() for r in mode.values())
        + report["burst"]["failed"],
        deliberate_429=report["burst"]["refused_429"],
        peak_rss_mb=round(max(peaks.values()), 1),
        peak_rss_mb_by_case={k: round(v, 1) for k, v in peaks.items()},
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in load_after],
    )
    top = str(max(levels))
    report[f"speedup_{top}"] = round(
        report["throughput_docs_per_s"][top] / report["unbatched_throughput_docs_per_s"][top], 2
    )

    report["windows_docs_per_s"] = {
        mode: {str(c): results[mode][c]["window_docs_per_s"] for c in levels} for mode in results
    }
    columns = [
        Column("clients", 8),
        Column("batched docs/s", 15, before=" | "),
        Column("p50 ms", 8, before=" "),
        Column("p99 ms", 8, before=" "),
        Column("unbatched docs/s", 17, before=" | "),
        Column("p50 ms", 8, before=" "),
        Column("p99 ms", 8, before=" "),
        Column("ratio", 6, before=" | "),
    ]
    rows = []
    for c in levels:
        row = [str(c)]
        for mode in ("batched", "unbatched"):
            r = results[mode][c]
            row += [f"{r['docs_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]
        ratio = results["batched"][c]["docs_per_s"] / results["unbatched"][c]["docs_per_s"]
        rows.append(row + [f"{ratio:.2f}x"])
    finish(
        args.out,
        report,
        title=f"{args.shape} shape, {args.docs} docs of {args.words} words per request",
        table=Table(columns, rows),
        notes=[
            f"failed requests {report['failed_requests']}, "
            f"deliberate 429 {report['deliberate_429']} "
            f"(then 200 after Retry-After: {report['burst']['ok_after_retry_after']}, "
            f"{report['burst']['retries']} retries)",
            "peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()),
            f"load average before {report['load_average_before']}, "
            f"after {report['load_average_after']}",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
