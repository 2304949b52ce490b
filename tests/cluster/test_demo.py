"""`make demo` on the session's cluster and its real node: the operator, gateway and CPU reranker
images are built and imported into the node (an image the node holds already is not imported
again), the operator and the gateway run as pods on the real node, the CPU reranker example's model
comes from a ModelCache filled by the download Job's pod from the Hub stand-in, a client pod's
request by the gateway's DNS name is answered with ranked scores, the README's curl examples answer
through `kubectl port-forward`, a model at zero is brought back by one request to a real pod,
and afterwards nothing the demo started is left, while the cluster it found running stays.

The demo uses the local cluster of the `cluster` fixture (it starts and stops no cluster here).
The run time of the demo is written to the session's output.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from control_plane import ROOT, Cluster
from real_node import NODE_SH, RealNode

# demo/demo.py is a script, not a package: load it by path.
_spec = importlib.util.spec_from_file_location("demo_script", ROOT / "demo" / "demo.py")
demo_script = sys.modules["demo_script"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_script)
example_modelservices = demo_script.example_modelservices
readme_curl_commands = demo_script.readme_curl_commands
retarget = demo_script.retarget

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.helm, pytest.mark.images, pytest.mark.slow]

VARIANTS = yaml.safe_load((ROOT / "charts" / "embedding-images" / "files" / "variants.yaml").read_text())
GPU_VARIANTS = {v["name"] for v in VARIANTS["variants"] if v["gpu"]}
NODE_MODELS = demo_script.node_rerankers([doc for _, doc in example_modelservices()])


@pytest.fixture(scope="module")
def demo_run(cluster: Cluster, real_node: RealNode, request: pytest.FixtureRequest) -> dict:
    namespace = f"demo-{uuid.uuid4().hex[:6]}"
    port = demo_script.free_port()
    args = ["--namespace", namespace, "--release", namespace, "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k not in ("KEEP", "MAKEFLAGS", "MAKELEVEL")}
    start = time.monotonic()
    proc = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS={shlex.join(args)}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    seconds = time.monotonic() - start
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"demo: make demo took {seconds:.0f} s")
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and "demo: ERROR: not enough disk" in output:
        # The demo's own check (exit status 3): this machine lacks the disk the images need.
        pytest.skip(output.split("demo: ERROR: ", 1)[1].splitlines()[0])
    yield {"proc": proc, "out": output, "namespace": namespace, "port": port}
    cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl("delete", "pv", f"{namespace}-cache", "--ignore-not-found", "--wait=false", check=False)


def block(out: str, start: str, end: str) -> str:
    assert start in out, f"the demo printed no '{start}':\n{out[-3000:]}"
    return out.split(start, 1)[1].split(end, 1)[0]


def step(out: str, number: int) -> str:
    """What the demo printed under its step `number`."""
    return block(out, f"==> [{number}/{demo_script.STEPS}]", "\n==> ")


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


def check_ranked(request: dict, answer: dict, out: str) -> None:
    """A rerank answer to `request`: top_n results, best first, scores in [0, 1], documents
    echoed as asked, and the demo's readable summary of it in `out`."""
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


def client_answer(text: str, url: str) -> tuple[dict, dict, str]:
    """The request a client pod sent to `url`, its answer's body and the status line printed."""
    head = re.search(rf"\$ kubectl exec -n \S+ client-\w+ -- podbin post {re.escape(url)} (.*)\n", text)
    assert head, f"no client pod request to {url}:\n{text[-3000:]}"
    sent = json.loads(shlex.split(head.group(1))[0])
    body, status = text[head.end():].split("\n")[:2]
    return sent, json.loads(body), status


def readme_rerank() -> dict:
    return json.loads(shlex.split(next(c for c in readme_curl_commands((ROOT / "README.md").read_text())
                                       if demo_script.is_rerank(c)))[-1])


def test_make_demo_succeeds(demo_run):
    proc = demo_run["proc"]
    assert proc.returncode == 0, demo_run["out"][-6000:]
    assert re.search(r"demo finished in \d+ s", demo_run["out"])
    for number in range(1, demo_script.STEPS + 1):
        assert f"==> [{number}/{demo_script.STEPS}]" in demo_run["out"]


