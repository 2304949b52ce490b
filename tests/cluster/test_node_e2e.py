"""End to end on the real node, as a user runs it: `helm install` of the chart (operator and
gateway images built from this checkout), a ModelCache filled by the real download Job pod from
the Hub stand-in (on the host side of the node's veth), a CPU reranker ModelService whose pods run
the reranker image under the node's kubelet, and client pods that call the gateway by its
Service's DNS name. Then scale from zero with a real pod, and faults: a reranker pod deleted under
load, the operator pod killed, the kubelet restarted.

One release serves the whole module (a module-scoped fixture); each test brings the ModelService
to the state it needs. Client pods run `podbin post` (tests/cluster/node/podbin), one request per
container: a stream of requests is a pod whose init containers run one after another, each
leaving its answer (status, seconds, body) in its termination message.

The figures (image import, helm install to the first answer by DNS name, request to answer from
zero, the module's time) are printed at the end of the session's output.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import yaml

from control_plane import CHART, ROOT, Cluster, wait_for
from modelservice.cache.builders import claim_name
from modelservice.placement.builders import build_selector
from real_node import NODE_SH, RealNode
from test_operator import API, condition
from testkit.hub import HubServer, files_of
from testkit.models import build_cross_encoder

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.helm, pytest.mark.images, pytest.mark.slow]

VARIANTS = CHART / "files" / "variants.yaml"
CHART_COMPONENTS = ("operator", "gateway")
MODEL = "e2e-org/tiny-cross-encoder"  # the Hub id the stand-in serves
CACHE = "tiny"  # the ModelCache
SERVICE = "rr"  # the ModelService: the model name clients ask the gateway for
QUERY = "what runs the pods of a real node?"
DOCUMENTS = ["the kubelet starts containers through containerd and runc",
             "a simulated node runs no process at all",
             "bananas are rich in potassium"]
# Small batches keep each reranker pod's memory request (and the node's bill) small.
ENGINE_ARGS = {"maxBatchTokens": 512, "maxLength": 256}

FIGURES: dict[str, float] = {}


def _report(request: pytest.FixtureRequest, line: str) -> None:
    print(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"e2e: {line}")


@dataclass(frozen=True)
class Release:
    """The module's helm release and where its gateway answers."""

    namespace: str
    name: str
    gateway_url: str  # http://<gateway Service>.<namespace>.svc.cluster.local:<port>
    installed_at: float  # time.monotonic() when `helm install` started

    @property
    def operator_deployment(self) -> str:
        return f"{self.name}-embedding-images-operator"


@dataclass(frozen=True)
class Answer:
    """What `podbin post` printed: the HTTP status, the seconds the request took, the body."""

    status: int
    seconds: float
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


# --- images, hub, release -----------------------------------------------------------------------


