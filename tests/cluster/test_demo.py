"""`make demo` on the session's cluster: every example is listed with its variant, the nodes its
pods run on and its endpoint; pods that cannot run are explained; the README's Gateway curl
examples answer through the gateway, by model name, from the reranker processes standing in for
the CPU reranker's pods, with ranked relevance scores; a model scaled to zero is brought back by
one request; and afterwards nothing the demo started is left running, while the cluster it found
running is left as it was.

The demo uses the cluster of the `cluster` fixture (the running local control plane, or the
user's through --kubeconfig), so it starts and stops no cluster here.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import re
import shlex
import subprocess
import sys
import uuid

import pytest
import yaml

from control_plane import CLUSTER_SH, ROOT, Cluster

# demo/demo.py is a script, not a package: load it by path.
_spec = importlib.util.spec_from_file_location("demo_script", ROOT / "demo" / "demo.py")
demo_script = sys.modules["demo_script"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_script)
example_modelservices = demo_script.example_modelservices
free_port = demo_script.free_port
readme_curl_commands = demo_script.readme_curl_commands
retarget = demo_script.retarget

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

VARIANTS = yaml.safe_load((ROOT / "charts" / "embedding-images" / "files" / "variants.yaml").read_text())
GPU_VARIANTS = {v["name"] for v in VARIANTS["variants"] if v["gpu"]}


@pytest.fixture(scope="module")
def demo_run(cluster: Cluster) -> dict:
    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    port = free_port()
    args = ["--namespace", namespace, "--release", namespace, "--port", str(port)]
    if not cluster.local:
        args += ["--kubeconfig", str(cluster.kubeconfig)]
    env = {k: v for k, v in os.environ.items() if k not in ("KEEP", "MAKEFLAGS", "MAKELEVEL")}
    proc = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS={shlex.join(args)}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    yield {"proc": proc, "out": output, "namespace": namespace, "port": port}
    cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)


def block(out: str, start: str, end: str) -> str:
    assert start in out, f"the demo printed no '{start}':\n{out[-3000:]}"
    return out.split(start, 1)[1].split(end, 1)[0]


def table(text: str) -> dict[str, dict[str, str]]:
    """A kubectl-style table (columns aligned under the header) by its first column."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = {}
    for line in lines[1:]:
        if line.startswith(" ") or not re.match(r"[a-z0-9]", line):
            break
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [len(line) + 1])]
        rows[cells[0]] = dict(zip(names, cells))
    return rows


def test_make_demo_succeeds(demo_run):
    proc = demo_run["proc"]
    assert proc.returncode == 0, demo_run["out"][-5000:]
    assert re.search(r"demo finished in \d+ s", demo_run["out"])
    for step in range(1, 11):
        assert f"==> [{step}/10]" in demo_run["out"]


def test_every_example_is_listed_with_its_variant_and_endpoint(demo_run):
    namespace = demo_run["namespace"]
    wide = table(block(demo_run["out"], f"kubectl get modelservices -n {namespace} -o wide\n", "\nWhere"))
    for _, doc in example_modelservices():
        name, spec = doc["metadata"]["name"], doc["spec"]
        row = wide.get(name)
        assert row, f"{name} missing from kubectl get modelservices -o wide:\n{wide}"
        if spec.get("accelerator", "auto") == "auto":
            assert row["VARIANT"] in GPU_VARIANTS | ({"cpu"} if spec.get("fallbackToCPU") else set())
        else:
            assert row["VARIANT"] == spec["accelerator"]
        assert row["ENDPOINT"] == f"http://{name}.{namespace}.svc.cluster.local:{spec.get('port', 8080)}"
        assert row["IMAGE"].endswith(
            next(v["teiTag"] if spec["task"] == "embed" else v["rerankerTag"]
                 for v in VARIANTS["variants"] if v["name"] == row["VARIANT"]))
        if product := (spec.get("gpu") or {}).get("product"):
            assert json.loads(row["NODE-SELECTOR"]) == {"nvidia.com/gpu.product": product}


