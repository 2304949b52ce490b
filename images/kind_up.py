"""A local kind cluster running the toolkit end to end (the `make kind-up` target).

Builds the CPU images of `make images` that no public registry serves (reranker, operator, gateway),
creates a kind cluster, loads the images into it, installs the chart with the operator, applies
the CPU examples of examples/, waits until every one is Ready and sends each one request through
`kubectl port-forward` (an embed for TEI, a rerank for the reranker).

kind has no GPUs, so the GPU examples are left out. Needs a Docker engine, `kind`, `helm` and
`kubectl`; stops at once with a clear message when one is missing. `--dry-run` prints the
commands and the requests instead.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from build import (
    CHART,
    DEFAULT_EMBEDDING_MODEL,
    REPO,
    VARIANTS,
    build_command,
    build_plan,
    default_registry,
    docker_engine_error,
    load_yaml,
)

EXAMPLES = REPO / "examples"
CHART_DIR = REPO / "charts" / "embedding-images"
EMBED_REQUEST = {"inputs": ["What is Deep Learning?", "Kubernetes schedules pods onto nodes."]}
RERANK_REQUEST = {
    "query": "What is the capital of France?",
    "documents": ["Paris is the capital of France.", "Berlin is the capital of Germany."],
    "top_n": 2,
}


def cpu_examples(directory: Path = EXAMPLES) -> list[tuple[Path, dict]]:
    """The ModelService examples that run without a GPU (spec.accelerator cpu), by file name."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        doc = load_yaml(path)
        if doc.get("kind") == "ModelService" and doc["spec"].get("accelerator") == "cpu":
            found.append((path, doc))
    return found


def smoke_request(doc: dict) -> tuple[str, dict]:
    """The path and JSON body of the one request that shows a ModelService answers."""
    return ("/embed", EMBED_REQUEST) if doc["spec"]["task"] == "embed" else ("/rerank", RERANK_REQUEST)


def check_response(path: str, body: object) -> str:
    """A one-line summary of a smoke response; raises ValueError when its shape is wrong."""
    if path == "/embed":
        if not (isinstance(body, list) and len(body) == len(EMBED_REQUEST["inputs"])
                and all(isinstance(v, list) and v for v in body)):
            raise ValueError(f"/embed answered {str(body)[:200]}")
        return f"{len(body)} embeddings of dimension {len(body[0])}"
    results = body.get("results") if isinstance(body, dict) else None
    if not (isinstance(results, list) and results and all("relevance_score" in r for r in results)):
        raise ValueError(f"/rerank answered {str(body)[:200]}")
    best = results[0]
    return f"best document #{best['index']} with relevance_score {best['relevance_score']:.4f}"


def tool_error(names: list[str]) -> str | None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        return (f"{', '.join(missing)} not found on PATH (kind: https://kind.sigs.k8s.io/docs/"
                "user/quick-start/#installation; helm and kubectl: `make tools`)")
    return None


def run(cmd: list[str], *, dry_run: bool, check: bool = True) -> None:
    print(f"$ {shlex.join(cmd)}", flush=True)
    if not dry_run:
        subprocess.run(cmd, cwd=REPO, check=check)


def port_forward_and_post(kubectl: list[str], name: str, port: int, path: str, payload: dict) -> object:
    """POST payload to path of Service `name` through a kubectl port-forward on a free port."""
    proc = subprocess.Popen(kubectl + ["port-forward", f"svc/{name}", f":{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not match:
            raise RuntimeError(f"kubectl port-forward to {name} failed: {line.strip()}")
        request = urllib.request.Request(
            f"http://127.0.0.1:{match.group(1)}{path}", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    table = load_yaml(VARIANTS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--cluster", default="embedding-images", help="kind cluster name")
    parser.add_argument("--namespace", default="models", help="namespace of the release and examples")
    parser.add_argument("--release", default="embedding-images", help="Helm release name")
    parser.add_argument("--timeout", default="20m", help="how long each ModelService may take to be Ready")
    args = parser.parse_args(argv)

    if not args.dry_run:
        if error := docker_engine_error():
            print(f"make kind-up needs Docker: {error}.\nStart a Docker engine, or run "
                  "`make kind-up DRY_RUN=1` to print the steps.", file=sys.stderr)
            return 2
        if error := tool_error(["kind", "helm", "kubectl"]):
            print(f"make kind-up: {error}", file=sys.stderr)
            return 2

    # The images the cluster cannot pull: the reranker's CPU variant (its tag is the one the
    # operator and the chart take from the variant table), the operator and the gateway.
    plan = build_plan(table, registry=default_registry(table), embedding_model=DEFAULT_EMBEDDING_MODEL,
                      operator_tag=str(load_yaml(CHART)["appVersion"]),
                      components=("reranker", "operator", "gateway"), variants=("cpu",))
    operator_image = next(b.tag for b in plan if b.component == "operator")
    gateway_image = next(b.tag for b in plan if b.component == "gateway")
    examples = cpu_examples()
    context = f"kind-{args.cluster}"
    kubectl = ["kubectl", "--context", context, "--namespace", args.namespace]

    for build in plan:
        run(build_command(build, push=False, platform="", hf_token_secret=False), dry_run=args.dry_run)
    existing = [] if args.dry_run else subprocess.run(
        ["kind", "get", "clusters"], capture_output=True, text=True, check=True).stdout.split()
    if args.cluster in existing:
        print(f"kind cluster {args.cluster} exists; reusing it")
    else:
        run(["kind", "create", "cluster", "--name", args.cluster, "--wait", "120s"], dry_run=args.dry_run)
    run(["kind", "load", "docker-image", "--name", args.cluster, *[b.tag for b in plan]],
        dry_run=args.dry_run)
    repository, tag = operator_image.rsplit(":", 1)
    gateway_repository, gateway_tag = gateway_image.rsplit(":", 1)
    run(["helm", "upgrade", "--install", args.release, str(CHART_DIR.relative_to(REPO)),
         "--kube-context", context, "--namespace", args.namespace, "--create-namespace",
         "--set", "embedding.enabled=false", "--set", "reranker.enabled=false",
         "--set", f"operator.image.repository={repository}", "--set", f"operator.image.tag={tag}",
         "--set", f"gateway.image.repository={gateway_repository}", "--set", f"gateway.image.tag={gateway_tag}",
         "--wait", "--timeout", "5m"], dry_run=args.dry_run)
    apply = kubectl + ["apply"]
    for path, _ in examples:
        apply += ["-f", str(path.relative_to(REPO))]
    run(apply, dry_run=args.dry_run)
    for _, doc in examples:
        run(kubectl + ["wait", "--for=condition=Ready", f"modelservice/{doc['metadata']['name']}",
                       f"--timeout={args.timeout}"], dry_run=args.dry_run)

    for _, doc in examples:
        name, port = doc["metadata"]["name"], int(doc["spec"].get("port", 8080))
        path, payload = smoke_request(doc)
        print(f"POST {name}:{port}{path} {json.dumps(payload)}", flush=True)
        if args.dry_run:
            continue
        summary = check_response(path, port_forward_and_post(kubectl, name, port, path, payload))
        print(f"  {name}: {summary}", flush=True)
    if not args.dry_run:
        run(kubectl + ["get", "modelservices", "-o", "wide"], dry_run=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