def _image_refs() -> dict[str, str]:
    """The images this checkout's `make images ONLY=operator,gateway,reranker VARIANT=cpu` tags:
    the chart's default repositories at its appVersion and the CPU reranker of variants.yaml."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    variants = yaml.safe_load(VARIANTS.read_text())
    [cpu] = [v for v in variants["variants"] if v["name"] == "cpu"]
    refs = {c: f"{values[c]['image']['repository']}:{chart['appVersion']}" for c in CHART_COMPONENTS}
    refs["reranker"] = f"{variants['reranker']['repository']}:{cpu['rerankerTag']}"
    return refs


@pytest.fixture(scope="module")
def images(real_node: RealNode, request: pytest.FixtureRequest) -> dict[str, str]:
    """The operator, gateway and CPU reranker images built from this checkout (podman's layer
    cache makes an unchanged build quick) and imported into the node's containerd."""
    refs = _image_refs()
    done = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "--engine", "podman",
                           "--only", ",".join(refs), "--variant", "cpu"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    start = time.monotonic()
    # With the node's own images: a kubelet short of disk (the machine's, shared) deletes the images
    # no container uses, and those can't be pulled back. Images the node holds already are skipped.
    done = subprocess.run([str(NODE_SH), "import", *refs.values(), real_node.pause_image, real_node.podbin_image],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    FIGURES["image import (operator, gateway, reranker)"] = time.monotonic() - start
    return refs


@pytest.fixture(scope="module")
def hub(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """The Hub stand-in on the host side of the node's veth, serving a tiny random-weight
    cross-encoder (BERT architecture, the real MiniLM tokenizer)."""
    model = build_cross_encoder(tmp_path_factory.mktemp("hub") / "model", "bert")
    with HubServer(host=real_node.host_ip) as server:
        server.add_repo(MODEL, files_of(model))
        yield server


@pytest.fixture(scope="module")
def release(cluster: Cluster, real_node: RealNode, images: dict[str, str], hub: HubServer,
            request: pytest.FixtureRequest) -> Iterator[Release]:
    """`helm install` of the chart in a namespace of the module's, operator and gateway on the
    real node, the download Jobs pointed at the Hub stand-in; uninstalled afterwards."""
    module_start = time.monotonic()
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    wait_for(f"the default ServiceAccount in {namespace}",
             lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0)
    installed_at = time.monotonic()
    try:
        with real_node.chart_release(cluster, namespace, "e2e", CHART_COMPONENTS,
                                     {"operator": {"hfEndpoint": hub.url}}) as name:
            service = cluster.get("service", f"{name}-embedding-images-gateway", "-n", namespace)
            port = service["spec"]["ports"][0]["port"]
            url = f"http://{service['metadata']['name']}.{namespace}.svc.cluster.local:{port}"
            yield Release(namespace, name, url, installed_at)
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        FIGURES["module (warm: build and import cached)"] = time.monotonic() - module_start
        for what, seconds in FIGURES.items():
            _report(request, f"{what}: {seconds:.1f} s")


# --- the model cache and the reranker ----------------------------------------------------------


@pytest.fixture(scope="module")
def cache(cluster: Cluster, real_node: RealNode, release: Release,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The ModelCache, Downloaded by its Job's pod on the real node. No provisioner runs here:
    a hostPath PersistentVolume (a folder of the module's, writable by the pods' user) is bound
    to the cache's claim, as an administrator would provision it statically."""
    ns = release.namespace
    folder = tmp_path_factory.mktemp("cache-volume")
    folder.chmod(0o777)
    pv = f"{ns}-cache"
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "storageClassName": "e2e-static", "persistentVolumeReclaimPolicy": "Retain",
                            "hostPath": {"path": str(folder), "type": "Directory"},
                            "claimRef": {"namespace": ns, "name": claim_name(CACHE)}}})
    try:
        cluster.apply({"apiVersion": API, "kind": "ModelCache", "metadata": {"name": CACHE},
                       "spec": {"model": MODEL, "size": "1Gi", "storageClassName": "e2e-static",
                                **real_node.placement()}}, ns)
        try:
            downloaded = wait_for("the ModelCache Downloaded by its Job's pod", lambda: _cached(cluster, ns),
                                  timeout=150)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_describe(cluster, ns)}") from None
        yield downloaded
    finally:
        cluster.kubectl("delete", "modelservices,modelcaches", "--all", "-n", ns, "--wait=true",
                        "--timeout=90s", check=False, timeout=120)
        cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)