def test_the_images_are_built_and_on_the_node_with_podmans_image_ids(demo_run):
    text = step(demo_run["out"], 3)
    assert re.search(r"disk: building the images.* needs about [\d.]+ GB, [\d.]+ GB free", text), text
    imported = re.findall(r"^    (\w+): imported in", text, re.M)
    if imported:   # free disk was checked first, for exactly those images
        assert re.search(rf"disk: importing {', '.join(imported)} into the node .* needs about [\d.]+ GB, "
                         r"[\d.]+ GB free", text), text
    for component, ref in demo_script.image_refs().items():
        assert re.search(rf"{component}: built in [\d.]+ s, image \w{{12}}, [\d.]+ GB", text), text
        assert re.search(rf"{component}: (imported in [\d.]+ s|the node holds this image already)", text), text
        podman_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref],
                                   capture_output=True, text=True, check=True).stdout.strip()
        node_id = subprocess.run([str(NODE_SH), "image-id", ref], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip()
        assert node_id == podman_id, ref


def test_an_image_the_node_holds_is_not_imported_again(demo_run):
    """The reranker image (gigabytes, minutes to import) costs nothing the second time."""
    ref = demo_script.image_refs()["reranker"]
    done = subprocess.run([str(NODE_SH), "import", ref], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{ref}: the node holds this image already" in done.stderr
    assert "imported" not in done.stderr


def test_the_operator_and_gateway_run_on_the_real_node_ready_by_their_probes(demo_run, real_node):
    text = step(demo_run["out"], 5)
    for component in ("operator", "gateway"):
        assert re.search(rf"{component}: pod \S+ on {real_node.name}, Ready", text), text
    assert re.search(r"its pods Ready by their probes [\d.]+ s after helm install", text)


def test_the_model_cache_is_filled_by_the_download_job_pod_on_the_real_node(demo_run, real_node):
    text = step(demo_run["out"], 6)
    assert re.search(rf"modelcache/\S+: \d+ files, [1-9]\d* bytes downloaded by the Job's pod on "
                     rf"{real_node.name} in [\d.]+ s", text), text
    for name in NODE_MODELS:
        assert f"modelservice/{name} on {real_node.name}, reading modelcache/" in text


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


def test_the_cpu_reranker_runs_on_the_real_node_and_gpu_examples_on_simulated_gpu_nodes(
        demo_run, cluster, real_node):
    placed = table(block(demo_run["out"], "Where the pods run:\n", "\n\n"))
    products = {n["metadata"]["name"]: n["metadata"]["labels"].get("nvidia.com/gpu.product")
                for n in cluster.get("nodes")["items"]}
    pending = demo_run["out"].split("Not running", 1)[1] if "Not running" in demo_run["out"] else ""
    for _, doc in example_modelservices():
        name, spec = doc["metadata"]["name"], doc["spec"]
        row = placed[name]
        nodes = [] if row["NODES"] == "-" else [re.sub(r" \(.*\)$", "", n) for n in row["NODES"].split(", ")]
        assert all(n in products for n in nodes), f"{name}: {row['NODES']}"
        if name in NODE_MODELS:
            assert row["NODES"] == f"{real_node.name} (real)" and row["READY"] == "1/1", row
            continue
        assert real_node.name not in nodes, f"{name} is on the real node: {row['NODES']}"
        if row["VARIANT"] == "cpu":
            assert all(products[n] is None for n in nodes), f"{name} is on a GPU node: {row['NODES']}"
        else:
            assert all(products[n] for n in nodes), f"{name} is not on a GPU node: {row['NODES']}"
        if product := (spec.get("gpu") or {}).get("product"):
            assert all(products[n] == product for n in nodes), f"{name}: {row['NODES']}"
        ready, wanted = (int(x) for x in row["READY"].split("/"))
        if ready < wanted:
            assert re.search(rf"{re.escape(name)}: pod \S+ is Pending: 0/\d+ nodes are available", pending), \
                f"{name} is {row['READY']} ready and the demo does not say why:\n{pending}"


def test_a_client_pod_gets_ranked_scores_from_the_gateway_by_its_dns_name(demo_run):
    namespace = demo_run["namespace"]
    text = step(demo_run["out"], 8)
    url = f"http://{namespace}-embedding-images-gateway.{namespace}.svc.cluster.local:8080/v1/rerank"
    sent, answer, status = client_answer(text, url)
    assert status.startswith("HTTP 200 in "), status
    assert sent == readme_rerank() and sent["model"] in NODE_MODELS
    check_ranked(sent, answer, text)
    # The address the README gives for applications in the cluster.
    readme = (ROOT / "README.md").read_text().split("\n## Gateway\n", 1)[1].split("\n## ", 1)[0]
    pattern = re.search(r"`(http://<release>-\S+)`", readme).group(1)
    address = pattern.replace("<release>", namespace).replace("<namespace>", namespace)
    assert f"in the cluster: {address} (the chart's Service)" in text


def test_the_readme_gateway_examples_answer_through_a_port_forward(demo_run):
    out, port = demo_run["out"], demo_run["port"]
    text = step(out, 9)
    assert f"kubectl port-forward svc/{demo_run['namespace']}-embedding-images-gateway {port}:8080" in out
    answers = []
    for command in readme_curl_commands((ROOT / "README.md").read_text()):
        command = retarget(command, port)
        assert "$ " + command in text, f"the demo did not run {command}"
        body, status = text.split("$ " + command + "\n", 1)[1].split("\n")[:2]
        assert status.startswith("HTTP 200"), (command, body, status)
        answers.append((command, json.loads(body)))
    reranks = [(c, a) for c, a in answers if demo_script.is_rerank(c)]
    assert reranks, "README's Gateway section has no rerank curl example"
    for command, answer in reranks:
        request = json.loads(shlex.split(command)[-1])
        assert request["model"] in NODE_MODELS, command
        check_ranked(request, answer, text)
    (listing,) = [a for c, a in answers if demo_script.curl_path(c) == "/v1/models"]
    models = {m["id"]: m for m in listing["data"]}
    assert set(models) == {doc["metadata"]["name"] for _, doc in example_modelservices()}
    for name in NODE_MODELS:
        assert models[name]["ready_replicas"] == models[name]["replicas"] == 1, models[name]
    health = [(c, a) for c, a in answers if demo_script.curl_path(c).endswith("/health")]
    assert health and health[0][1]["status"] == "ok"
    served = demo_script.curl_path(health[0][0]).split("/")[-2]
    assert served in NODE_MODELS and health[0][1]["model"] == served


def test_a_request_by_dns_name_brings_a_model_at_zero_back_in_a_real_pod(demo_run, real_node):
    out, namespace = demo_run["out"], demo_run["namespace"]
    text = step(out, 10)
    name = NODE_MODELS[0]
    assert re.search(rf"{name}: 0 replicas, no pod \((\S+) gone\)", text)
    url = f"http://{namespace}-embedding-images-gateway.{namespace}.svc.cluster.local:8080/v1/rerank"
    sent, answer, status = client_answer(text, url)
    assert status.startswith("HTTP 200 in ")
    check_ranked(sent, answer, text)
    assert re.search(rf"held [\d.]+ s while the gateway scaled {name} to 1 replica\(s\) and a real pod started", text)
    before = re.findall(r"reranker pod (\S+) on ", out.split("==> [10/", 1)[0])
    after = re.findall(rf"reranker pod (\S+) on {real_node.name}", text)
    assert before and after and not set(after) & set(before)


def test_the_demo_leaves_nothing_running_and_the_cluster_as_found(demo_run, cluster, real_node):
    out, namespace = demo_run["out"], demo_run["namespace"]
    (pid,) = [int(p) for p in re.findall(r"^    port-forward: pid (\d+)", out, re.M)]
    assert f"stopped the port-forward (pid {pid})" in out
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the demo waited for it: gone, not even a zombie
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", demo_run["port"]), timeout=2).close()
    assert re.search(r"stopped the Hub stand-in \(http://[\d.]+:\d+\)", out)
    assert "the cluster stays as it was found" in out
    assert subprocess.run([str(NODE_SH), "status"], cwd=ROOT, capture_output=True).returncode == 0
    phase = cluster.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}", check=False)
    assert phase.returncode != 0 or phase.stdout == "Terminating", "the demo left its namespace behind"
    pv = cluster.kubectl("get", "pv", f"{namespace}-cache", "-o", "jsonpath={.metadata.deletionTimestamp}", check=False)
    assert pv.returncode != 0 or pv.stdout, "the demo left its cache's volume behind"
    releases = subprocess.run(["helm", "list", "-n", namespace, "-q"], env=cluster.env,
                              capture_output=True, text=True).stdout.split()
    assert namespace not in releases
    left = [p["metadata"]["name"] for p in cluster.get("pods", "-n", namespace)["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert not left, left


def test_tei_serves_embeddings_in_a_real_pod_by_dns_name_and_through_the_openai_sdk(demo_run, real_node):
    out, namespace = demo_run["out"], demo_run["namespace"]
    text = step(out, 11)
    name, texts = demo_script.EMBEDDING_SERVICE, demo_script.EMBEDDING_TEXTS
    assert re.search(rf"Ready [\d.]+ s after it was applied: pod {name}-\S+ on {real_node.name}", text), text
    url = f"http://{namespace}-embedding-images-gateway.{namespace}.svc.cluster.local:8080/v1/embeddings"
    head = re.search(rf"podbin post {re.escape(url)} (.*)\n", text)
    assert head and json.loads(shlex.split(head.group(1))[0]) == {"model": name, "input": texts}
    assert re.search(r"\nHTTP 200 in [\d.]+ s\n", text)
    assert f"{len(texts)} embeddings of 384 dimensions by DNS name" in text
    sdk = re.search(rf"the OpenAI SDK: {len(texts)} embeddings of 384 dimensions, cosine ([\d.]+) or more", text)
    assert sdk and float(sdk.group(1)) >= 0.9999, text
    # The real all-MiniLM-L6-v2 computed them: the two sentences about Paris are nearer each other
    # than either is to the one about bananas.
    paris, bananas = [float(x) for x in re.findall(r"\) = (-?[\d.]+)", text)]
    assert paris > bananas + 0.2, (paris, bananas)