def test_every_example_shows_the_nodes_its_pods_run_on_or_why_not(demo_run, cluster):
    placed = table(block(demo_run["out"], "Where the pods run:\n", "\n\n"))
    gpu_nodes = {n["metadata"]["name"]: n["metadata"]["labels"].get("nvidia.com/gpu.product")
                 for n in cluster.get("nodes")["items"]}
    pending = demo_run["out"].split("Not running", 1)[1] if "Not running" in demo_run["out"] else ""
    for _, doc in example_modelservices():
        name, spec = doc["metadata"]["name"], doc["spec"]
        row = placed[name]
        # "-": no pod is on a node yet (on a shared cluster earlier tests' pods may hold the GPUs);
        # then the demo must say why, checked below.
        nodes = [] if row["NODES"] == "-" else [re.sub(r" \(.*\)$", "", n) for n in row["NODES"].split(", ")]
        assert all(n in gpu_nodes for n in nodes), f"{name}: {row['NODES']}"
        if row["VARIANT"] == "cpu":
            assert all(gpu_nodes[n] is None for n in nodes), f"{name} is on a GPU node: {row['NODES']}"
        else:
            assert all(gpu_nodes[n] for n in nodes), f"{name} is not on a GPU node: {row['NODES']}"
        if product := (spec.get("gpu") or {}).get("product"):
            assert all(gpu_nodes[n] == product for n in nodes), f"{name}: {row['NODES']}"
        ready, wanted = (int(x) for x in row["READY"].split("/"))
        if ready < wanted:
            assert re.search(rf"{re.escape(name)}: pod \S+ is Pending: 0/\d+ nodes are available", pending), \
                f"{name} is {row['READY']} ready and the demo does not say why:\n{pending}"


def answer_to(out: str, command: str) -> tuple[str, str]:
    """The body and status line the demo printed under `$ command` (its first run)."""
    assert "$ " + command in out, f"the demo did not run {command}"
    body, status = out.split("$ " + command + "\n", 1)[1].split("\n")[:2]
    return body, status


def check_ranked(command: str, answer: dict, out: str) -> None:
    """A rerank answer to the README command: top_n results, best first, scores in [0, 1],
    documents echoed as asked, and the demo's readable summary under it."""
    request = json.loads(shlex.split(command)[-1])
    documents = request.get("documents") or request.get("texts")
    results = answer["results"]
    assert len(results) == min(request.get("top_n", len(documents)), len(documents))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert len({r["index"] for r in results}) == len(results)
    for r in results:
        if request.get("return_documents", True):
            assert r["document"]["text"] == documents[r["index"]]
        else:
            assert "document" not in r
    for rank, r in enumerate(results, 1):
        assert f"#{rank}: document {r['index']}, relevance_score {r['relevance_score']:.4f}" in out


def test_the_readme_gateway_examples_answer_by_model_name_from_the_local_reranker(demo_run):
    out, port = demo_run["out"], demo_run["port"]
    commands = readme_curl_commands((ROOT / "README.md").read_text())
    answers = []
    for command in commands:
        body, status = answer_to(out, retarget(command, port))
        assert status.startswith("HTTP 200"), (command, body, status)
        answers.append((command, json.loads(body)))
    local = demo_script.local_rerankers([doc for _, doc in example_modelservices()])
    reranks = [(c, a) for c, a in answers if demo_script.is_rerank(c)]
    assert reranks, "README's Gateway section has no rerank curl example"
    for command, answer in reranks:
        assert json.loads(shlex.split(command)[-1])["model"] in local, command
        check_ranked(command, answer, out)
    # The gateway lists every example; only the pods with a local process are routable.
    (listing,) = [a for c, a in answers if demo_script.curl_path(c) == "/v1/models"]
    models = {m["id"]: m for m in listing["data"]}
    assert set(models) == {doc["metadata"]["name"] for _, doc in example_modelservices()}
    for name, model in models.items():
        assert model["ready_replicas"] == (model["replicas"] if name in local else 0), model
        assert f"{name}: {model['task']} on {model['engine']}, {model['ready_replicas']}/{model['replicas']}" in out
    # The pass-through reached the reranker process of the pod, which serves the model under the
    # ModelService's name (RERANKER_SERVED_MODEL_NAME, set by the operator).
    health = [(c, a) for c, a in answers if demo_script.curl_path(c).endswith("/health")]
    assert health and health[0][1]["status"] == "ok"
    served = demo_script.curl_path(health[0][0]).split("/")[-2]
    assert served in local and health[0][1]["model"] == served


