"""Autoscaling benchmark: a load trace against real reranker processes behind the gateway.

On the local control plane (KUBECONFIG, default .cache/cluster/kubeconfig; start it with
`tests/cluster/cluster.sh up`) it runs the stack of the autoscaling cluster test
(testkit/localstack.py: the operator serving one fresh namespace, the local pod runner's reranker
processes on a tiny model, the gateway; every request on 127.0.0.1) and one reranker
ModelService with short windows, then plays a trace: idle, a step to --clients closed-loop
clients, a plateau, a drop to none, idle until the model is at zero replicas; then one request at
zero. spec.replicas is sampled every 0.2 s. Figures (JSON, --out; a PNG of demand and replicas
over time, --plot):

  scale_up_seconds       from the load step to the first spec.replicas above the starting count
  cold_start_seconds     the request at zero replicas, sent to answered, less its pod's own start
                         (the runner's process, spawned to healthy)
  flaps_on_plateau       spec.replicas changes during the plateau once it first reached the ideal
                         count (all changes after the first scale-up when it never did)
  failed_requests        answers other than 200, the request at zero included
  replica_seconds        the integral of spec.replicas from the step to the end of the trace
  ideal_replica_seconds  the integral of ceil(demand / targetRequests), clamped to [min, max],
                         over the same time (demand: the clients sending)

    .venv/bin/python benchmarks/autoscale_bench.py --out .cache/autoscale_bench.json --plot .cache/autoscale_bench.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import kubernetes

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from reporting import Column, Table, finish  # noqa: E402  (a sibling module)

from testkit.localstack import ClosedLoopLoad, rerank, start_stack  # noqa: E402

CRD_FILE = ROOT / "charts" / "embedding-images" / "crds" / "modelservices.yaml"
GROUP, VERSION, PLURAL = "serving.embedding-images.io", "v1alpha1", "modelservices"
DOCUMENTS = [f"Document {i}: Paris is the capital of France, and the Seine runs through it." for i in range(24)]
TARGETS = {"scale_up_seconds": "<= 2 scrape intervals", "cold_start_seconds": "<= 1", "flaps_on_plateau": "0",
           "failed_requests": "0", "replica_seconds": "<= 1.3 x ideal"}


def kubectl(env: dict, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(["kubectl", *args], env=env, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


class ReplicaSampler:
    """spec.replicas every `interval` seconds in a thread: (monotonic time, replicas)."""

    def __init__(self, api: kubernetes.client.CustomObjectsApi, namespace: str, interval: float = 0.2):
        self.api, self.namespace, self.interval = api, namespace, interval
        self.samples: list[tuple[float, int]] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                ms = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, "qwen")
                self.samples.append((time.monotonic(), int(ms["spec"].get("replicas", 1))))
            except kubernetes.client.ApiException:
                pass
            self._stopped.wait(self.interval)

    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else -1

    def start(self) -> "ReplicaSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)


def wait(what: str, probe, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def integral(steps: list[tuple[float, float]], start: float, end: float) -> float:
    """The integral over [start, end] of the step function that takes each value from its time on."""
    total = 0.0
    for (t, value), (t_next, _) in zip(steps, steps[1:] + [(end, 0)]):
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += value * (hi - lo)
    return total


def plot(path: Path, t0: float, replicas: list[tuple[float, int]], demand: list[tuple[float, float]],
         target: float, end: float) -> None:
    import matplotlib  # noqa: PLC0415  (only for --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for steps, label, style in ((demand, f"demand / targetRequests ({target:g})", "--"), (replicas, "spec.replicas", "-")):
        xs = [t - t0 for t, _ in steps] + [end - t0]
        ys = [v / (target if "demand" in label else 1) for _, v in steps]
        ax.step(xs, ys + ys[-1:], where="post", linestyle=style, label=label)
    ax.set_xlabel("seconds")
    ax.set_ylabel("replicas")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--target", type=float, default=1.0, help="targetRequests")
    parser.add_argument("--delay", type=int, default=6, help="scaleDownDelaySeconds")
    parser.add_argument("--window", type=int, default=3, help="windowSeconds")
    parser.add_argument("--interval", type=int, default=1, help="scrapeIntervalSeconds")
    parser.add_argument("--idle", type=float, default=5, help="seconds of idle before the step")
    parser.add_argument("--plateau", type=float, default=40, help="seconds of load")
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "autoscale_bench.json")
    parser.add_argument("--plot", type=Path, default=None, help="a PNG of demand and replicas over time")
    args = parser.parse_args(argv)

    kubeconfig = os.environ.get("KUBECONFIG") or str(ROOT / ".cache" / "cluster" / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": f"{ROOT / '.cache' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kubectl(env, "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s")
    ns = f"asb-{uuid.uuid4().hex[:8]}"
    kubectl(env, "create", "namespace", ns)
    from testkit.models import build_qwen3_reranker  # noqa: PLC0415  (torch: only once the cluster answers)

    work = Path(tempfile.mkdtemp(prefix="autoscale-bench-"))
    model_dir = build_qwen3_reranker(work / "model", "tiny")
    stack = start_stack(env, ns, ["qwen"], model_dir, work)
    sampler = None
    try:
        policy = {"minReplicas": 0, "maxReplicas": args.max_replicas, "targetRequests": args.target,
                  "scaleDownDelaySeconds": args.delay, "windowSeconds": args.window,
                  "scrapeIntervalSeconds": args.interval}
        kubectl(env, "apply", "-n", ns, "-f", "-", input=json.dumps(
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelService", "metadata": {"name": "qwen"},
             "spec": {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "cpu", "replicas": 1,
                      "engineArgs": {"maxDocuments": 64}, "autoscaling": policy}}))
        wait("the first pod's process", lambda: stack.runner.running, 180)
        api = kubernetes.client.CustomObjectsApi(kubernetes.config.new_client_from_config(config_file=kubeconfig))
        sampler = ReplicaSampler(api, ns).start()
        t0 = time.monotonic()
        demand = [(t0, 0.0)]
        time.sleep(args.idle)
        start_count = sampler.latest()
        step = time.monotonic()
        demand.append((step, float(args.clients)))
        load = ClosedLoopLoad(f"{stack.url}/v2/rerank", {"model": "qwen", "query": "capital of France",
                                                         "documents": DOCUMENTS}, args.clients,
                              max_seconds=args.plateau + 60).start()
        time.sleep(args.plateau)
        answers = load.stop()
        drop = time.monotonic()
        demand.append((drop, 0.0))
        wait("zero replicas", lambda: sampler.latest() == 0, args.delay * (args.max_replicas + 2) * 2 + 60)
        end = time.monotonic()
        wait("every process to stop", lambda: not stack.runner.running, 60)
        sent = time.monotonic()
        status, _ = rerank(stack.url, "qwen", DOCUMENTS[:3])
        answered = time.monotonic()
        pod_start = next(iter(stack.runner.running.values())).start_seconds if stack.runner.running else float("nan")
    finally:
        if sampler is not None:
            sampler.stop()
        stack.stop()
        kubectl(env, "delete", "namespace", ns, "--wait=false")

    replicas = [(t, float(r)) for t, r in sampler.samples]
    changes = [(t, r) for (t, r), (_, before) in zip(replicas[1:], replicas) if r != before]
    ideal_count = min(args.max_replicas, max(0, math.ceil(args.clients / args.target)))
    scale_up = next((t - step for t, r in replicas if t >= step and r > start_count), None)
    converged = next((t for t, r in replicas if step <= t < drop and r == ideal_count), None)
    first_up = step + scale_up if scale_up is not None else drop
    on_plateau = [c for c in changes if (converged or first_up) < c[0] < drop]
    ideal = [(t, float(min(args.max_replicas, math.ceil(d / args.target)))) for t, d in demand]
    failed = sum(a.status != 200 for a in answers) + (status != 200)
    report = {
        "scale_up_seconds": round(scale_up, 2) if scale_up is not None else None,
        "cold_start_seconds": round(answered - sent - pod_start, 2),
        "cold_request_seconds": round(answered - sent, 2),
        "pod_start_seconds": round(pod_start, 2),
        "flaps_on_plateau": len(on_plateau),
        "failed_requests": failed,
        "requests": len(answers) + 1,
        "replica_seconds": round(integral(replicas, step, end), 1),
        "ideal_replica_seconds": round(integral(ideal, step, end), 1),
        "trace": {"clients": args.clients, "idle_s": args.idle, "plateau_s": args.plateau,
                  "zero_after_drop_s": round(end - drop, 1), **policy},
        "replica_changes": [[round(t - t0, 2), int(r)] for t, r in changes],
    }
    if args.plot is not None:
        plot(args.plot, t0, [(t, r) for t, r in replicas], demand, args.target, end)
    rows = [[key, str(report[key]), TARGETS.get(key, "")] for key in
            ("scale_up_seconds", "cold_start_seconds", "flaps_on_plateau", "failed_requests", "replica_seconds",
             "ideal_replica_seconds")]
    finish(args.out, report, title=f"autoscaling: {args.clients} clients, target {args.target:g}, "
                                   f"delay {args.delay} s, window {args.window} s, interval {args.interval} s",
           table=Table([Column("figure", 22, "<"), Column("measured", 10), Column("target", 24, "<", "  ")], rows),
           notes=[f"replica changes (s, count): {report['replica_changes']}"]
                 + ([f"plot: {args.plot}"] if args.plot else []))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
