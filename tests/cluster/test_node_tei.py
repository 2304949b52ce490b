"""A TEI pod on the real node: the CPU embedding image that `make images ONLY=embedding VARIANT=cpu`
builds here (TEI's router built from source, all-MiniLM-L6-v2 baked in from the Hub stand-in on
127.0.0.1), imported into the node's containerd and run by the operator for a ModelService that
names it (`spec.image`, engine tei, accelerator cpu), Ready by its own probes under a real kubelet;
a client pod asks the gateway's OpenAI `/v1/embeddings` for it by model name, by the gateway
Service's DNS name, and gets the router's own embeddings."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from control_plane import ROOT, Cluster, wait_for
from real_node import NODE_SH, RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.helm, pytest.mark.images, pytest.mark.slow]

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["Paris is the capital of France.", "The tower is in Paris.", "Embeddings map text to vectors."]
# What the test measured, printed at its end (pytest -s or -rP shows it).
_figures: dict[str, float] = {}


def _build_script():
    spec = importlib.util.spec_from_file_location("images_build", ROOT / "images" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def embedding_image(real_node: RealNode) -> str:
    """The CPU embedding image as `make images ONLY=embedding VARIANT=cpu EMBEDDING_MODEL=<MiniLM>
    HF_ENDPOINT=<the Hub stand-in>` builds and tags it, built from this checkout every time
    (podman's layer cache keeps an unchanged build quick), then imported into the node's
    containerd."""
    from testkit.hub import HubServer, files_of  # noqa: PLC0415
    from testkit.models import MINILM_DIR  # noqa: PLC0415

    build = _build_script()
    table = build.load_yaml(build.VARIANTS)
    [plan] = build.build_plan(table, registry=build.default_registry(table), embedding_model=MODEL,
                              operator_tag=str(build.load_yaml(build.CHART)["appVersion"]),
                              components=("embedding",), variants=("cpu",))
    started = time.monotonic()
    with HubServer() as hub:
        hub.add_repo(MODEL, files_of(MINILM_DIR))
        done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "--engine", "podman",
                               "--only", "embedding", "--variant", "cpu", "--embedding-model", MODEL,
                               "--hf-endpoint", hub.url], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _figures["embedding image build (s)"] = time.monotonic() - started
    size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", plan.tag],
                          capture_output=True, text=True, check=True).stdout
    _figures["embedding image size (MB)"] = int(size) / 1e6
    started = time.monotonic()
    done = subprocess.run([str(NODE_SH), "import", plan.tag], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _figures["node.sh import of the embedding image (s)"] = time.monotonic() - started
    return plan.tag


def cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return list((x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1))


def schedulable_or_fail(cluster: Cluster, real_node: RealNode) -> None:
    """Fail at once, naming the cause, when the kubelet has tainted the node for pressure (say disk
    pressure: the machine's disk under the kubelet's 10% free), instead of pods Pending for minutes."""
    node = cluster.get("node", real_node.name)
    pressure = [t["key"] for t in node["spec"].get("taints") or [] if t["key"] != real_node.taint_key]
    if pressure:
        free = shutil.disk_usage(ROOT)
        pytest.fail(f"the real node {real_node.name} is tainted {pressure} (disk: {free.free / 2**30:.0f} GiB "
                    f"free of {free.total / 2**30:.0f} GiB); no pod can be scheduled there")


def test_tei_pod_serves_embeddings_through_the_gateway_by_dns_name_on_the_real_node(
        cluster: Cluster, namespace: str, real_node: RealNode, chart_images: dict[str, str],
        embedding_image: str, real_tei_embed):
    schedulable_or_fail(cluster, real_node)
    placement = real_node.placement()
    with real_node.chart_release(cluster, namespace, "tei", chart_images) as release:
        for c in chart_images:
            rollout = cluster.kubectl("rollout", "status", f"deployment/{release}-embedding-images-{c}", "-n",
                                      namespace, "--timeout=180s", timeout=190, check=False)
            assert rollout.returncode == 0, f"{c} not rolled out:\n{_pods_and_events(cluster, namespace)}"
        _serve_and_ask(cluster, namespace, release, real_node, embedding_image, placement, real_tei_embed)


def _pods_and_events(cluster: Cluster, namespace: str) -> str:
    """What a failure message needs: the pods (ErrImageNeverPull when the kubelet's image garbage
    collection removed an imported image from a full disk) and the namespace's last events."""
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    events = cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
    return f"{pods}\n{events[-3000:]}"


def _serve_and_ask(cluster: Cluster, namespace: str, release: str, real_node: RealNode, image: str,
                   placement: dict, router) -> None:
    name = "minilm"
    manifest = {"apiVersion": "serving.embedding-images.io/v1alpha1", "kind": "ModelService",
                "metadata": {"name": name},
                "spec": {"task": "embed", "engine": "tei", "accelerator": "cpu", "image": image,
                         # The baked model's path (images/README.md): a Hub id would be downloaded again.
                         "model": f"/models/{MODEL}", **placement}}
    applied = time.monotonic()
    cluster.apply(manifest, namespace)

    def ready() -> dict | None:
        ms = cluster.get("modelservice", name, "-n", namespace)
        conditions = {c["type"]: c for c in (ms.get("status") or {}).get("conditions") or []}
        return ms if conditions.get("Ready", {}).get("status") == "True" else None

    try:
        ms = wait_for(f"ModelService {name} Ready", ready, timeout=240, interval=1)
    except AssertionError:
        logs = cluster.kubectl("logs", "-n", namespace, "-l", f"serving.embedding-images.io/modelservice={name}",
                               "--tail=40", check=False)
        raise AssertionError(f"not Ready:\n{_pods_and_events(cluster, namespace)}\n{logs.stdout}{logs.stderr}")
    _figures["ModelService applied to Ready (s)"] = time.monotonic() - applied
    assert ms["status"]["image"] == image

    pods = cluster.get("pods", "-n", namespace, "-l", f"serving.embedding-images.io/modelservice={name}")["items"]
    assert len(pods) == 1
    [pod] = pods
    assert pod["spec"]["nodeName"] == real_node.name
    [container] = pod["spec"]["containers"]
    assert container["image"] == image and container["readinessProbe"]["httpGet"]["path"] == "/health"
    [status] = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status

    # A client pod asks the gateway by its Service's DNS name for the model by the ModelService's name.
    service = cluster.get("service", f"{release}-embedding-images-gateway", "-n", namespace)
    port = service["spec"]["ports"][0]["port"]
    url = f"http://{release}-embedding-images-gateway.{namespace}.svc.cluster.local:{port}/v1/embeddings"
    body = json.dumps({"model": name, "input": TEXTS})
    client = real_node.pod_spec([real_node.podbin("post", "post", url, body, "120s")], restartPolicy="Never")
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"}, "spec": client}, namespace)
    finished = wait_for("the client pod to finish",
                        lambda: (p := cluster.get("pod", "client", "-n", namespace))["status"].get("phase")
                        in ("Succeeded", "Failed") and p, timeout=150)
    answer = cluster.kubectl("logs", "client", "-n", namespace).stdout
    assert finished["status"]["phase"] == "Succeeded", answer
    _figures["ModelService applied to the first embedding by DNS name (s)"] = time.monotonic() - applied
    result = json.loads(answer.strip().splitlines()[-1])
    assert result["status"] == 200, result
    _figures["client's request through the gateway (s)"] = result["seconds"]
    got = json.loads(result["body"])
    assert got["object"] == "list" and got["model"] == name
    assert [d["index"] for d in got["data"]] == list(range(len(TEXTS)))
    assert all(len(d["embedding"]) == 384 for d in got["data"])

    # The same texts through the router started on loopback from the same build and model.
    direct = httpx.post(f"{router.url}/v1/embeddings", json={"input": TEXTS}, timeout=60)
    assert direct.status_code == 200, direct.text
    assert min(cosines([d["embedding"] for d in got["data"]], [d["embedding"] for d in direct.json()["data"]])) >= 0.9999
    for figure, value in _figures.items():
        print(f"tei on the real node: {figure}: {value:.1f}")