def test_the_gateway_runs_with_the_charts_settings_and_names_its_in_cluster_address(demo_run):
    out, namespace = demo_run["out"], demo_run["namespace"]
    readme = (ROOT / "README.md").read_text().split("\n## Gateway\n", 1)[1].split("\n## ", 1)[0]
    pattern = re.search(r"`(http://<release>-\S+)`", readme).group(1)
    address = pattern.replace("<release>", namespace).replace("<namespace>", namespace)
    assert f"in the cluster: {address} (the chart's Service)" in out
    assert f"GATEWAY_NAMESPACES={namespace} " in out and "GATEWAY_SCALE_FROM_ZERO_TIMEOUT=300 " in out


def test_a_request_brings_a_model_at_zero_back(demo_run):
    out, port = demo_run["out"], demo_run["port"]
    step = block(out, "==> [10/10] scale from zero", "==> cleaning up")
    name = demo_script.local_rerankers([doc for _, doc in example_modelservices()])[0]
    assert f"{name}: 0 replicas, no pod, no process" in step
    command = retarget(next(c for c in readme_curl_commands((ROOT / "README.md").read_text())
                            if demo_script.is_rerank(c)), port)
    body, status = answer_to(step, command)
    assert status == "HTTP 200"
    check_ranked(command, json.loads(body), step)
    assert re.search(rf"held [\d.]+ s while the gateway scaled {name} to 1 replica\(s\)", step)
    # A new pod, and a new process for it.
    before = re.findall(r"reranker for pod (\S+): pid", out.split("==> [10/10]", 1)[0])
    after = re.findall(r"reranker for pod (\S+): pid", step)
    assert before and after and not set(after) & set(before)


def test_the_demo_stops_what_it_started_and_leaves_the_cluster_as_found(demo_run, cluster):
    out, namespace = demo_run["out"], demo_run["namespace"]
    pids = {name: int(pid) for name, pid in re.findall(r"^    (operator|gateway): pid (\d+)", out, re.M)}
    assert set(pids) == {"operator", "gateway"}, out[-3000:]
    pods = {f"reranker for pod {pod}": int(pid)
            for pod, pid in re.findall(r"^    reranker for pod (\S+): pid (\d+)", out, re.M)}
    assert len(pods) >= 2, out[-3000:]   # the first pod's, and the one after scale from zero
    for name, pid in {**pids, **pods}.items():
        assert f"stopped the {name} (pid {pid})" in out
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the demo waited for it: gone, not even a zombie
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", demo_run["port"]), timeout=2).close()
    assert "the cluster stays as it was found" in out
    assert cluster.kubectl("get", "nodes").returncode == 0
    if cluster.local:
        assert subprocess.run([str(CLUSTER_SH), "status"], cwd=ROOT, capture_output=True).returncode == 0
    phase = cluster.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}", check=False)
    assert phase.returncode != 0 or phase.stdout == "Terminating", "the demo left its namespace behind"
    releases = subprocess.run(["helm", "list", "-n", namespace, "-q"], env=cluster.env,
                              capture_output=True, text=True).stdout.split()
    assert namespace not in releases
