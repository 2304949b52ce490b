"""The ModelService operator on the real control plane, as a user drives it with kubectl.

One operator process (`python -m modelservice`, the real code under kopf) serves the module; it
watches only namespaces named msvc-*, so an operator started by another test module never
competes with it. The test of an API server restart starts its own, for its own namespace,
behind a proxy it cuts. Pods run on kwok's simulated nodes (2 CPU, T4, A10, A100, L4, H100x8), which
become Ready without pulling images, so each test takes seconds.
"""
from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest

from control_plane import CLUSTER_SH, MODELSERVICE_CRD, ROOT, Cluster, KubectlError, wait_for
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.cluster

API = "serving.embedding-images.io/v1alpha1"
TEI = "ghcr.io/huggingface/text-embeddings-inference"
# Watched (msvc-*) but refused, as kube-system is by default: the operator must say so and do nothing.
REFUSED = "msvc-refused"


class Operator:
    """`python -m modelservice` as a child process, restartable, logging to a file.

    It serves the namespaces matching `namespace` and reaches the API server through `kubeconfig`
    (the cluster's by default), with `env` added to its environment."""

    def __init__(self, cluster: Cluster, log: Path, namespace: str = "msvc-*", kubeconfig: Path | None = None,
                 env: dict[str, str] | None = None, refused: str = f"{REFUSED}-*"):
        self.cluster = cluster
        self.log = log
        self.namespace = namespace
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.env = env or {}
        self.refused = refused
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelservice", f"--namespace={self.namespace}", "--verbose",
             f"--refused-namespaces=kube-system,kube-public,kube-node-lease,{self.refused}"],
            env={**self.cluster.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **self.env},
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.apply_crds(MODELSERVICE_CRD)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace the module's operator serves, deleted afterwards."""
    name = f"msvc-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "modelservices", "--all", "-n", name, "--wait=true", "--timeout=60s", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def modelservice(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name}, "spec": spec}


