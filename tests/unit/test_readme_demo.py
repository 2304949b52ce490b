"""`make demo`'s own logic, without a cluster: when it stops waiting for the ModelServices, which
README commands it runs (through the gateway, by model name), and that bad arguments stop it before it starts anything."""
from __future__ import annotations

import importlib.util
import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("demo_script", ROOT / "demo" / "demo.py")
demo = sys.modules["demo_script"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def modelservice(phase=None, reason=None, generation=1, observed=1):
    ms = {"metadata": {"generation": generation}, "status": {"observedGeneration": observed}}
    if phase:
        ms["status"]["phase"] = phase
    if reason:
        ms["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": reason}]
    return ms


def pod(ready=False, unschedulable=None):
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": unschedulable})
    return {"status": {"conditions": conditions}}


def test_a_ready_modelservice_is_settled_only_for_its_current_generation():
    assert demo.settled(modelservice("Ready"), [pod(ready=True)])
    assert not demo.settled(modelservice("Ready", generation=2, observed=1), [pod(ready=True)])


def test_pods_still_starting_keep_the_demo_waiting():
    assert not demo.settled(modelservice("Progressing", "ReplicasNotReady"), [pod(ready=True), pod()])


def test_a_pod_the_scheduler_cannot_place_ends_the_wait_with_its_reason():
    message = ("0/7 nodes are available: 1 Insufficient nvidia.com/gpu, 6 node(s) didn't match Pod's "
               "node affinity/selector. preemption: 0/7 nodes are available: ...")
    pending = pod(unschedulable=message)
    assert demo.settled(modelservice("Progressing", "ReplicasNotReady"), [pod(ready=True), pending])
    assert demo.unschedulable_reason(pending) == (
        "0/7 nodes are available: 1 Insufficient nvidia.com/gpu, 6 node(s) didn't match Pod's "
        "node affinity/selector.")


def test_a_refused_modelservice_ends_the_wait():
    assert demo.settled(modelservice("Pending", "NoMatchingGPUNodes"), [])


def test_the_readme_gateway_examples_are_found_and_aimed_at_the_demo_gateway_port():
    commands = demo.readme_curl_commands((ROOT / "README.md").read_text())
    assert commands and all(c.startswith("curl ") and "localhost:8080/" in c for c in commands)
    moved = [demo.retarget(c, 18080) for c in commands]
    assert all("localhost:18080/" in c and "localhost:8080" not in c for c in moved)
    assert any(demo.curl_path(c) == "/v1/models" for c in commands)


def request(command: str) -> tuple[str, dict | None]:
    """A README curl line's path and JSON body (None for a GET)."""
    argv = shlex.split(command)
    return demo.curl_path(command), json.loads(argv[argv.index("-d") + 1]) if "-d" in argv else None


def test_the_gateway_examples_are_the_reranker_api_examples_naming_a_model_the_demo_runs():
    """One truth: what the demo sends through the gateway is the Reranker API section's requests,
    each with `model` added (bodies) or under /models/<name>/ (the rest), for a ModelService whose
    pods the demo runs."""
    text = (ROOT / "README.md").read_text()
    runs = demo.node_rerankers([doc for _, doc in demo.example_modelservices()])
    assert runs == ["qwen3-reranker-0-6b-cpu"]
    through_gateway = [request(c) for c in demo.readme_curl_commands(text)
                       if demo.curl_path(c) != "/v1/models"]
    expected = []
    for path, body in map(request, demo.readme_curl_commands(text, "Reranker API")):
        if body is None:
            expected.append((f"/models/{runs[0]}{path}", None))
        else:
            expected.append((path, {"model": runs[0], **body}))
    assert through_gateway == expected


def test_the_demo_model_list_summary_says_what_is_routable():
    listing = {"object": "list", "data": [{"id": "qwen", "task": "rerank", "engine": "reranker",
                                           "replicas": 1, "ready_replicas": 1}]}
    assert demo.summarize(listing) == ["qwen: rerank on reranker, 1/1 replicas routable"]


def test_the_cpu_reranker_example_is_applied_on_the_real_node_reading_the_cache():
    """The example as the demo applies it: the real node's placement and the ModelCache, with
    the small requests the tiny stand-in model needs; the rest of the example as written."""
    [(_, doc)] = [(p, d) for p, d in demo.example_modelservices() if d["metadata"]["name"] == "qwen3-reranker-0-6b-cpu"]
    placement = {"nodeSelector": {"kubernetes.io/hostname": "real-1"},
                 "tolerations": [{"key": "embedding-images.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]}
    applied = demo.on_the_node(doc, placement, "cache")
    spec = applied["spec"]
    assert spec["nodeSelector"] == placement["nodeSelector"] and spec["tolerations"] == placement["tolerations"]
    assert spec["cache"] == {"modelCache": "cache"}
    assert spec["resources"]["requests"]["cpu"] == "250m"
    assert spec["engineArgs"]["maxLength"] == 256
    assert {k: v for k, v in spec.items() if k not in ("nodeSelector", "tolerations", "cache", "resources", "engineArgs")} \
        == {k: v for k, v in doc["spec"].items() if k not in ("cache", "resources", "engineArgs")}
    assert doc["spec"]["cache"] == {"sizeLimit": "4Gi"}   # the example itself is left as it is


def test_the_images_are_the_chart_and_variant_tags_the_build_gives():
    chart = (ROOT / "charts" / "embedding-images" / "Chart.yaml").read_text()
    version = next(line.split(":", 1)[1].strip().strip('"') for line in chart.splitlines() if line.startswith("appVersion:"))
    refs = demo.image_refs()
    assert set(refs) == set(demo.COMPONENTS)
    assert refs["operator"].endswith(f"/operator:{version}") and refs["gateway"].endswith(f"/gateway:{version}")
    assert refs["reranker"].endswith("-cpu")


def test_a_client_pod_that_got_no_answer_is_named():
    # An embeddings answer is larger than the 4 KiB of a termination message: the log is read.
    big = json.dumps({"status": 200, "seconds": 0.5, "body": json.dumps({"data": [{"embedding": [0.125] * 2000}]})})
    logs = {"r0": big + "\n", "r1": '{"status": 201, "seconds": 0.1, "body": "{}"}\n'}
    done = {"name": "r0", "state": {"terminated": {"exitCode": 0, "message": big[-4096:]}}}
    failed = {"name": "r1", "state": {"terminated": {"exitCode": 1, "message": "dial tcp: i/o timeout"}}}
    pod = {"status": {"initContainerStatuses": [done], "containerStatuses": [failed]}}
    try:
        demo.client_answers(pod, logs.__getitem__)
    except demo.DemoError as exc:
        assert "r1 got no answer: dial tcp: i/o timeout" in str(exc)
    else:
        raise AssertionError("a request without an answer passed")
    pod["status"]["containerStatuses"] = [{**failed, "state": {"terminated": {"exitCode": 0}}}]
    answers = demo.client_answers(pod, logs.__getitem__)
    assert [a["status"] for a in answers] == [200, 201]
    assert len(json.loads(answers[0]["body"])["data"][0]["embedding"]) == 2000


def test_a_busy_port_stops_the_demo_before_it_starts_anything():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, str(ROOT / "demo" / "demo.py"), "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"--port {port} is in use" in proc.stderr
    assert "==> [1/" not in proc.stdout