def _cached(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    mc = cluster.get("modelcache", CACHE, "-n", ns)
    got = condition(mc, "Cached")
    if got and got[1] == "DownloadFailed":
        raise AssertionError(f"the download failed: {mc['status']}")
    return mc if got and got[1] == "Downloaded" else None


@pytest.fixture(scope="module")
def reranker(cluster: Cluster, real_node: RealNode, release: Release, cache: dict[str, Any]) -> str:
    """The CPU reranker ModelService reading the cache (created once, one replica to start)."""
    cluster.apply({"apiVersion": API, "kind": "ModelService", "metadata": {"name": SERVICE},
                   "spec": {"task": "rerank", "model": MODEL, "engine": "reranker", "accelerator": "cpu", "replicas": 1,
                            "cache": {"modelCache": CACHE}, "engineArgs": ENGINE_ARGS,
                            **real_node.placement()}}, release.namespace)
    return SERVICE


def scale(cluster: Cluster, ns: str, replicas: int) -> None:
    cluster.kubectl("patch", "modelservice", SERVICE, "-n", ns, "--type=merge",
                    "-p", json.dumps({"spec": {"replicas": replicas}}))


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def wait_ready(cluster: Cluster, ns: str, replicas: int, timeout: float = 180) -> list[dict[str, Any]]:
    """Waits for exactly `replicas` reranker pods, all Ready by their probes, and the
    ModelService's Ready condition."""
    def probe():
        pods = cluster.get("pods", "-n", ns, "-l", build_selector(SERVICE))["items"]
        if len(pods) != replicas or not all(_ready(p) for p in pods):
            return None
        got = condition(cluster.get("modelservice", SERVICE, "-n", ns), "Ready")
        return pods if got and got[0] == "True" else None
    try:
        return wait_for(f"{replicas} Ready reranker pod(s)", probe, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_describe(cluster, ns)}") from None


def _describe(cluster: Cluster, ns: str) -> str:
    """What a failure needs: the pods' states, the namespace's events and the operator's log."""
    pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
    events = cluster.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout
    logs = "".join(cluster.kubectl("logs", "-n", ns, "-l", f"app.kubernetes.io/component={c}", "--tail=40",
                                   "--prefix", check=False).stdout for c in ("operator", "gateway"))
    logs += cluster.kubectl("logs", "-n", ns, "-l", build_selector(SERVICE), "--tail=20", "--prefix",
                            check=False).stdout
    caches = cluster.kubectl("get", "modelcaches", "-n", ns, "-o", "yaml", check=False).stdout
    return f"pods:\n{pods}\nevents:\n{events[-4000:]}\nlogs:\n{logs}\nmodel caches:\n{caches[-3000:]}"


# --- client pods --------------------------------------------------------------------------------


def rerank_body(version: str) -> str:
    body: dict[str, Any] = {"model": SERVICE, "query": QUERY, "documents": DOCUMENTS}
    if version == "1":
        body["return_documents"] = False
    return json.dumps(body)


def run_clients(cluster: Cluster, real_node: RealNode, ns: str, requests: list[tuple[str, str]],
                timeout_s: int = 60, wait: bool = True) -> str:
    """Starts a client pod that POSTs each (URL, body) in turn (one container each, init
    containers for all but the last) and returns its name; see `answers`."""
    name = f"client-{uuid.uuid4().hex[:6]}"
    containers = [real_node.podbin(f"r{i}", "post", url, body, f"{timeout_s}s")
                  for i, (url, body) in enumerate(requests)]
    spec = real_node.pod_spec(containers[-1:], initContainers=containers[:-1], restartPolicy="Never")
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}, ns)
    return name


def answers(cluster: Cluster, ns: str, pod_name: str, timeout: float = 120) -> list[Answer]:
    """Waits for the client pod to finish and returns its answers in order; a request that got
    no HTTP answer at all (podbin exits non-zero) fails here, naming it."""
    pod = wait_for(f"client pod {pod_name} to finish",
                   lambda: (p := cluster.get("pod", pod_name, "-n", ns))["status"].get("phase")
                   in ("Succeeded", "Failed") and p, timeout=timeout)
    statuses = [*(pod["status"].get("initContainerStatuses") or []), *pod["status"]["containerStatuses"]]
    got = []
    for status in statuses:
        terminated = status["state"].get("terminated") or {}
        assert terminated.get("exitCode") == 0, \
            f"{status['name']}: {terminated.get('message')}\n{_describe(cluster, ns)}"
        out = json.loads(terminated["message"])
        got.append(Answer(out["status"], out["seconds"], out["body"]))
    return got