def get_ms(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("modelservice", name, "-n", ns)


def condition(ms: dict[str, Any], type_: str) -> tuple[str, str] | None:
    for c in (ms.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c["status"], c["reason"]
    return None


def wait_ready(cluster: Cluster, ns: str, name: str, operator: Operator, timeout: float = 60) -> dict:
    def ready():
        ms = get_ms(cluster, ns, name)
        status = ms.get("status") or {}
        ok = (condition(ms, "Ready") == ("True", "AllReplicasReady")
              and status.get("observedGeneration") == ms["metadata"]["generation"])
        return ms if ok else None
    try:
        return wait_for(f"ModelService {ns}/{name} Ready", ready, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None


def pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return cluster.get("pods", "-n", ns, "-l", f"serving.embedding-images.io/modelservice={name}")["items"]


def deployment(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("deployment", name, "-n", ns)


# --- refused at kubectl apply ------------------------------------------------------------------

@pytest.mark.parametrize("spec, field, words", [
    ({"task": "classify", "model": "m"}, "spec.task", "Unsupported value"),
    ({"task": "embed", "model": "m", "replicas": -1}, "spec.replicas", "greater than or equal to 0"),
    ({"task": "embed", "model": "m", "accelerator": "cpu", "gpu": {"count": 1}}, "spec.gpu.count",
     "accelerator cpu takes no GPUs"),
    ({"task": "embed", "model": "m", "accelerator": "volta"}, "spec.accelerator", "Unsupported value"),
    ({"task": "embed", "model": "m", "engine": "reranker"}, "spec.engine", "only serves task rerank"),
    ({"task": "embed", "model": "m", "cache": {"sizeLimit": "1Gi", "existingClaim": "c"}}, "spec.cache",
     "not both"),
    ({"task": "embed", "model": "m", "replica": 2}, "replica", "unknown field"),
    ({"task": "embed", "model": "m", "nodeSelector": {"bad key!": "x"}}, "spec.nodeSelector",
     "nodeSelector keys must be label keys"),
    ({"task": "embed", "model": "m", "nodeSelector": {"pool": "bad value!"}}, "spec.nodeSelector.pool",
     "should match"),
    ({"task": "embed", "model": "m", "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]},
     "spec.env[1]", "Duplicate value"),
    ({"task": "embed", "model": "m", "env": [{"name": "A=B", "value": "1"}]}, "spec.env[0].name", "should match"),
    ({"task": "embed", "model": "m", "tolerations": [{"key": "bad key!", "operator": "Exists"}]},
     "spec.tolerations[0].key", "must be a label key"),
    ({"task": "embed", "model": "m", "tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]},
     "spec.tolerations[0].tolerationSeconds", "needs effect NoExecute"),
])
def test_invalid_modelservices_are_refused_naming_the_field(cluster, operator, ns, spec, field, words):
    with pytest.raises(KubectlError) as info:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(modelservice("bad", **spec)))
    message = info.value.stderr
    assert field in message and words in message, message
    assert cluster.get("modelservices", "-n", ns)["items"] == []


@pytest.mark.parametrize("name", ["a" * 64, "7b-embed", "bge.small", "Bge"])
def test_names_no_service_can_have_are_refused_naming_the_field(cluster, operator, ns, name):
    """The name is the Service's: a DNS-1035 label, checked at the root of the schema."""
    with pytest.raises(KubectlError) as info:
        cluster.kubectl("apply", "-n", ns, "-f", "-",
                        input=json.dumps(modelservice(name, task="embed", model="m")))
    message = info.value.stderr
    assert "metadata.name must be a DNS-1035 label" in message and "at most 63 characters" in message, message
    assert cluster.get("modelservices", "-n", ns)["items"] == []


# --- placement: each task and variant -----------------------------------------------------------

PLACEMENTS = [
    # name, spec, node, variant, image
    ("embed-auto", {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "replicas": 2},
     "gpu-h100", "hopper", f"{TEI}:hopper-1.9"),
    ("embed-turing", {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "turing"},
     "gpu-t4", "turing", f"{TEI}:turing-1.9"),
    ("embed-a10", {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "ampere-86"},
     "gpu-a10", "ampere-86", f"{TEI}:86-1.9"),
    ("bge-rerank-a100", {"task": "rerank", "model": "BAAI/bge-reranker-base", "gpu": {"product": "NVIDIA-A100-SXM4-80GB"}},
     "gpu-a100", "ampere-80", f"{TEI}:1.9"),
    ("qwen-rerank-l4", {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "gpu": {"product": "NVIDIA-L4"}},
     "gpu-l4", "ada", "ghcr.io/embedding-images/reranker:0.1.0-cuda"),
    ("qwen-rerank-cpu", {"task": "rerank", "model": "Qwen/Qwen3-Reranker-0.6B", "accelerator": "cpu"},
     "cpu-", "cpu", "ghcr.io/embedding-images/reranker:0.1.0-cpu"),
    ("embed-cpu", {"task": "embed", "model": "BAAI/bge-small-en-v1.5", "accelerator": "cpu", "port": 9000},
     "cpu-", "cpu", f"{TEI}:cpu-1.9"),
]


def test_each_task_and_variant_lands_on_matching_nodes_and_reports_it(cluster, operator, ns):
    for name, spec, _, _, _ in PLACEMENTS:
        cluster.apply(modelservice(name, **spec), namespace=ns)
    for name, spec, node, variant, image in PLACEMENTS:
        ms = wait_ready(cluster, ns, name, operator)
        status = ms["status"]
        replicas = spec.get("replicas", 1)
        assert (status["variant"], status["image"], status["phase"]) == (variant, image, "Ready")
        assert status["ready"] == f"{replicas}/{replicas}" and status["readyReplicas"] == replicas
        assert status["endpoint"] == f"http://{name}.{ns}.svc.cluster.local:{spec.get('port', 8080)}"
        assert condition(ms, "Degraded") == ("False", "AsExpected")
        assert all(c["observedGeneration"] == ms["metadata"]["generation"] for c in status["conditions"])
        running = pods(cluster, ns, name)
        assert len(running) == replicas
        for pod in running:
            assert pod["spec"]["nodeName"].startswith(node), (name, pod["spec"]["nodeName"])
            (container,) = pod["spec"]["containers"]
            assert container["image"] == image
        service = cluster.get("service", name, "-n", ns)
        assert service["spec"]["ports"][0]["port"] == spec.get("port", 8080)
        assert service["spec"]["ports"][0]["targetPort"] == "http"
        owner = deployment(cluster, ns, name)["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelService", name, True)
    table = cluster.kubectl("get", "msvc", "-n", ns, "-o", "wide").stdout
    assert "VARIANT" in table and "READY" in table and "ENDPOINT" in table
    assert "hopper" in table and "2/2" in table


def test_pairs_that_cannot_run_are_refused_before_any_pod(cluster, operator, ns):
    cluster.apply(modelservice("qwen-on-tei", task="rerank", model="Qwen/Qwen3-Reranker-0.6B",
                               engine="tei", accelerator="cpu"), namespace=ns)

    def refused():
        ms = get_ms(cluster, ns, "qwen-on-tei")
        return ms if condition(ms, "Ready") == ("False", "UnsupportedModelForEngine") else None
    ms = wait_for("the UnsupportedModelForEngine condition", refused, timeout=30)
    ready = next(c for c in ms["status"]["conditions"] if c["type"] == "Ready")
    assert "use engine reranker" in ready["message"]
    assert ms["status"]["phase"] == "Failed"
    assert cluster.kubectl("get", "deployment", "qwen-on-tei", "-n", ns, check=False).returncode != 0


def test_a_modelservice_in_a_refused_namespace_is_refused_visibly(cluster, operator):
    """The system namespaces are refused even when watched (a Deployment there could run as the
    cluster's own ServiceAccounts); this namespace is refused the same way, by pattern."""
    name = f"{REFUSED}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        cluster.apply(modelservice("emb", task="embed", model="m", accelerator="cpu"), namespace=name)

        def refused():
            ms = get_ms(cluster, name, "emb")
            return ms if condition(ms, "Ready") == ("False", "NamespaceRefused") else None
        ms = wait_for("the NamespaceRefused condition", refused, timeout=30)
        ready = next(c for c in ms["status"]["conditions"] if c["type"] == "Ready")
        assert name in ready["message"] and "operator.refusedNamespaces" in ready["message"]
        events = wait_for("a NamespaceRefused Warning Event", lambda: [
            e for e in cluster.get("events", "-n", name)["items"]
            if e["reason"] == "NamespaceRefused" and e["type"] == "Warning"
            and e["involvedObject"]["name"] == "emb"], timeout=30)
        assert name in events[0]["message"]
        assert f"NamespaceRefused: the operator does not serve ModelServices in namespace {name}" in \
            operator.log.read_text(errors="replace")
        assert cluster.get("deployments,services", "-n", name)["items"] == []
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_no_fitting_gpu_node_is_reported_or_falls_back_to_cpu(cluster, operator, ns):
    # 16 GPUs per pod: no simulated node has that many
    cluster.apply(modelservice("too-big", task="embed", model="m", gpu={"count": 16}), namespace=ns)
    cluster.apply(modelservice("fallback", task="embed", model="m", gpu={"count": 16}, fallbackToCPU=True),
                  namespace=ns)

    def pending():
        ms = get_ms(cluster, ns, "too-big")
        return ms if condition(ms, "Ready") == ("False", "NoMatchingGPUNodes") else None
    ms = wait_for("the NoMatchingGPUNodes condition", pending, timeout=30)
    assert ms["status"]["phase"] == "Pending"
    ms = wait_ready(cluster, ns, "fallback", operator)
    assert ms["status"]["variant"] == "cpu" and ms["status"]["image"] == f"{TEI}:cpu-1.9"
    assert condition(ms, "Degraded") == ("True", "FellBackToCPU")
    assert all(p["spec"]["nodeName"].startswith("cpu-") for p in pods(cluster, ns, "fallback"))


def test_pods_the_scheduler_cannot_place_are_reported_with_its_reason(cluster, operator, ns):
    """Planning counts allocatable GPUs, not free ones: two pods of 5 GPUs each both plan onto the
    one 8-GPU H100 node, and the scheduler can place only one."""
    for name in ("first", "second"):
        cluster.apply(modelservice(name, task="embed", model="m", gpu={"count": 5}), namespace=ns)

    def one_each():
        found = {name: condition(get_ms(cluster, ns, name), "Ready") for name in ("first", "second")}
        placed = [n for n, c in found.items() if c == ("True", "AllReplicasReady")]
        waiting = [n for n, c in found.items() if c == ("False", "Unschedulable")]
        return (placed[0], waiting[0]) if len(placed) == len(waiting) == 1 else None
    try:
        placed, waiting = wait_for("one Ready and one Unschedulable", one_each, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None
    ms = get_ms(cluster, ns, waiting)
    ready = next(c for c in ms["status"]["conditions"] if c["type"] == "Ready")
    assert "Insufficient nvidia.com/gpu" in ready["message"], ready
    assert ready["message"].startswith("0/1 pods ready; pods are Pending: ")
    assert ms["status"]["phase"] == "Pending" and ms["status"]["ready"] == "0/1"
    # GPUs freed: the waiting pod is placed and the status says so, without any spec change
    cluster.kubectl("delete", "modelservice", placed, "-n", ns, "--wait=true", "--timeout=60s")
    assert wait_ready(cluster, ns, waiting, operator)["status"]["phase"] == "Ready"


# Affinity terms are kept as written (the CRD cannot check them), so the Deployment API is the
# first to read them: it refuses this one (500, "failed to create typed patch object").
JUNK_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": "junk"}}
# Seconds of operator log to count, and the most lines it may hold for one refused ModelService
# (each retry logs a few --verbose lines; the retries come 5, 10, 20 s apart).
LOG_WINDOW_S = 40
LOG_LINES_MAX = 40


def test_a_spec_the_api_refuses_is_reported_with_an_event_and_retried_quietly(cluster, operator, ns):
    start = len(operator.log.read_text(errors="replace").splitlines())
    cluster.apply(modelservice("junk", task="embed", model="m", accelerator="cpu", affinity=JUNK_AFFINITY),
                  namespace=ns)

    def failed():
        ms = get_ms(cluster, ns, "junk")
        return ms if condition(ms, "Ready") == ("False", "ApplyFailed") else None
    try:
        ms = wait_for("the ApplyFailed condition", failed, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None
    ready = next(c for c in ms["status"]["conditions"] if c["type"] == "Ready")
    assert "requiredDuringSchedulingIgnoredDuringExecution" in ready["message"], ready
    assert "Deployment" in ready["message"] and ms["status"]["phase"] == "Failed"
    events = wait_for("the ApplyFailed Event", lambda: cluster.get(
        "events", "-n", ns, "--field-selector", "involvedObject.name=junk,reason=ApplyFailed")["items"], timeout=30)
    assert events[0]["type"] == "Warning" and events[0]["involvedObject"]["kind"] == "ModelService"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in events[0]["message"]
    # Nothing half-made: the Service is applied only after its Deployment.
    assert cluster.kubectl("get", "deployment,service", "-n", ns, "-o", "name").stdout.strip() == ""

    time.sleep(LOG_WINDOW_S)
    window = operator.log.read_text(errors="replace").splitlines()[start:]
    assert not any("Traceback" in line for line in window), "\n".join(window[-60:])
    mine = [line for line in window if f"{ns}/junk" in line]
    retries = [line for line in mine if "failed temporarily" in line]
    assert 2 <= len(retries) <= 5, "\n".join(mine)
    assert len(mine) <= LOG_LINES_MAX, f"{len(mine)} lines in {LOG_WINDOW_S} s:\n" + "\n".join(mine)

    # A fixed spec heals: the retry count starts again and the children appear.
    cluster.kubectl("patch", "modelservice", "junk", "-n", ns, "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/spec/affinity"}]))
    wait_ready(cluster, ns, "junk", operator)
    assert cluster.get("service", "junk", "-n", ns)["spec"]["ports"][0]["port"] == 8080


def test_scale_update_and_delete(cluster, operator, ns):
    cluster.apply(modelservice("emb", task="embed", model="BAAI/bge-small-en-v1.5", accelerator="cpu"),
                  namespace=ns)
    wait_ready(cluster, ns, "emb", operator)

    cluster.kubectl("scale", "modelservice", "emb", "-n", ns, "--replicas=3")
    ms = wait_ready(cluster, ns, "emb", operator)
    wait_for("3/3 ready", lambda: get_ms(cluster, ns, "emb")["status"]["ready"] == "3/3", timeout=30)
    assert deployment(cluster, ns, "emb")["spec"]["replicas"] == 3
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/{API}/namespaces/{ns}/modelservices/emb/scale").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"]["selector"] == ms["status"]["selector"]

    before = deployment(cluster, ns, "emb")["metadata"]["generation"]
    cluster.kubectl("patch", "modelservice", "emb", "-n", ns, "--type=merge",
                    "-p", json.dumps({"spec": {"model": "BAAI/bge-base-en-v1.5"}}))
    wait_for("the Deployment to roll", lambda: deployment(cluster, ns, "emb")["metadata"]["generation"] > before)
    args = deployment(cluster, ns, "emb")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-id") + 1] == "BAAI/bge-base-en-v1.5"
    wait_ready(cluster, ns, "emb", operator)
    wait_for("every pod on the new model", lambda: all(
        "BAAI/bge-base-en-v1.5" in p["spec"]["containers"][0]["args"] for p in pods(cluster, ns, "emb"))
        and len(pods(cluster, ns, "emb")) == 3, timeout=60)

    cluster.kubectl("delete", "modelservice", "emb", "-n", ns, "--wait=true", "--timeout=60s")
    wait_for("the children to be garbage-collected", lambda: cluster.kubectl(
        "get", "deployment,service", "-n", ns, "-o", "name").stdout.strip() == "", timeout=60)


def test_deleted_and_hand_edited_children_are_put_back(cluster, operator, ns):
    cluster.apply(modelservice("emb", task="embed", model="BAAI/bge-small-en-v1.5", accelerator="ampere-80"),
                  namespace=ns)
    wait_ready(cluster, ns, "emb", operator)
    first_uid = deployment(cluster, ns, "emb")["metadata"]["uid"]

    cluster.kubectl("delete", "deployment", "emb", "-n", ns, "--wait=false")
    wait_for("a new Deployment", lambda: (cluster.kubectl("get", "deployment", "emb", "-n", ns, "-o",
                                                          "jsonpath={.metadata.uid}", check=False).stdout
                                          not in ("", first_uid)), timeout=30)
    cluster.kubectl("delete", "service", "emb", "-n", ns)
    wait_for("the Service back", lambda: cluster.kubectl("get", "service", "emb", "-n", ns, check=False).returncode == 0,
             timeout=30)

    cluster.kubectl("set", "image", "deployment/emb", "-n", ns, "tei=registry.invalid/other:1")
    cluster.kubectl("patch", "deployment", "emb", "-n", ns, "--type=json", "-p", json.dumps(
        [{"op": "remove", "path": "/spec/template/spec/tolerations"}]))
    wait_for("the image put back", lambda: deployment(cluster, ns, "emb")["spec"]["template"]["spec"]
             ["containers"][0]["image"] == f"{TEI}:1.9", timeout=30)
    wait_for("the toleration put back", lambda: deployment(cluster, ns, "emb")["spec"]["template"]["spec"]
             .get("tolerations"), timeout=30)
    ms = wait_ready(cluster, ns, "emb", operator)
    assert all(p["spec"]["nodeName"] == "gpu-a100" for p in pods(cluster, ns, "emb"))
    assert ms["status"]["variant"] == "ampere-80"


def test_a_networkpolicy_is_made_put_back_and_removed_when_turned_off(cluster, operator, ns):
    """The objects only: kwok enforces no NetworkPolicy, so no traffic is sent."""
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    cluster.apply(modelservice("emb", task="embed", model="BAAI/bge-small-en-v1.5", accelerator="cpu",
                               networkPolicy={"enabled": True, "extraIngressFrom": [scraper]}), namespace=ns)
    wait_ready(cluster, ns, "emb", operator)

    def policy() -> dict[str, Any] | None:
        found = cluster.kubectl("get", "networkpolicy", "emb", "-n", ns, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    made = wait_for("the NetworkPolicy", policy, timeout=30)
    assert made["metadata"]["ownerReferences"][0]["name"] == "emb"
    assert made["spec"]["podSelector"] == {"matchLabels": {"serving.embedding-images.io/modelservice": "emb"}}
    assert made["spec"]["policyTypes"] == ["Ingress"] and "egress" not in made["spec"]
    assert made["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}],
                                        "from": [{"podSelector": {}}, scraper]}]

    cluster.kubectl("delete", "networkpolicy", "emb", "-n", ns)
    wait_for("the NetworkPolicy back", lambda: (policy() or {}).get("metadata", {}).get("uid")
             not in (None, made["metadata"]["uid"]), timeout=30)
    cluster.kubectl("patch", "networkpolicy", "emb", "-n", ns, "--type=json", "-p", json.dumps(
        [{"op": "add", "path": "/spec/ingress/0/from/-", "value": {"namespaceSelector": {}}}]))
    wait_for("the hand-widened sources put back",
             lambda: (policy() or {}).get("spec", {}).get("ingress") == made["spec"]["ingress"], timeout=30)

    cluster.kubectl("patch", "modelservice", "emb", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"networkPolicy": {"enabled": False}}}))
    wait_for("the NetworkPolicy gone", lambda: policy() is None, timeout=30)
    assert deployment(cluster, ns, "emb")["metadata"]["name"] == "emb"


