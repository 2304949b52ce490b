"""Gateway benchmark: one fast backend measured directly and through the gateway, one run.

The backend is the TEI stand-in (gateway/testing.py) in a process of its own, answering
`POST /v1/embeddings` for one short text at once, so what the "through the gateway" figures
add is the gateway's own cost. The gateway runs as `python -m gateway` with a models file
naming that backend. Closed-loop clients (aiohttp on uvloop, in this process) send the same
request body back to back at each of 1, 16 and 64 concurrent clients, straight to the backend
and through the gateway by model name. Each path gets `--seconds` at each concurrency, in
`--rounds` slices taken in the order direct, gateway, gateway, direct, ... so that background
load on a shared machine falls on both alike; each slice opens its connections in a warm-up
that is not measured.

    .venv/bin/python benchmarks/gateway_bench.py

Prints a table and writes JSON (default benchmarks/results/gateway.json) with direct_rps and
gateway_rps (maps by concurrency), added_latency_p50_ms and added_latency_p99_ms (gateway minus
direct, at 16 clients), failed_requests (any non-200 or error, both paths),
gateway_peak_rss_mb (the gateway process's VmHWM), and, to say where the CPU goes,
cpu_us_per_request (CPU time of the client, the backend and the gateway process per answered
request, by path and concurrency) and load_average (the machine's 1-minute load average
before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.testing import free_port, start_process, start_tei_process, write_models_file  # noqa: E402
from reporting import Column, Table, finish  # noqa: E402  (benchmarks/ is the script's own folder)

CONCURRENCY = (1, 16, 64)
WARM_UP_SECONDS = 0.3
# The same body both ways: the backend ignores `model`, the gateway routes by it.
BODY = {"model": "bench", "input": "a short text"}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """What one path measured at one concurrency, summed over its slices."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def cpu_us_per_request(self) -> dict[str, float]:
        return {name: round(spent / len(self.latencies) * 1e6, 1)
                for name, spent in self.cpu.items()}


async def load(url: str, clients: int, seconds: float, processes: dict[str, int],
               sample: Sample) -> None:
    """Add to `sample` the latencies of every request answered 200 within `seconds` (after a
    warm-up), the failures, and the CPU each of `processes` spent meanwhile."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client(stop_at: float, latencies: list[float]) -> int:
            failures = 0
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    async with session.post(url, json=BODY) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1
            return failures

        warm_up: list[float] = []
        stop_at = time.perf_counter() + WARM_UP_SECONDS
        sample.failures += sum(await asyncio.gather(*(client(stop_at, warm_up)
                                                      for _ in range(clients))))
        before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        stop_at = started + seconds
        sample.failures += sum(await asyncio.gather(*(client(stop_at, sample.latencies)
                                                      for _ in range(clients))))
        sample.seconds += time.perf_counter() - started
        for name, pid in processes.items():
            sample.cpu[name] = sample.cpu.get(name, 0.0) + cpu_seconds(pid) - before[name]


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
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="measured seconds per concurrency and path")
    parser.add_argument("--rounds", type=int, default=4,
                        help="slices per concurrency and path, alternating their order")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gateway.json")
    args = parser.parse_args(argv)
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    load_before = os.getloadavg()[0]
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
            paths = {
                "direct": (f"{backend.url}/v1/embeddings",
                           {"client": os.getpid(), "backend": backend.process.pid}),
                "gateway": (f"{gateway.url}/v1/embeddings",
                            {"client": os.getpid(), "backend": backend.process.pid,
                             "gateway": gateway.process.pid}),
            }
            results: dict[tuple[str, int], Sample] = {}
            for clients in CONCURRENCY:
                for round_ in range(args.rounds):
                    order = ("direct", "gateway") if round_ % 2 == 0 else ("gateway", "direct")
                    for path in order:
                        url, processes = paths[path]
                        sample = results.setdefault((path, clients), Sample())
                        asyncio.run(load(url, clients, args.seconds / args.rounds, processes,
                                         sample))
            rss = peak_rss_mb(gateway.process.pid)
        finally:
            gateway.stop()
            backend.stop()
    load_after = os.getloadavg()[0]

    def rps(path, clients):
        return results[path, clients].rps

    def ms(path, clients, q):
        return percentile(results[path, clients].latencies, q) * 1000

    report = {
        "direct_rps": {str(c): round(rps("direct", c), 1) for c in CONCURRENCY},
        "gateway_rps": {str(c): round(rps("gateway", c), 1) for c in CONCURRENCY},
        "added_latency_p50_ms": round(ms("gateway", 16, 50) - ms("direct", 16, 50), 3),
        "added_latency_p99_ms": round(ms("gateway", 16, 99) - ms("direct", 16, 99), 3),
        "failed_requests": sum(sample.failures for sample in results.values()),
        "gateway_peak_rss_mb": round(rss, 1),
        "cpu_us_per_request": {
            path: {str(c): results[path, c].cpu_us_per_request() for c in CONCURRENCY}
            for path in paths
        },
        "load_average": [round(load_before, 2), round(load_after, 2)],
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
    cpu = report["cpu_us_per_request"]
    finish(args.out, report, title="Gateway vs direct, POST /v1/embeddings (TEI stand-in)",
           table=table, notes=[
               f"added latency at 16 clients: p50 {report['added_latency_p50_ms']:.2f} ms, "
               f"p99 {report['added_latency_p99_ms']:.2f} ms",
               f"failed requests: {report['failed_requests']}; gateway peak RSS "
               f"{report['gateway_peak_rss_mb']:.0f} MB",
               "CPU us per request at 64 clients: direct " + ", ".join(
                   f"{k} {v:.0f}" for k, v in cpu["direct"]["64"].items()) + "; gateway " +
               ", ".join(f"{k} {v:.0f}" for k, v in cpu["gateway"]["64"].items()),
               f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