def ask(cluster: Cluster, real_node: RealNode, ns: str, requests: list[tuple[str, str]],
        timeout_s: int = 60) -> list[Answer]:
    pod = run_clients(cluster, real_node, ns, requests, timeout_s)
    return answers(cluster, ns, pod, timeout=timeout_s * len(requests) + 60)


def scores(answer: Answer) -> dict[int, float]:
    assert answer.status == 200, answer
    return {r["index"]: r["relevance_score"] for r in answer.json()["results"]}


def reranker_url(cluster: Cluster, ns: str) -> str:
    service = cluster.get("service", SERVICE, "-n", ns)
    return f"http://{SERVICE}.{ns}.svc.cluster.local:{service['spec']['ports'][0]['port']}"


# --- the tests ----------------------------------------------------------------------------------


def test_the_download_job_pod_fills_the_model_cache_from_the_hub_on_the_host_side(
        cluster: Cluster, real_node: RealNode, release: Release, cache: dict[str, Any], hub: HubServer):
    status = cache["status"]
    assert status["nodeName"] == real_node.name
    assert status["bytes"] > 0 and status["files"] >= 3
    pods = cluster.get("pods", "-n", release.namespace, "-l", "job-name")["items"]
    assert pods and all(p["spec"]["nodeName"] == real_node.name for p in pods)
    assert any(p["status"]["phase"] == "Succeeded" for p in pods)
    # The weights came over the veth from the stand-in, once.
    assert hub.body_bytes[f"/{MODEL}/resolve/{status['commit']}/model.safetensors"] > 0


