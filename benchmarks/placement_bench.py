"""GPU placement benchmark: whole GPUs against shares of GPUs, on the local control plane.

A seeded random mix of realistic ModelServices (MiniLM, bge-small/base/large/m3,
Qwen3-Embedding-0.6B/4B, Qwen3-Reranker-0.6B/4B/8B, replicas 1-3, each pinned with gpu.product to
one of T4, L4, A100-80GB, H100 whose memory holds the model's estimate) is applied twice to a
simulated fleet of GPU nodes the benchmark adds to the cluster (kwok nodes labelled as GPU
Feature Discovery would, 4 GPUs a T4 or L4 node, 8 an A100 or H100 node, as many nodes of each
product as whole-GPU placement needs): once as today (whole GPUs, gpu.sharing unset), once with
`gpu.sharing.mode: Shared` and the operator's `--gpu-sharing=dra`, the fleet's GPUs published as
the NVIDIA DRA driver would (testkit/dra.py) and the real kube-scheduler allocating.

  gpus_whole                GPUs the whole-GPU placement takes (one per scheduled replica)
  gpus_shared               distinct GPUs the shares' claims were allocated on
  gpus_lower_bound          sum over products of ceil(shares' memory on it / its GPU memory)
  pending                   replicas of the shared run left unscheduled
  pending_whole             replicas of the whole-GPU run left unscheduled
  seconds_to_all_scheduled  from applying the shared mix to every replica bound to a node

Needs the control plane with DRAConsumableCapacity (tests/cluster/cluster.sh up, whose
kwokctl.yaml turns it on). Prints a table (measured next to the targets of issue 25) and writes
JSON (--out).

    .venv/bin/python benchmarks/placement_bench.py            # writes benchmarks/results/placement.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from modelservice.placement.estimate import estimate_memory
from reporting import finish  # benchmarks/ is the script's own folder
from testkit.dra import published
from testkit.processes import die_with_parent

ROOT = Path(__file__).resolve().parents[1]
CRD_FILES = [ROOT / "charts" / "embedding-images" / "crds" / f"{p}.yaml" for p in ("modelservices", "modelcaches")]
API = "serving.embedding-images.io/v1alpha1"
FLEET_LABEL = "placement-bench.embedding-images.io/fleet"

# product: (GFD labels, GPUs a node, instance type)
PRODUCTS = {
    "Tesla-T4": ({"family": "turing", "major": "7", "minor": "5", "memory": "15360"}, 4, "g4dn.12xlarge"),
    "NVIDIA-L4": ({"family": "ada-lovelace", "major": "8", "minor": "9", "memory": "23034"}, 4, "g6.12xlarge"),
    "NVIDIA-A100-SXM4-80GB": ({"family": "ampere", "major": "8", "minor": "0", "memory": "81920"}, 8, "p4de.24xlarge"),
    "NVIDIA-H100-80GB-HBM3": ({"family": "hopper", "major": "9", "minor": "0", "memory": "81559"}, 8, "p5.48xlarge"),
}
PRODUCT_WEIGHTS = {"Tesla-T4": 1, "NVIDIA-L4": 2, "NVIDIA-A100-SXM4-80GB": 1, "NVIDIA-H100-80GB-HBM3": 1}
# model: (task, engine, weight in the mix): small encoders are the common case.
MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("embed", "tei", 2),
    "BAAI/bge-small-en-v1.5": ("embed", "tei", 3),
    "BAAI/bge-base-en-v1.5": ("embed", "tei", 2),
    "BAAI/bge-large-en-v1.5": ("embed", "tei", 1),
    "BAAI/bge-m3": ("embed", "tei", 2),
    "Qwen/Qwen3-Embedding-0.6B": ("embed", "tei", 2),
    "Qwen/Qwen3-Embedding-4B": ("embed", "tei", 1),
    "Qwen/Qwen3-Reranker-0.6B": ("rerank", "reranker", 2),
    "Qwen/Qwen3-Reranker-4B": ("rerank", "reranker", 1),
    "Qwen/Qwen3-Reranker-8B": ("rerank", "reranker", 1),
}


def kubectl(env: dict, *args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["kubectl", *args], env=env, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def get(env: dict, *args: str) -> dict:
    return json.loads(kubectl(env, "get", *args, "-o", "json"))


def mix(seed: int, count: int) -> list[dict]:
    """The ModelServices of the benchmark: name, model, task, engine, product, replicas, share."""
    rng = random.Random(seed)
    names = list(MODELS)
    out = []
    for i in range(count):
        model = rng.choices(names, weights=[MODELS[m][2] for m in names])[0]
        task, engine, _ = MODELS[model]
        share = estimate_memory(model, engine).total_mib
        fits = [p for p in PRODUCTS if int(PRODUCTS[p][0]["memory"]) >= share]
        product = rng.choices(fits, weights=[PRODUCT_WEIGHTS[p] for p in fits])[0]
        out.append({"name": f"ms-{i:02d}", "model": model, "task": task, "engine": engine, "product": product,
                    "replicas": rng.randint(1, 3), "share": share})
    return out


def fleet(services: list[dict]) -> list[dict]:
    """Simulated GPU nodes, as many of each product as whole-GPU placement needs."""
    need = Counter()
    for s in services:
        need[s["product"]] += s["replicas"]
    nodes = []
    for product, replicas in sorted(need.items()):
        labels, gpus, instance = PRODUCTS[product]
        for i in range(math.ceil(replicas / gpus)):
            name = f"bench-{labels['family']}-{i}"
            nodes.append({"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok",
                           "node.kubernetes.io/instance-type": instance, FLEET_LABEL: "true",
                           "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": product,
                           "nvidia.com/gpu.family": labels["family"],
                           "nvidia.com/gpu.compute.major": labels["major"],
                           "nvidia.com/gpu.compute.minor": labels["minor"],
                           "nvidia.com/gpu.memory": labels["memory"], "nvidia.com/gpu.count": str(gpus)}},
                "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"cpu": "192", "memory": "2048Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
                           "capacity": {"cpu": "192", "memory": "2048Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}}})
    return nodes


def manifest(s: dict, shared: bool) -> dict:
    gpu: dict = {"product": s["product"]}
    if shared:
        gpu["sharing"] = {"mode": "Shared"}
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": s["name"]},
            "spec": {"task": s["task"], "model": s["model"], "replicas": s["replicas"], "gpu": gpu,
                     "nodeSelector": {FLEET_LABEL: "true"}}}


def scheduled(env: dict, ns: str) -> tuple[int, int]:
    pods = get(env, "pods", "-n", ns)["items"]
    bound = sum(1 for p in pods if p["spec"].get("nodeName"))
    return bound, len(pods)


def run(env: dict, ns: str, services: list[dict], shared: bool, settle_s: float) -> dict:
    """Applies the mix, waits until every replica is bound (or nothing moved for settle_s),
    returns what was placed."""
    want = sum(s["replicas"] for s in services)
    start = time.monotonic()
    items = {"apiVersion": "v1", "kind": "List", "items": [manifest(s, shared) for s in services]}
    kubectl(env, "apply", "-n", ns, "-f", "-", input=json.dumps(items))
    last, last_change, all_at = -1, time.monotonic(), None
    while True:
        bound, total = scheduled(env, ns)
        if bound != last:
            last, last_change = bound, time.monotonic()
        if bound == want and total == want:
            all_at = time.monotonic() - start
            break
        if time.monotonic() - last_change > settle_s and total >= want:
            break
        time.sleep(0.5)
    pods = get(env, "pods", "-n", ns)["items"]
    result = {"bound": last, "pending": want - last, "seconds": round(all_at, 2) if all_at is not None else None}
    if shared:
        devices = set()
        for claim in get(env, "resourceclaims", "-n", ns)["items"]:
            for r in ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results", []):
                devices.add((r["pool"], r["device"]))
        result["gpus"] = len(devices)
    else:
        result["gpus"] = sum(int(p["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
                             for p in pods if p["spec"].get("nodeName"))
    return result


def lower_bound(services: list[dict]) -> int:
    memory = Counter()
    for s in services:
        memory[s["product"]] += s["share"] * s["replicas"]
    return sum(math.ceil(m / int(PRODUCTS[p][0]["memory"])) for p, m in memory.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", str(ROOT / ".cache/cluster/kubeconfig")))
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--count", type=int, default=30, help="ModelServices in the mix")
    parser.add_argument("--settle-seconds", type=float, default=20.0,
                        help="give up waiting for the rest after this long without a new binding")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "placement.json"))
    args = parser.parse_args()
    env = {**os.environ, "KUBECONFIG": args.kubeconfig,
           "PATH": f"{ROOT / '.cache' / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    services = mix(args.seed, args.count)
    nodes = fleet(services)
    dra = published(nodes)
    for path in CRD_FILES:
        kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(path))
    kubectl(env, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes + dra}))
    ns = f"placement-bench-{uuid.uuid4().hex[:6]}"
    kubectl(env, "create", "namespace", ns)
    (ROOT / ".cache").mkdir(exist_ok=True)
    log = open(ROOT / ".cache" / "placement_bench.log", "wb")
    operator = subprocess.Popen([sys.executable, "-m", "modelservice", f"--namespace={ns}", "--gpu-sharing=dra"],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent())  # never outlives the benchmark
    try:
        time.sleep(3)  # operator start-up and first watch
        whole = run(env, ns, services, shared=False, settle_s=args.settle_seconds)
        kubectl(env, "delete", "modelservices", "--all", "-n", ns, "--wait=true")
        while get(env, "pods", "-n", ns)["items"]:
            time.sleep(0.5)
        shared = run(env, ns, services, shared=True, settle_s=args.settle_seconds)
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        operator.wait(timeout=30)
        kubectl(env, "delete", "namespace", ns, "--wait=false", check=False)
        for obj in nodes + dra:
            kubectl(env, "delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False)

    bound = lower_bound(services)
    result = {
        "gpus_whole": whole["gpus"],
        "gpus_shared": shared["gpus"],
        "gpus_lower_bound": bound,
        "pending": shared["pending"],
        "pending_whole": whole["pending"],
        "seconds_to_all_scheduled": shared["seconds"],
        "seconds_to_all_scheduled_whole": whole["seconds"],
        "replicas": sum(s["replicas"] for s in services),
        "modelservices": len(services),
        "fleet": dict(Counter(n["metadata"]["labels"]["nvidia.com/gpu.product"] for n in nodes)),
        "seed": args.seed,
        "mix": services,
    }
    checks = [
        ("gpus_shared / gpus_lower_bound", round(result["gpus_shared"] / bound, 3), "<= 1.25",
         result["gpus_shared"] <= 1.25 * bound),
        ("gpus_whole / gpus_shared", round(result["gpus_whole"] / max(result["gpus_shared"], 1), 2), ">= 3",
         result["gpus_whole"] >= 3 * result["gpus_shared"]),
        ("pending (shared) - pending (whole)", result["pending"] - result["pending_whole"], "<= 0",
         result["pending"] <= result["pending_whole"]),
    ]
    keys = ("gpus_whole", "gpus_shared", "gpus_lower_bound", "pending", "pending_whole",
            "seconds_to_all_scheduled", "seconds_to_all_scheduled_whole")
    finish(Path(args.out), result,
           title=(f"{result['modelservices']} ModelServices, {result['replicas']} replicas, seed {args.seed}; "
                  "fleet " + ", ".join(f"{n} x {p}" for p, n in result["fleet"].items())),
           notes=[f"{key:<32} {result[key]!s:>8}" for key in keys]
           + [f"{name:<32} {value!s:>8}  target {target:<7} {'ok' if ok else 'MISSED'}"
              for name, value, target, ok in checks])
    return 0


if __name__ == "__main__":
    sys.exit(main())
