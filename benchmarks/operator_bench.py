"""ModelService operator benchmark on the local control plane (tests/cluster).

Runs `python -m modelservice` as a local process against the cluster of KUBECONFIG (default: the
test control plane's, .cache/cluster/kubeconfig; start it with `tests/cluster/cluster.sh up`) and
measures, in a fresh namespace:

  apply_to_deployment_s  median time from `kubectl apply` of a ModelService until its Deployment
                         exists (--samples of them, one at a time)
  converge_100_s         time from applying 100 ModelServices at once until all are Ready
  idle_writes_per_min    the operator's API writes during an idle minute with those 100
                         ModelServices in place, from the apiserver's apiserver_request_total:
                         writes (POST/PUT/PATCH/APPLY/DELETE) on modelservices, deployments and
                         services, less those of the two other writers of these objects, which
                         the operator never makes: DELETEs (the garbage collector removing the
                         children of deleted ModelServices) and deployments/status (the
                         Deployment controller). Before the 100 are applied, the benchmark also
                         waits for the collector to finish with the children of the first phase,
                         so its DELETEs do not trickle into the idle minute.
                         idle_other_writes_by_resource shows what the others wrote.

Prints a table (measured next to the target) and writes JSON (--out).

    .venv/bin/python benchmarks/operator_bench.py --out .cache/operator_bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from testkit.processes import die_with_parent, interrupt_on_termination

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "charts" / "embedding-images" / "crds" / "modelservices.yaml"
API = "serving.embedding-images.io/v1alpha1"
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
WATCHED = {"modelservices", "deployments", "services"}
# Writes on WATCHED that are not the operator's: it never deletes (the garbage collector removes
# the children of a deleted ModelService) and never writes a Deployment's status.
NOT_THE_OPERATOR = ({"DELETE"}, {"deployments/status"})
TARGETS = {"apply_to_deployment_s": ("<", 1.0), "converge_100_s": ("<", 60.0), "idle_writes_per_min": ("=", 0)}


def kubectl(env: dict, *args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["kubectl", *args], env=env, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def modelservice(name: str) -> dict:
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name},
            "spec": {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "cpu"}}


def write_counts(env: dict) -> dict[tuple[str, str], float]:
    """apiserver_request_total of write verbs on the watched resources, by (verb, resource)."""
    counts: dict[tuple[str, str], float] = {}
    pattern = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
    for line in kubectl(env, "get", "--raw", "/metrics").splitlines():
        m = pattern.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if labels.get("verb") in WRITE_VERBS and labels.get("resource") in WATCHED:
            resource = labels["resource"] + ("/" + labels["subresource"] if labels.get("subresource") else "")
            key = (labels["verb"], resource)
            counts[key] = counts.get(key, 0.0) + float(m["value"])
    return counts


def is_operators(verb: str, resource: str) -> bool:
    verbs, resources = NOT_THE_OPERATOR
    return verb not in verbs and resource not in resources


def children_left(env: dict, ns: str) -> bool:
    """Whether the namespace still holds Deployments, ReplicaSets, Pods or Services."""
    return kubectl(env, "get", "deployments,replicasets,pods,services", "-n", ns, "-o", "name").strip() != ""


def wait(what: str, probe, timeout: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", str(ROOT / ".cache/cluster/kubeconfig")))
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--out", default=str(ROOT / ".cache" / "operator_bench.json"))
    args = parser.parse_args()
    interrupt_on_termination()  # SIGTERM and SIGHUP clean up as Ctrl-C does
    env = {**os.environ, "KUBECONFIG": args.kubeconfig,
           "PATH": f"{ROOT / '.cache' / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kubectl(env, "wait", "--for=condition=Established", "crd/modelservices.serving.embedding-images.io")
    ns = f"msvc-bench-{uuid.uuid4().hex[:6]}"
    kubectl(env, "create", "namespace", ns)
    log = open(ROOT / ".cache" / "operator_bench.log", "wb")
    operator = subprocess.Popen([sys.executable, "-m", "modelservice", f"--namespace={ns}"], env=env,
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent())
    try:
        time.sleep(3)  # operator start-up and first watch
        # 1. apply -> Deployment, one at a time
        samples = []
        for i in range(args.samples):
            name = f"single-{i}"
            start = time.monotonic()
            kubectl(env, "apply", "-n", ns, "-f", "-", input=json.dumps(modelservice(name)))
            wait(f"Deployment {name}", lambda: kubectl(env, "get", "deployment", name, "-n", ns,
                                                       "-o", "name", check=False).strip() != "", 30)
            samples.append(time.monotonic() - start)
        kubectl(env, "delete", "modelservices", "--all", "-n", ns, "--wait=true")
        gc_s = wait("the garbage collector to delete the children", lambda: not children_left(env, ns),
                    timeout=300, interval=0.5)

        # 2. 100 at once -> all Ready
        items = {"apiVersion": "v1", "kind": "List", "items": [modelservice(f"ms-{i:03d}") for i in range(args.count)]}
        start = time.monotonic()
        kubectl(env, "apply", "-n", ns, "-f", "-", input=json.dumps(items))

        def all_ready() -> bool:
            out = json.loads(kubectl(env, "get", "modelservices", "-n", ns, "-o", "json"))["items"]
            return len(out) == args.count and all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in (m.get("status") or {}).get("conditions") or [])
                for m in out)
        wait(f"{args.count} ModelServices Ready", all_ready, timeout=600, interval=0.5)
        converge = time.monotonic() - start

        # 3. an idle minute
        time.sleep(5)  # let the last status writes and rollouts settle
        before = write_counts(env)
        time.sleep(args.idle_seconds)
        after = write_counts(env)
        idle = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        ours = {f"{verb} {resource}": n for (verb, resource), n in idle.items() if is_operators(verb, resource)}
        others = {f"{verb} {resource}": n for (verb, resource), n in idle.items() if not is_operators(verb, resource)}
        idle_per_min = sum(ours.values()) * 60.0 / args.idle_seconds
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        operator.wait(timeout=30)
        kubectl(env, "delete", "namespace", ns, "--wait=false", check=False)

    result = {
        "apply_to_deployment_s": round(statistics.median(samples), 4),
        "apply_to_deployment_samples_s": [round(s, 4) for s in samples],
        "converge_100_s": round(converge, 3),
        "converge_count": args.count,
        "idle_writes_per_min": round(idle_per_min, 2),
        "idle_writes_by_resource": ours,
        "idle_other_writes_by_resource": others,
        "garbage_collection_s": round(gc_s, 3),
    }
    print(f"{'figure':<24} {'measured':>10} {'target':>10}")
    for key, (op, target) in TARGETS.items():
        ok = result[key] < target if op == "<" else result[key] == target
        print(f"{key:<24} {result[key]:>10} {op + ' ' + str(target):>10} {'ok' if ok else 'MISSED'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
