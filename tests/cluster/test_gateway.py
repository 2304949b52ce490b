"""The gateway's Kubernetes half on the real control plane.

The real operator (`python -m modelservice`, serving the namespaces gw-*) turns ModelServices into
Deployments and Services; kwok marks their pods ready and the real endpoint controller writes the
EndpointSlices. `gateway.kube.run_sources` runs in-process (its own event loop in a thread, as in
the gateway) and the tests read its `Registry`: the models that exist, the ready pods of each,
pods going away, scale from zero through the scale subresource.

Nothing here sends HTTP to a pod: kwok's pod IPs are simulated and must never be reached. The
end-to-end test starts the gateway through `python -m testkit.loopback gateway`, which routes
pods to their processes on 127.0.0.1 only (testkit/loopback.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import kubernetes
import pytest

from control_plane import MODELSERVICE_CRD, ROOT, Cluster, wait_for
from gateway.kube import KubeScaler, run_sources
from gateway.registry import ModelInfo, ModelKey, Registry
from gateway.settings import Settings

pytestmark = pytest.mark.cluster

API = "serving.embedding-images.io/v1alpha1"
QWEN = "Qwen/Qwen3-Reranker-0.6B"
SELECTOR = "serving.embedding-images.io/modelservice"


# --- the operator and the gateway's sources ------------------------------------------------------

@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`python -m modelservice` serving gw-* (so it never competes with another module's)."""
    cluster.apply_crds(MODELSERVICE_CRD)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "modelservice", "--namespace=gw-*", "--verbose"],
                                env={**cluster.env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def ns(cluster: Cluster, operator: Path) -> Iterator[str]:
    name = f"gw-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "modelservices", "--all", "-n", name, "--wait=true", "--timeout=60s", check=False)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


class InProcessSources:
    """`run_sources` on an event loop in a thread of this process, like the gateway runs it."""

    def __init__(self, settings: Settings, api_client: kubernetes.client.ApiClient):
        self.registry = Registry(home_namespace=settings.home_namespace)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(run_sources(settings, self.registry, api_client), self.loop)

    async def _cancel(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def read(self, fn):
        """Calls fn(registry) on the loop (where the registry lives) and returns its result."""
        async def call():
            return fn(self.registry)
        if self.task.done():
            self.task.result()   # raises what ended run_sources
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def models(self) -> dict[str, ModelInfo]:
        return self.read(lambda r: {str(i.key): i for i in r.models()})

    def pods(self, namespace: str, name: str) -> list[str]:
        return self.read(lambda r: sorted(e.pod for e in r.endpoints(ModelKey(namespace, name))))

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cancel(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def admin_client(cluster: Cluster) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def sources(cluster: Cluster, ns: str) -> Iterator[InProcessSources]:
    s = InProcessSources(Settings(namespace=ns, namespaces=ns), admin_client(cluster))
    wait_for("the gateway's watches to sync", lambda: s.read(lambda r: r.synced), timeout=30)
    yield s
    s.close()


def modelservice(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name},
            "spec": {"task": "rerank", "model": QWEN, "accelerator": "cpu", **spec}}


def live_pods(cluster: Cluster, ns: str, name: str, ready_only: bool = True) -> list[str]:
    """The ModelService's pods the cluster says are Ready (and not being deleted)."""
    def ready(pod: dict) -> bool:
        conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
        return conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")
    items = cluster.get("pods", "-n", ns, "-l", f"{SELECTOR}={name}")["items"]
    return sorted(p["metadata"]["name"] for p in items if ready(p) or not ready_only)


def set_ready(cluster: Cluster, ns: str, pod: str, ready: bool) -> None:
    """Sets the pod's Ready condition as a failing (or recovering) readiness probe would; kwok
    leaves it so."""
    conditions = cluster.get("pod", pod, "-n", ns)["status"]["conditions"]
    for c in conditions:
        if c["type"] in ("Ready", "ContainersReady"):
            c["status"] = "True" if ready else "False"
    cluster.kubectl("patch", "pod", pod, "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"conditions": conditions}}))


def wait_pods(sources: InProcessSources, cluster: Cluster, ns: str, name: str, count: int) -> list[str]:
    """Waits until the registry's endpoints of the model are exactly its `count` Ready pods."""
    def agree():
        routed = sources.pods(ns, name)
        return routed if len(routed) == count and routed == live_pods(cluster, ns, name) else None
    return wait_for(f"{count} ready pods of {ns}/{name} in the registry", agree, timeout=60)


# --- tests ---------------------------------------------------------------------------------------

def test_registry_holds_the_served_modelservices_and_their_ready_pods(cluster, ns, sources):
    cluster.apply(modelservice("qwen", replicas=2), namespace=ns)
    cluster.apply(modelservice("bge", model="BAAI/bge-reranker-base"), namespace=ns)
    wait_for("both models", lambda: set(sources.models()) == {f"{ns}/qwen", f"{ns}/bge"})
    pods = wait_pods(sources, cluster, ns, "qwen", 2)
    wait_pods(sources, cluster, ns, "bge", 1)
    info = wait_for("the operator's engine", lambda: sources.models()[f"{ns}/bge"] if
                    sources.models()[f"{ns}/bge"].engine == "tei" else None)
    assert (info.task, info.model_id, info.replicas) == ("rerank", "BAAI/bge-reranker-base", 1)
    assert sources.models()[f"{ns}/qwen"].engine == "reranker"
    # Each endpoint is the pod's own IP and container port `http` (never contacted here).
    live = {p["metadata"]["name"]: p for p in cluster.get("pods", "-n", ns, "-l", f"{SELECTOR}=qwen")["items"]}
    addresses = sources.read(lambda r: {e.pod: e.address for e in r.endpoints(ModelKey(ns, "qwen"))})
    assert addresses == {pod: "{}:{}".format(live[pod]["status"]["podIP"], next(
        port["containerPort"] for port in live[pod]["spec"]["containers"][0]["ports"] if port["name"] == "http"))
        for pod in pods}

    # A pod whose readiness fails stays in the slice, not ready: it is not routed until it recovers.
    set_ready(cluster, ns, pods[1], False)
    wait_for(f"{pods[1]} not ready to leave the registry", lambda: sources.pods(ns, "qwen") == [pods[0]])
    set_ready(cluster, ns, pods[1], True)
    wait_pods(sources, cluster, ns, "qwen", 2)

    # A pod that goes away leaves the registry; its replacement joins once kwok marks it ready.
    cluster.kubectl("delete", "pod", pods[0], "-n", ns, "--wait=false")
    wait_for(f"{pods[0]} to leave the registry", lambda: pods[0] not in sources.pods(ns, "qwen"))
    replaced = wait_pods(sources, cluster, ns, "qwen", 2)
    assert pods[0] not in replaced and pods[1] in replaced

    cluster.kubectl("scale", "modelservice", "qwen", "-n", ns, "--replicas=0")
    wait_for("replicas 0 in the registry", lambda: sources.models()[f"{ns}/qwen"].replicas == 0)
    wait_for("no endpoints of a model at zero", lambda: sources.pods(ns, "qwen") == [])

    cluster.kubectl("delete", "modelservice", "bge", "-n", ns)
    wait_for("bge to leave the registry", lambda: set(sources.models()) == {f"{ns}/qwen"})


def test_modelservices_of_namespaces_not_served_are_not_routed(cluster, ns, sources, operator):
    other = f"gw-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", other)
    try:
        cluster.apply(modelservice("elsewhere"), namespace=other)
        cluster.apply(modelservice("here"), namespace=ns)
        wait_pods(sources, cluster, ns, "here", 1)
        wait_for("the other namespace's pod", lambda: live_pods(cluster, other, "elsewhere"))
        assert set(sources.models()) == {f"{ns}/here"}
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_a_watch_whose_resource_version_expired_lists_again_and_converges(cluster, ns, monkeypatch, caplog):
    """The first list hands the watch a resourceVersion the API server no longer keeps: the watch
    answers 410 Gone, the source lists again and follows from there."""
    gone = []
    real = kubernetes.client.CustomObjectsApi.list_namespaced_custom_object

    def stale_once(self, *args, **kwargs):
        response = real(self, *args, **kwargs)
        if kwargs.get("watch") or gone:
            return response
        gone.append(True)
        listing = json.loads(response.data)
        listing["metadata"]["resourceVersion"] = "1"

        class Stale:
            data = json.dumps(listing).encode()
        return Stale()

    monkeypatch.setattr(kubernetes.client.CustomObjectsApi, "list_namespaced_custom_object", stale_once)
    caplog.set_level(logging.INFO, logger="gateway.kube")
    cluster.apply(modelservice("before"), namespace=ns)
    s = InProcessSources(Settings(namespace=ns, namespaces=ns), admin_client(cluster))
    try:
        wait_for("the relisted watch to sync", lambda: s.read(lambda r: r.synced), timeout=30)
        cluster.apply(modelservice("after"), namespace=ns)
        wait_for("a ModelService created after the 410", lambda: set(s.models()) == {f"{ns}/before", f"{ns}/after"})
        assert gone
        assert "resourceVersion expired, listing again" in caplog.text
    finally:
        s.close()


def test_scale_from_zero_writes_one_replica_once_for_many_waiting_requests(cluster, ns, sources):
    cluster.apply(modelservice("sleepy", replicas=0), namespace=ns)
    wait_for("the model at zero", lambda: sources.models().get(f"{ns}/sleepy"))
    generation = cluster.get("modelservice", "sleepy", "-n", ns)["metadata"]["generation"]
    scaler = KubeScaler(api_client=admin_client(cluster))
    key = ModelKey(ns, "sleepy")

    async def requests(n: int) -> None:
        await asyncio.gather(*(scaler.scale_from_zero(key) for _ in range(n)))
    asyncio.run(requests(8))
    asyncio.run(requests(3))      # later requests, while the pod starts
    assert scaler.writes == 1
    ms = cluster.get("modelservice", "sleepy", "-n", ns)
    assert ms["spec"]["replicas"] == 1 and ms["metadata"]["generation"] == generation + 1
    wait_pods(sources, cluster, ns, "sleepy", 1)

    # Scaled by hand meanwhile: the gateway never overrides a count someone chose.
    cluster.kubectl("scale", "modelservice", "sleepy", "-n", ns, "--replicas=3")
    asyncio.run(requests(2))
    assert scaler.writes == 1
    assert cluster.get("modelservice", "sleepy", "-n", ns)["spec"]["replicas"] == 3


# --- end to end: real reranker processes for kwok's pods, through `python -m gateway` ------------

@pytest.mark.slow
def test_cohere_rerank_through_the_gateway_reaches_the_pods_process_and_wakes_a_model_at_zero(
        cluster, ns, tmp_path):
    """A reranker ModelService on CPU; the local pod runner starts the real reranker for its pod
    with the pod's own env on 127.0.0.1 and writes its address; `python -m gateway` (admin
    kubeconfig, started by `python -m testkit.loopback gateway` on that address file) serves a
    Cohere SDK rerank by the ModelService's name. Scaled to 0 by hand, the next request scales it
    back to 1 through the gateway, waits for the new pod's process and succeeds. Every request goes to 127.0.0.1."""
    import cohere

    from testkit.podrunner import LocalPodRunner
    from testkit.processes import free_port, wait_healthy
    from testkit.models import shared_tiny_model

    model_dir = shared_tiny_model(tmp_path / "models")
    addresses = tmp_path / "addresses.json"
    cluster.apply(modelservice("qwen", replicas=1, engineArgs={"maxDocuments": 8}), namespace=ns)
    runner = LocalPodRunner(admin_client(cluster), ns, ["qwen"], model_dir, addresses, tmp_path).start()
    port = free_port()
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "testkit.loopback", "gateway", str(addresses)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**cluster.env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                 "GATEWAY_NAMESPACE": ns, "GATEWAY_NAMESPACES": ns,
                 "GATEWAY_SCALE_FROM_ZERO_TIMEOUT": "120"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, gateway, 60, log)
        first = wait_for("the runner's process for the pod", lambda: list(runner.running), timeout=120)
        # The process runs with the pod's env: the operator's RERANKER_MAX_DOCUMENTS included.
        assert runner.running[first[0]].env["RERANKER_MAX_DOCUMENTS"] == "8"
        assert json.loads(addresses.read_text()) == {f"{ns}/{first[0]}": runner.running[first[0]].backend.address}
        co = cohere.ClientV2(api_key="unused", base_url=url, timeout=180)
        docs = ["Paris is the capital of France.", "Bananas are yellow.", "France's capital city is Paris."]

        def rerank_succeeds():
            results = co.rerank(model="qwen", query="capital of France", documents=docs).results
            return sorted(r.index for r in results) == [0, 1, 2]
        assert wait_for("a rerank through the gateway", rerank_succeeds, timeout=60)
        with pytest.raises(cohere.core.ApiError):   # the pod's own limit, enforced by its process
            co.rerank(model="qwen", query="q", documents=[f"d{i}" for i in range(9)])

        cluster.kubectl("scale", "modelservice", "qwen", "-n", ns, "--replicas=0")
        wait_for("the pod's process to stop", lambda: not runner.running, timeout=60)
        wait_for("no routable pod in the gateway", lambda: not json.loads(addresses.read_text()))

        def models_at_zero():
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                return "qwen" in response.read().decode() and \
                    cluster.get("modelservice", "qwen", "-n", ns)["spec"]["replicas"] == 0
        wait_for("the gateway to see replicas 0", models_at_zero)
        time.sleep(1)   # the gateway's watch has delivered replicas 0
        assert rerank_succeeds()   # held while the gateway scales 0 -> 1 and the new pod starts
        assert cluster.get("modelservice", "qwen", "-n", ns)["spec"]["replicas"] == 1
        assert list(runner.running) and list(runner.running) != first
    except BaseException:
        print(log.read_text()[-4000:])
        raise
    finally:
        gateway.terminate()
        try:
            gateway.wait(20)
        except subprocess.TimeoutExpired:
            gateway.kill()
        runner.stop()


# --- as the chart's ServiceAccount -----------------------------------------------------------------

def chart_gateway_rbac(cluster: Cluster, ns: str) -> str:
    """Applies the chart's gateway ServiceAccount, Role and RoleBinding (rendered for release
    `gw` in `ns`) and returns the ServiceAccount's name."""
    out = subprocess.run(
        ["helm", "template", "gw", str(ROOT / "charts" / "embedding-images"), "-n", ns, "--set", "crds.enabled=false",
         "--show-only", "templates/gateway/serviceaccount.yaml", "--show-only", "templates/gateway/rbac.yaml"],
        env=cluster.env, capture_output=True, text=True, check=True).stdout
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=out)
    return "gw-embedding-images-gateway"