class ServiceWriteHold:
    """Holds the next write of a Service in one namespace inside the API server, through a
    validating admission webhook that this test serves on loopback: the writer (the operator)
    blocks in that request until `release()`, which refuses it, so it never lands.

    Dry-run requests are let through; they show when the API server has loaded the webhook.
    """

    def __init__(self, cluster: Cluster, namespace: str, workdir: Path):
        self.cluster, self.namespace = cluster, namespace
        self.name = f"hold-services-{namespace}"
        self.held = threading.Event()       # a Service write is being held
        self.released = threading.Event()
        self.probed = threading.Event()     # a dry-run write reached the webhook
        self.held_request: dict[str, Any] = {}
        cert, key = workdir / "cert.pem", workdir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        hold = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["request"]
                allowed = True
                if request.get("dryRun"):
                    hold.probed.set()
                elif not hold.held.is_set():
                    hold.held_request = request
                    hold.held.set()
                    hold.released.wait(timeout=25)
                    allowed = False
                answer = {"uid": request["uid"], "allowed": allowed}
                if not allowed:
                    answer["status"] = {"code": 403, "message": "held by the test, then refused"}
                body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                   "response": answer}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the API server gave up on the request (its client was killed)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.ca_bundle = base64.b64encode(cert.read_bytes()).decode()

    def start(self, probe_service: str) -> None:
        """Registers the webhook and waits until the API server calls it."""
        self.cluster.apply({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.name},
            "webhooks": [{
                "name": "hold.tests.embedding-images.io", "admissionReviewVersions": ["v1"],
                "sideEffects": "None", "timeoutSeconds": 30, "failurePolicy": "Fail",
                "clientConfig": {"url": f"https://127.0.0.1:{self.server.server_address[1]}/",
                                 "caBundle": self.ca_bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                           "resources": ["services"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
            }]})

        def probe() -> bool:
            self.cluster.kubectl("label", "service", probe_service, "-n", self.namespace, "probe=1",
                                 "--overwrite", "--dry-run=server", check=False)
            return self.probed.is_set()
        wait_for("the API server calling the webhook", probe, timeout=30)

    def release(self) -> None:
        """Refuses the held write and removes the webhook."""
        self.released.set()
        self.cluster.kubectl("delete", "validatingwebhookconfiguration", self.name, "--ignore-not-found")

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def test_operator_killed_mid_reconcile_converges_after_restart(cluster, operator, ns, tmp_path):
    """The operator dies after applying the new Deployment and while its Service write is in
    flight, before the status records the new generation; restarted, it finishes the change."""
    if not cluster.local:
        pytest.skip("the API server must reach this test's admission webhook on loopback")
    cluster.apply(modelservice("emb", task="embed", model="BAAI/bge-small-en-v1.5", accelerator="cpu"),
                  namespace=ns)
    before = wait_ready(cluster, ns, "emb", operator)
    hold = ServiceWriteHold(cluster, ns, tmp_path)
    try:
        hold.start(probe_service="emb")
        cluster.kubectl("patch", "modelservice", "emb", "-n", ns, "--type=merge", "-p", json.dumps(
            {"spec": {"replicas": 2, "port": 9000, "engineArgs": {"maxBatchTokens": 1024}}}))
        assert hold.held.wait(timeout=30), f"the operator never wrote the Service\n{operator.tail()}"
        # Mid-reconcile: the Deployment has the new spec, the Service and the status do not.
        args = deployment(cluster, ns, "emb")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--max-batch-tokens") + 1] == "1024"
        assert hold.held_request["name"] == "emb"
        assert cluster.get("service", "emb", "-n", ns)["spec"]["ports"][0]["port"] == 8080
        assert get_ms(cluster, ns, "emb")["status"]["observedGeneration"] == before["metadata"]["generation"]
        operator.stop(signal.SIGKILL)
        hold.release()
        # The killed operator's Service write was refused: what converges next is the restart's.
        assert cluster.get("service", "emb", "-n", ns)["spec"]["ports"][0]["port"] == 8080
        cluster.apply(modelservice("late", task="rerank", model="Qwen/Qwen3-Reranker-0.6B", accelerator="cpu"),
                      namespace=ns)
    finally:
        hold.close()
        if operator.proc is None:
            operator.start()
    ms = wait_ready(cluster, ns, "emb", operator)
    wait_for("2/2 ready", lambda: get_ms(cluster, ns, "emb")["status"]["ready"] == "2/2", timeout=60)
    assert ms["status"]["observedGeneration"] == ms["metadata"]["generation"] > before["metadata"]["generation"]
    assert ms["status"]["endpoint"] == f"http://emb.{ns}.svc.cluster.local:9000"
    assert cluster.get("service", "emb", "-n", ns)["spec"]["ports"][0]["port"] == 9000
    args = deployment(cluster, ns, "emb")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-batch-tokens") + 1] == "1024"
    assert wait_ready(cluster, ns, "late", operator)["status"]["variant"] == "cpu"


@pytest.fixture
def apiserver_restart(cluster: Cluster, namespace: str) -> Iterator[Callable[[], None]]:
    """Restarts the local control plane's kube-apiserver alone (cluster.sh restart-apiserver).

    Afterwards, checks that the cluster still runs workloads for the tests that follow: a fresh
    Deployment in `namespace` gets its pod Running (controller-manager, scheduler and kwok all
    reconnected)."""
    if not cluster.local:
        pytest.skip("restarts the local control plane's API server")
    restarted = False

    def restart() -> None:
        nonlocal restarted
        restarted = True
        subprocess.run([str(CLUSTER_SH), "restart-apiserver"], cwd=ROOT, check=True, timeout=120)
    yield restart
    if restarted:
        cluster.kubectl("create", "deployment", "after-restart", "-n", namespace, "--image=registry.invalid/pause:1")
        cluster.kubectl("rollout", "status", "deployment/after-restart", "-n", namespace, "--timeout=60s",
                        timeout=90)


# The resync interval of the operator under test; MODELSERVICE_RESYNC_SECONDS=0 (off) fails the test.
RESYNC_S = 5


def test_children_deleted_while_the_operator_is_cut_off_are_put_back_by_the_resync(
        cluster, crd, namespace, apiserver_restart, tmp_path):
    """The API server restarts while the operator cannot reach it, and the Deployment and the
    Service of a Ready ModelService are deleted before it is back. The operator's watches resume
    from resourceVersions the restarted server and the compacted etcd no longer have (410 Gone),
    so kopf lists again, where a deleted object is just absent: no event ever says they are gone.
    The periodic resync must put them back, without an operator restart, within its interval of
    the connection coming back.

    The operator reaches the API server through a proxy that this test cuts and restores, so the
    outage is the operator's alone and lasts as long as the test wants (the other components see
    only the few seconds of the restart)."""
    server = cluster.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    address = urlsplit(server)
    proxy = TcpProxy(address.hostname, address.port)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig.read_text().replace(server, f"https://127.0.0.1:{proxy.port}"))
    op = Operator(cluster, tmp_path / "operator.log", namespace=namespace, kubeconfig=kubeconfig,
                  env={"MODELSERVICE_RESYNC_SECONDS": str(RESYNC_S)})
    op.start()
    try:
        cluster.apply(modelservice("emb", task="embed", model="BAAI/bge-small-en-v1.5", accelerator="cpu",
                                   replicas=2), namespace=namespace)
        wait_ready(cluster, namespace, "emb", op)
        wait_for("2/2 ready", lambda: get_ms(cluster, namespace, "emb")["status"]["ready"] == "2/2", timeout=30)
        uid = deployment(cluster, namespace, "emb")["metadata"]["uid"]

        proxy.cut()
        apiserver_restart()
        cluster.kubectl("delete", "service,deployment", "emb", "-n", namespace)
        # The restarted server may answer a watch from etcd while its cache fills, and etcd still
        # has the deletions: compacted, it can only answer 410 (as after its periodic compaction).
        subprocess.run([str(CLUSTER_SH), "compact-etcd"], cwd=ROOT, check=True, timeout=60)
        proxy.restore()
        restored = time.monotonic()

        def both_back() -> bool:
            names = cluster.kubectl("get", "deployment,service", "-n", namespace, "-o", "name").stdout.split()
            return sorted(names) == ["deployment.apps/emb", "service/emb"]
        try:
            wait_for("the Deployment and the Service back", both_back, timeout=RESYNC_S + 25, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{op.tail()}") from None
        repair_s = time.monotonic() - restored
        print(f"\nchildren back {repair_s:.1f} s after the operator's connection (resync every {RESYNC_S} s)")
        # The fault is the one of the issue: the watch is answered 410 Gone and lists again. The
        # resync may have put the children back before then: kopf's watch reconnects on a
        # backoff of its own (up to 21 s between tries), the resync on its next tick.
        try:
            wait_for("kopf's watch of deployments answered 410 Gone and listing again",
                     lambda: "Restarting the watch-stream for deployments" in op.log.read_text(),
                     timeout=90, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{op.tail()}") from None
        assert repair_s < RESYNC_S + 5, op.tail()
        assert deployment(cluster, namespace, "emb")["metadata"]["uid"] != uid
        ms = wait_ready(cluster, namespace, "emb", op)
        wait_for("2/2 ready", lambda: get_ms(cluster, namespace, "emb")["status"]["ready"] == "2/2", timeout=30)
        assert ms["status"]["endpoint"] == f"http://emb.{namespace}.svc.cluster.local:8080"
    finally:
        proxy.restore()
        cluster.kubectl("delete", "modelservice", "emb", "-n", namespace, "--wait=true", "--timeout=60s",
                        check=False)
        op.stop()
        proxy.close()
