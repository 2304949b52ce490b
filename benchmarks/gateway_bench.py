"""Gateway benchmark: one fast backend measured directly and through the gateway, one run.

The backend is the TEI stand-in (gateway/testing.py) in a process of its own, answering
`POST /v1/embeddings` for one short text at once, so what the "through the gateway" figures
add is the gateway's own cost. The gateway runs as `python -m gateway` with a models file
naming that backend. Closed-loop clients (aiohttp, in this process) send requests back to
back for `--seconds` at each of 1, 16 and 64 concurrent clients, first straight to the backend,
then through the gateway by model name.

    .venv/bin/python benchmarks/gateway_bench.py

Prints a table and writes JSON (default benchmarks/results/gateway.json) with direct_rps and
gateway_rps (maps by concurrency), added_latency_p50_ms and added_latency_p99_ms (gateway minus
direct, at 16 clients), failed_requests (any non-200 or error, both paths) and
gateway_peak_rss_mb (the gateway process's VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.testing import free_port, start_process, start_tei_process, write_models_file  # noqa: E402
from reporting import Column, Table, finish  # noqa: E402  (benchmarks/ is the script's own folder)

CONCURRENCY = (1, 16, 64)


async def load(url: str, body: dict, clients: int, seconds: float) -> tuple[list[float], int]:
    """Latencies (seconds) of every request answered 200 and the count of failures."""
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client(stop_at: float):
            nonlocal failures
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    async with session.post(url, json=body) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        # Warm-up: open the connections first.
        await asyncio.gather(*(client(time.perf_counter() + 0.3) for _ in range(clients)))
        latencies.clear()
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(client(stop_at) for _ in range(clients)))
    return latencies, failures


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency and path")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gateway.json")
    args = parser.parse_args(argv)
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    with tempfile.TemporaryDirectory() as tmp:
        backend = start_tei_process("embedding")
        port = free_port()
        models = write_models_file(Path(tmp) / "models.json", [
            {"name": "bench", "task": "embed", "engine": "tei", "model_id": "bench/embedder",
             "endpoints": [backend.address]}])
        gateway = start_process("gateway", {"GATEWAY_MODELS_FILE": str(models),
                                            "GATEWAY_HOST": "127.0.0.1",
                                            "GATEWAY_PORT": str(port),
                                            "GATEWAY_LOG_LEVEL": "warning"}, port)
        try:
            results = {}
            for clients in CONCURRENCY:
                for path, url, body in (
                    ("direct", f"{backend.url}/v1/embeddings", {"input": "a short text"}),
                    ("gateway", f"{gateway.url}/v1/embeddings",
                     {"model": "bench", "input": "a short text"}),
                ):
                    latencies, failed = asyncio.run(load(url, body, clients, args.seconds))
                    results[path, clients] = (latencies, failed)
            rss = peak_rss_mb(gateway.process.pid)
        finally:
            gateway.stop()
            backend.stop()

    def rps(path, clients):
        return len(results[path, clients][0]) / args.seconds

    def ms(path, clients, q):
        return percentile(results[path, clients][0], q) * 1000

    report = {
        "direct_rps": {str(c): round(rps("direct", c), 1) for c in CONCURRENCY},
        "gateway_rps": {str(c): round(rps("gateway", c), 1) for c in CONCURRENCY},
        "added_latency_p50_ms": round(ms("gateway", 16, 50) - ms("direct", 16, 50), 3),
        "added_latency_p99_ms": round(ms("gateway", 16, 99) - ms("direct", 16, 99), 3),
        "failed_requests": sum(failed for _, failed in results.values()),
        "gateway_peak_rss_mb": round(rss, 1),
        "cpu_count": os.cpu_count(),
    }
    table = Table(
        [Column("clients", 7), Column("direct rps", 11, before=" | "),
         Column("gateway rps", 12, before=" | "), Column("direct p50 ms", 13, before=" | "),
         Column("gateway p50 ms", 14, before=" | "), Column("direct p99 ms", 13, before=" | "),
         Column("gateway p99 ms", 14, before=" | ")],
        [[str(c), f"{rps('direct', c):.0f}", f"{rps('gateway', c):.0f}",
          f"{ms('direct', c, 50):.2f}", f"{ms('gateway', c, 50):.2f}",
          f"{ms('direct', c, 99):.2f}", f"{ms('gateway', c, 99):.2f}"] for c in CONCURRENCY],
    )
    finish(args.out, report, title="Gateway vs direct, POST /v1/embeddings (TEI stand-in)",
           table=table, notes=[
               f"added latency at 16 clients: p50 {report['added_latency_p50_ms']:.2f} ms, "
               f"p99 {report['added_latency_p99_ms']:.2f} ms",
               f"failed requests: {report['failed_requests']}; gateway peak RSS "
               f"{report['gateway_peak_rss_mb']:.0f} MB"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