def sa_client(cluster: Cluster, ns: str, sa: str) -> kubernetes.client.ApiClient:
    """An API client that authenticates as the ServiceAccount (a bound token)."""
    token = cluster.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    admin = admin_client(cluster).configuration
    config = kubernetes.client.Configuration()
    config.host, config.ssl_ca_cert, config.verify_ssl = admin.host, admin.ssl_ca_cert, admin.verify_ssl
    config.api_key = {"authorization": f"Bearer {token}"}
    return kubernetes.client.ApiClient(config)


def test_the_charts_serviceaccount_may_do_exactly_what_the_gateway_does(cluster, ns):
    sa = chart_gateway_rbac(cluster, ns)
    subject = f"--as=system:serviceaccount:{ns}:{sa}"

    def can_i(verb: str, resource: str, namespace: str = ns) -> bool:
        resource, _, sub = resource.partition("/")
        args = ["auth", "can-i", verb, resource, subject, "-n", namespace] + ([f"--subresource={sub}"] if sub else [])
        return cluster.kubectl(*args, check=False).stdout.strip() == "yes"
    for verb, resource in [("list", "modelservices.serving.embedding-images.io"),
                           ("watch", "modelservices.serving.embedding-images.io"),
                           ("get", "modelservices.serving.embedding-images.io/scale"),
                           ("patch", "modelservices.serving.embedding-images.io/scale"),
                           ("list", "endpointslices.discovery.k8s.io"),
                           ("watch", "endpointslices.discovery.k8s.io")]:
        assert can_i(verb, resource), f"{verb} {resource}"
        assert not can_i(verb, resource, "default"), f"{verb} {resource} outside the served namespace"
    for verb, resource in [("patch", "modelservices.serving.embedding-images.io"),
                           ("patch", "modelservices.serving.embedding-images.io/status"),
                           ("get", "secrets"), ("list", "pods"), ("create", "pods"),
                           ("patch", "deployments.apps"), ("list", "services")]:
        assert not can_i(verb, resource), f"{verb} {resource}"

    # The real thing, authenticated as that ServiceAccount: sources sync, scale from zero writes.
    cluster.apply(modelservice("sleepy", replicas=0), namespace=ns)
    client = sa_client(cluster, ns, sa)
    s = InProcessSources(Settings(namespace=ns, namespaces=ns), client)
    try:
        wait_for("the watches to sync as the ServiceAccount", lambda: s.read(lambda r: r.synced), timeout=30)
        wait_for("the model", lambda: f"{ns}/sleepy" in s.models())
        scaler = KubeScaler(api_client=client)
        asyncio.run(scaler.scale_from_zero(ModelKey(ns, "sleepy")))
        assert scaler.writes == 1
        wait_pods(s, cluster, ns, "sleepy", 1)
    finally:
        s.close()