def test_reranker_pods_ready_read_only_non_root_and_the_gateway_answers_by_dns_name(
        cluster: Cluster, real_node: RealNode, release: Release, reranker: str, images: dict[str, str],
        request: pytest.FixtureRequest):
    ns = release.namespace
    [pod] = wait_ready(cluster, ns, 1)
    assert pod["spec"]["nodeName"] == real_node.name
    [container] = pod["spec"]["containers"]
    assert container["image"] == images["reranker"]
    assert container["readinessProbe"]["httpGet"] and container["startupProbe"]["httpGet"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    [status] = pod["status"]["containerStatuses"]
    assert status["ready"] and status["restartCount"] == 0, status
    # The runtime enforced it: the process runs as the pod's user, not root.
    uid = pod["spec"]["securityContext"].get("runAsUser") or container["securityContext"].get("runAsUser")
    assert uid and uid != 0

    direct = reranker_url(cluster, ns)
    got = ask(cluster, real_node, ns, [(f"{release.gateway_url}/v1/rerank", rerank_body("1")),
                                       (f"{release.gateway_url}/v2/rerank", rerank_body("2")),
                                       (f"{direct}/v1/rerank", rerank_body("1")),
                                       (f"{direct}/v2/rerank", rerank_body("2"))])
    first_answer = time.monotonic() - release.installed_at
    via_gateway_v1, via_gateway_v2, own_v1, own_v2 = got
    assert set(scores(via_gateway_v1)) == {0, 1, 2}
    assert scores(via_gateway_v1) == pytest.approx(scores(own_v1), rel=1e-5)
    assert scores(via_gateway_v2) == pytest.approx(scores(own_v2), rel=1e-5)
    assert scores(via_gateway_v1) == pytest.approx(scores(via_gateway_v2), rel=1e-5)
    FIGURES.setdefault("helm install to the first answer by DNS name", first_answer)
    _report(request, f"helm install to the first answer by DNS name: {first_answer:.1f} s")


def test_scale_from_zero_a_request_is_held_while_a_real_pod_starts_and_answers(
        cluster: Cluster, real_node: RealNode, release: Release, reranker: str, request: pytest.FixtureRequest):
    ns = release.namespace
    wait_ready(cluster, ns, 1)  # a model that served, then went idle
    scale(cluster, ns, 0)
    wait_for("the reranker pods gone", lambda: not cluster.get(
        "pods", "-n", ns, "-l", build_selector(SERVICE))["items"], timeout=90)
    [answer] = ask(cluster, real_node, ns, [(f"{release.gateway_url}/v1/rerank", rerank_body("1"))],
                   timeout_s=240)
    assert set(scores(answer)) == {0, 1, 2}
    assert cluster.get("modelservice", SERVICE, "-n", ns)["spec"]["replicas"] == 1
    [pod] = wait_ready(cluster, ns, 1)
    assert pod["spec"]["nodeName"] == real_node.name
    FIGURES["scale from zero, request to answer (real pod)"] = answer.seconds
    _report(request, f"scale from zero with a real pod, request to answer: {answer.seconds:.1f} s")


def test_a_killed_operator_comes_back_and_applies_a_change_made_while_it_was_down(
        cluster: Cluster, release: Release, reranker: str):
    ns = release.namespace
    wait_ready(cluster, ns, 1)
    [old] = cluster.get("pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
    cluster.kubectl("delete", "pod", old["metadata"]["name"], "-n", ns, "--grace-period=0", "--force")
    scale(cluster, ns, 2)  # no operator runs now to see it

    def new_operator_ready():
        pods = cluster.get("pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
        return [p for p in pods if p["metadata"]["uid"] != old["metadata"]["uid"] and _ready(p)]
    wait_for("a new operator pod Ready", new_operator_ready, timeout=120)
    pods = wait_ready(cluster, ns, 2)
    assert len({p["metadata"]["name"] for p in pods}) == 2


def test_a_reranker_pod_deleted_under_load_fails_no_request(
        cluster: Cluster, real_node: RealNode, release: Release, reranker: str):
    ns = release.namespace
    scale(cluster, ns, 2)
    victim, _ = wait_ready(cluster, ns, 2)
    url = f"{release.gateway_url}/v1/rerank"
    stream = 24
    client = run_clients(cluster, real_node, ns, [(url, rerank_body("1"))] * stream)

    def answered(n: int):
        pod = cluster.get("pod", client, "-n", ns)
        done = [s for s in pod["status"].get("initContainerStatuses") or [] if "terminated" in s["state"]]
        return len(done) >= n
    wait_for("the first answers of the stream", lambda: answered(4), timeout=90)
    cluster.kubectl("delete", "pod", victim["metadata"]["name"], "-n", ns, "--wait=false")
    got = answers(cluster, ns, client, timeout=240)
    assert len(got) == stream
    failed = [a for a in got if a.status != 200]
    assert not failed, failed
    # Whichever replica answered, the same model gave the same scores.
    assert all(scores(a) == pytest.approx(scores(got[0]), rel=1e-5) for a in got)
    wait_ready(cluster, ns, 2)  # the Deployment replaced it


def test_after_a_kubelet_restart_the_pods_are_ready_and_answer_by_dns_name(
        cluster: Cluster, real_node: RealNode, release: Release, reranker: str):
    ns = release.namespace
    before = {p["metadata"]["uid"] for p in _running(cluster, ns)}
    restart = subprocess.run([str(NODE_SH), "restart-kubelet"], cwd=ROOT, capture_output=True, text=True,
                             timeout=150)
    assert restart.returncode == 0, restart.stderr

    def all_ready():
        pods = _running(cluster, ns)
        return pods if pods and all(_ready(p) for p in pods) else None
    pods = wait_for("every pod Ready after the kubelet restart", all_ready, timeout=120)
    # The same pods: they ran on through the restart, the kubelet found them again.
    assert before <= {p["metadata"]["uid"] for p in pods}
    [answer] = ask(cluster, real_node, ns, [(f"{release.gateway_url}/v2/rerank", rerank_body("2"))])
    assert set(scores(answer)) == {0, 1, 2}


def _running(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return [p for p in cluster.get("pods", "-n", ns)["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
